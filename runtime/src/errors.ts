import { create } from "@bufbuild/protobuf";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * INVALID_ARGUMENT for a rule checked in code, shaped like the validator's
 * own errors: a `buf.validate.Violations` detail naming the field and rule.
 */
export function fieldViolation(fieldName: string, ruleId: string, message: string): ConnectError {
  const violations = create(ViolationsSchema, {
    violations: [{ field: { elements: [{ fieldName }] }, ruleId, message }],
  });
  return new ConnectError(`${fieldName}: ${message}`, Code.InvalidArgument, undefined, [
    { desc: ViolationsSchema, value: violations },
  ]);
}
