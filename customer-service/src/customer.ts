/**
 * Translating between stored rows and customer.v1 messages, and the rules
 * on who may touch which profile.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Customer, CustomerSchema, type PostalAddress } from "@customer-platform/gen/customer/v1/customer_pb.js";
import type { Principal } from "@customer-platform/runtime/auth";
import { fieldViolation } from "@customer-platform/runtime/errors";
import { SCOPE_CUSTOMER_READ, SCOPE_CUSTOMER_WRITE } from "@customer-platform/sdk/scopes";
import type { CustomerRow, StoredAddress } from "./db/schema.js";

/** Scope a service token needs to read any profile. */
export const SCOPE_READ = SCOPE_CUSTOMER_READ;
/** Scope a service token needs to change any profile. */
export const SCOPE_WRITE = SCOPE_CUSTOMER_WRITE;

/** The customer.v1.Customer message for a stored row. */
export function toCustomer(row: CustomerRow): Customer {
  return create(CustomerSchema, {
    customerId: row.customerId,
    email: row.email,
    givenName: row.givenName,
    familyName: row.familyName,
    ...(row.phoneNumber !== null && { phoneNumber: row.phoneNumber }),
    ...(row.address !== null && { address: row.address }),
    version: BigInt(row.version),
    createTime: timestampFromDate(row.createTime),
    updateTime: timestampFromDate(row.updateTime),
  });
}

/** The stored form of an address (plain JSON, no message metadata). */
export function toStoredAddress(address: PostalAddress | undefined): StoredAddress | null {
  if (!address) return null;
  return {
    addressLines: address.addressLines.map((l) => l.trim()),
    locality: address.locality.trim(),
    region: address.region.trim(),
    postalCode: address.postalCode.trim(),
    countryCode: address.countryCode,
  };
}

/**
 * INVALID_ARGUMENT for a name or address line that is blank once trimmed for
 * storage. The contract's not_blank rules trim in CEL (Unicode White_Space),
 * but String.prototype.trim also strips U+FEFF: "\uFEFF" passes validation
 * and would be stored as "".
 */
export function rejectBlank(field: string, value: string | StoredAddress | null): void {
  if (typeof value === "string") {
    if (value === "") throw fieldViolation(field, "name.not_blank", "value must not be blank");
  } else if (value?.addressLines.includes("")) {
    throw fieldViolation(`${field}.address_lines`, "address_line.not_blank", "value must not be blank");
  }
}

/** Throws PERMISSION_DENIED unless principal may act on the profile of customerId. */
export function authorize(
  principal: Principal,
  customerId: string,
  scope: typeof SCOPE_READ | typeof SCOPE_WRITE,
): void {
  if (principal.kind === "customer") {
    if (principal.subject.toLowerCase() === customerId.toLowerCase()) return;
    throw new ConnectError("a customer may only access their own profile", Code.PermissionDenied);
  }
  if (!principal.scopes.has(scope)) {
    throw new ConnectError(`token lacks scope "${scope}"`, Code.PermissionDenied);
  }
}

/** Whether two stored addresses are equal. */
export function sameAddress(a: StoredAddress | null, b: StoredAddress | null): boolean {
  if (a === null || b === null) return a === b;
  return (
    a.locality === b.locality &&
    a.region === b.region &&
    a.postalCode === b.postalCode &&
    a.countryCode === b.countryCode &&
    a.addressLines.length === b.addressLines.length &&
    a.addressLines.every((l, i) => l === b.addressLines[i])
  );
}
