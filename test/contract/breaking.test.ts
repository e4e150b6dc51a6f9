/**
 * `buf breaking` (FILE rules from buf.yaml) run on copies of the workspace: an incompatible edit of the
 * contract is reported, an additive one is not.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buf, copyWorkspace, editFile } from "./workspace.js";

const customerProto = "proto/customer/v1/customer.proto";
let tmp: string;
let against: string;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "contract-breaking-"));
  against = copyWorkspace(join(tmp, "against"));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function breaking(name: string, from: string, to: string) {
  const input = copyWorkspace(join(tmp, name));
  editFile(join(input, customerProto), from, to);
  const { status, stdout, stderr } = buf(["breaking", input, "--against", against, "--error-format", "json"]);
  const findings = stdout
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => {
      const { path, type, message } = JSON.parse(line) as { path: string; type: string; message: string };
      return { path: path.slice(input.length + 1), type, message };
    });
  return { status, findings, stderr };
}

describe("buf breaking", () => {
  it("reports a renumbered field as deleted", () => {
    expect(breaking("renumbered", "string email = 2 [", "string email = 20 [")).toEqual({
      status: 100,
      findings: [
        {
          path: customerProto,
          type: "FIELD_NO_DELETE",
          message: 'Previously present field "2" with name "email" on message "Customer" was deleted.',
        },
      ],
      stderr: "",
    });
  });

  it("reports a renamed field, its JSON name included", () => {
    expect(breaking("renamed", "string given_name = 3 [", "string first_name = 3 [")).toEqual({
      status: 100,
      findings: [
        {
          path: customerProto,
          type: "FIELD_SAME_JSON_NAME",
          message:
            'Field "3" with name "first_name" on message "Customer" changed option "json_name" from "givenName" to "firstName".',
        },
        {
          path: customerProto,
          type: "FIELD_SAME_NAME",
          message: 'Field "3" on message "Customer" changed name from "given_name" to "first_name".',
        },
      ],
      stderr: "",
    });
  });

  it("accepts a new field", () => {
    expect(
      breaking(
        "added",
        "  google.protobuf.Timestamp update_time = 9;\n",
        "  google.protobuf.Timestamp update_time = 9;\n  // nickname is what the customer likes to be called.\n  string nickname = 10;\n",
      ),
    ).toEqual({ status: 0, findings: [], stderr: "" });
  });
});
