/**
 * The event payloads: fully populated events survive the binary and the JSON encoding unchanged, and no
 * event can carry a credential, however deeply nested.
 */
import {
  create,
  createRegistry,
  type DescMessage,
  equals,
  fromBinary,
  fromJson,
  type JsonValue,
  type Message,
  toBinary,
  toJson,
} from "@bufbuild/protobuf";
import { type ReflectMessage, reflect } from "@bufbuild/protobuf/reflect";
import {
  file_google_protobuf_field_mask,
  file_google_protobuf_timestamp,
  timestampFromDate,
} from "@bufbuild/protobuf/wkt";
import {
  CustomerRegisteredSchema,
  CustomerUpdatedSchema,
  file_customer_v1_events,
} from "@customer-platform/gen/customer/v1/events_pb.js";
import { AuthenticateCustomerResponseSchema } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import {
  AuthenticationMethod,
  CustomerAuthenticatedSchema,
  file_identity_v1_events,
  TokenRevocationReason,
  TokensRevokedSchema,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import { describe, expect, it } from "vitest";

const registry = createRegistry(
  file_customer_v1_events,
  file_identity_v1_events,
  file_google_protobuf_field_mask,
  file_google_protobuf_timestamp,
);

const customerId = "0190a5b4-6f7e-7c3a-9b1d-2e4f6a8b0c1d";
const customer = {
  customerId,
  email: "ada@example.com",
  givenName: "Ada",
  familyName: "Lovelace",
  phoneNumber: "+4915123456789",
  address: {
    addressLines: ["Unter den Linden 1", "Hinterhaus"],
    locality: "Berlin",
    region: "Berlin",
    postalCode: "10117",
    countryCode: "DE",
  },
  createTime: timestampFromDate(new Date("2025-01-02T03:04:05.678Z")),
  updateTime: timestampFromDate(new Date("2025-02-03T04:05:06.789Z")),
};
const customerJson = {
  customerId,
  email: "ada@example.com",
  givenName: "Ada",
  familyName: "Lovelace",
  phoneNumber: "+4915123456789",
  address: {
    addressLines: ["Unter den Linden 1", "Hinterhaus"],
    locality: "Berlin",
    region: "Berlin",
    postalCode: "10117",
    countryCode: "DE",
  },
  createTime: "2025-01-02T03:04:05.678Z",
  updateTime: "2025-02-03T04:05:06.789Z",
};
const occurTime = timestampFromDate(new Date("2025-02-03T04:05:06.789Z"));

type Event = { typeName: string; schema: DescMessage; message: Message; json: JsonValue };

const events: [string, Event][] = [
  [
    "CustomerRegistered",
    {
      typeName: "customer.v1.CustomerRegistered",
      schema: CustomerRegisteredSchema,
      message: create(CustomerRegisteredSchema, {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c6",
        occurTime,
        customer: { ...customer, version: 1n },
      }),
      json: {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c6",
        occurTime: "2025-02-03T04:05:06.789Z",
        customer: { ...customerJson, version: "1" },
      },
    },
  ],
  [
    "CustomerUpdated",
    {
      typeName: "customer.v1.CustomerUpdated",
      schema: CustomerUpdatedSchema,
      message: create(CustomerUpdatedSchema, {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c7",
        occurTime,
        customer: { ...customer, version: 3n },
        updateMask: { paths: ["given_name", "phone_number", "address"] },
      }),
      json: {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c7",
        occurTime: "2025-02-03T04:05:06.789Z",
        customer: { ...customerJson, version: "3" },
        updateMask: "givenName,phoneNumber,address",
      },
    },
  ],
  [
    "CustomerAuthenticated",
    {
      typeName: "identity.v1.CustomerAuthenticated",
      schema: CustomerAuthenticatedSchema,
      message: create(CustomerAuthenticatedSchema, {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c8",
        occurTime,
        customerId,
        method: AuthenticationMethod.PASSWORD,
      }),
      json: {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c8",
        occurTime: "2025-02-03T04:05:06.789Z",
        customerId,
        method: "AUTHENTICATION_METHOD_PASSWORD",
      },
    },
  ],
  [
    "TokensRevoked",
    {
      typeName: "identity.v1.TokensRevoked",
      schema: TokensRevokedSchema,
      message: create(TokensRevokedSchema, {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c9",
        occurTime,
        customerId,
        jwtIds: ["0194c8a2-0000-7d4e-8f60-718293a4b5c0"],
        sessionIds: ["0194c8a1-0000-7d4e-8f60-718293a4b5c1", "0194c8a1-0000-7d4e-8f60-718293a4b5c2"],
        expireTime: timestampFromDate(new Date("2025-02-03T04:20:06.789Z")),
        reason: TokenRevocationReason.PASSWORD_CHANGED,
        clientId: "orders-service",
        keyIds: ["0194c8a0-0000-7d4e-8f60-718293a4b5c3"],
        issuedBefore: timestampFromDate(new Date("2025-02-03T04:05:07.001Z")),
      }),
      json: {
        eventId: "0194c8a2-1b3c-7d4e-8f60-718293a4b5c9",
        occurTime: "2025-02-03T04:05:06.789Z",
        customerId,
        jwtIds: ["0194c8a2-0000-7d4e-8f60-718293a4b5c0"],
        sessionIds: ["0194c8a1-0000-7d4e-8f60-718293a4b5c1", "0194c8a1-0000-7d4e-8f60-718293a4b5c2"],
        expireTime: "2025-02-03T04:20:06.789Z",
        reason: "TOKEN_REVOCATION_REASON_PASSWORD_CHANGED",
        clientId: "orders-service",
        keyIds: ["0194c8a0-0000-7d4e-8f60-718293a4b5c3"],
        issuedBefore: "2025-02-03T04:05:07.001Z",
      },
    },
  ],
];

function unsetFields(message: ReflectMessage, prefix = ""): string[] {
  return message.fields.flatMap((field) => {
    const path = `${prefix}${field.name}`;
    if (!message.isSet(field)) {
      return [path];
    }
    return field.fieldKind === "message" ? unsetFields(message.get(field), `${path}.`) : [];
  });
}

/** Every field reachable from `schema`, as "<message type>.<field>", each message visited once. */
function transitiveFields(schema: DescMessage, seen = new Set<string>()): string[] {
  if (seen.has(schema.typeName)) {
    return [];
  }
  seen.add(schema.typeName);
  return schema.fields.flatMap((field) => [
    `${schema.typeName}.${field.name}`,
    ...(field.message === undefined ? [] : transitiveFields(field.message, seen)),
  ]);
}

const secretLike = /password|secret|token|hash/i;
const secretFields = (schema: DescMessage) =>
  transitiveFields(schema).filter((name) => secretLike.test(name.slice(name.lastIndexOf(".") + 1)));

describe.each(events)("%s", (_, { typeName, schema, message, json }) => {
  it("has the type name the CloudEvents ce-type header carries", () => {
    expect(schema.typeName).toBe(typeName);
  });

  it("is a fully populated sample", () => {
    expect(unsetFields(reflect(schema, message))).toEqual([]);
  });

  it("round-trips through the binary encoding", () => {
    const bytes = toBinary(schema, message);
    expect(equals(schema, fromBinary(schema, bytes), message)).toBe(true);
  });

  it("round-trips through the JSON encoding", () => {
    expect(toJson(schema, message, { registry })).toEqual(json);
    expect(equals(schema, fromJson(schema, json, { registry }), message)).toBe(true);
  });

  it("has no field that suggests a secret, however nested", () => {
    expect(transitiveFields(schema)).toContain(`${typeName}.event_id`);
    expect(secretFields(schema)).toEqual([]);
  });
});

describe("the secret field check", () => {
  it("finds the token fields of TokenSet through AuthenticateCustomerResponse", () => {
    expect(secretFields(AuthenticateCustomerResponseSchema)).toEqual([
      "identity.v1.AuthenticateCustomerResponse.tokens",
      "identity.v1.TokenSet.access_token",
      "identity.v1.TokenSet.token_type",
      "identity.v1.TokenSet.refresh_token",
    ]);
  });
});
