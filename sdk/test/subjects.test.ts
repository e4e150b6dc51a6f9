/**
 * Subject builders and filters: each builder gives the subject the services
 * publish on (the services' event tests check the published subjects), and
 * each filter takes exactly the events it names, by NATS wildcard rules.
 */
import { randomUUID } from "node:crypto";
import { describe, expect, it } from "vitest";
import { customerSubjects, identitySubjects, subjectMatches } from "../src/subjects.js";

const customerId = randomUUID();
const other = randomUUID();

describe("customer subjects", () => {
  const s = customerSubjects();
  it("builds <prefix>.registered|updated.<customer_id>, default prefix customer", () => {
    expect(s.registered(customerId)).toBe(`customer.registered.${customerId}`);
    expect(s.updated(customerId)).toBe(`customer.updated.${customerId}`);
    expect(customerSubjects("t1.customer").updated(customerId)).toBe(`t1.customer.updated.${customerId}`);
    expect(s.erased(customerId)).toBe(`customer.erased.${customerId}`);
  });

  it("takes the tombstone by type and by customer, and no other type takes it", () => {
    const all = [s.registered(customerId), s.updated(customerId), s.erased(customerId), s.erased(other)];
    const taken = (filter: string) => all.filter((subject) => subjectMatches(filter, subject));
    expect(taken(s.ofType("customer.v1.CustomerErased"))).toEqual([s.erased(customerId), s.erased(other)]);
    expect(taken(s.ofType("customer.v1.CustomerUpdated"))).toEqual([s.updated(customerId)]);
    expect(taken(s.ofCustomer(customerId))).toEqual([
      s.registered(customerId),
      s.updated(customerId),
      s.erased(customerId),
    ]);
  });

  it("filters by stream, type and customer", () => {
    const all = [s.registered(customerId), s.updated(customerId), s.registered(other), s.updated(other)];
    const taken = (filter: string) => all.filter((subject) => subjectMatches(filter, subject));
    expect(taken(s.all)).toEqual(all);
    expect(taken(s.ofType("customer.v1.CustomerUpdated"))).toEqual([s.updated(customerId), s.updated(other)]);
    expect(taken(s.ofType("customer.v1.CustomerRegistered"))).toEqual([s.registered(customerId), s.registered(other)]);
    expect(taken(s.ofCustomer(customerId))).toEqual([s.registered(customerId), s.updated(customerId)]);
  });

  it("refuses a customer id that would widen a filter", () => {
    expect(() => s.ofCustomer("*")).toThrow(TypeError);
    expect(() => s.ofCustomer("a.b")).toThrow('customer id "a.b" cannot be a subject token');
  });
});

describe("identity subjects", () => {
  const s = identitySubjects();
  it("builds the sign-in, verified-email and revocation subjects, default prefix identity", () => {
    expect(s.customerAuthenticated(customerId)).toBe(`identity.customer.authenticated.${customerId}`);
    expect(s.customerEmailVerified(customerId)).toBe(`identity.customer.email_verified.${customerId}`);
    expect(identitySubjects("t1.identity").customerEmailVerified(customerId)).toBe(
      `t1.identity.customer.email_verified.${customerId}`,
    );
    expect(s.tokensRevoked({ customerId })).toBe(`identity.token.revoked.${customerId}`);
    expect(s.tokensRevoked({ clientId: "orders-service" })).toBe("identity.token.revoked.client.orders-service");
    // Client ids may contain dots (identity clients create accepts them): the subject is deeper, still published.
    expect(s.tokensRevoked({ clientId: "orders.eu" })).toBe("identity.token.revoked.client.orders.eu");
  });

  it("filters by stream, type and customer", () => {
    const all = [
      s.customerAuthenticated(customerId),
      s.customerEmailVerified(customerId),
      s.tokensRevoked({ customerId }),
      s.customerAuthenticated(other),
      s.customerEmailVerified(other),
      s.tokensRevoked({ clientId: "orders-service" }),
      s.tokensRevoked({ clientId: "orders.eu" }),
    ];
    const taken = (filter: string) => all.filter((subject) => subjectMatches(filter, subject));
    expect(taken(s.all)).toEqual(all);
    expect(taken(s.ofType("identity.v1.TokensRevoked"))).toEqual([
      s.tokensRevoked({ customerId }),
      s.tokensRevoked({ clientId: "orders-service" }),
      s.tokensRevoked({ clientId: "orders.eu" }),
    ]);
    expect(taken(s.ofType("identity.v1.CustomerAuthenticated"))).toEqual([
      s.customerAuthenticated(customerId),
      s.customerAuthenticated(other),
    ]);
    expect(taken(s.ofType("identity.v1.CustomerEmailVerified"))).toEqual([
      s.customerEmailVerified(customerId),
      s.customerEmailVerified(other),
    ]);
    expect(taken(s.ofCustomer(customerId))).toEqual([
      s.customerAuthenticated(customerId),
      s.customerEmailVerified(customerId),
      s.tokensRevoked({ customerId }),
    ]);
  });
});

describe("identity account subjects", () => {
  const s = identitySubjects();
  const account = [
    s.customerDeleted(customerId),
    s.identityDisabled(customerId),
    s.identityEnabled(customerId),
    s.passwordChanged(customerId),
  ];

  it("builds the deletion, suspension, password and audit subjects of the contract", () => {
    expect(account).toEqual([
      `identity.customer.deleted.${customerId}`,
      `identity.customer.disabled.${customerId}`,
      `identity.customer.enabled.${customerId}`,
      `identity.customer.password_changed.${customerId}`,
    ]);
    expect(s.auditRecorded({ customerId })).toBe(`identity.audit.customer.${customerId}`);
    expect(s.auditRecorded({ clientId: "orders.eu" })).toBe("identity.audit.client.orders.eu");
    expect(identitySubjects("t1.identity").customerDeleted(customerId)).toBe(
      `t1.identity.customer.deleted.${customerId}`,
    );
  });

  it("filters each type apart; customerEvents takes the customer events, not revocations or audits", () => {
    const all = [
      ...account,
      s.customerAuthenticated(customerId),
      s.customerEmailVerified(customerId),
      s.tokensRevoked({ customerId }),
      s.auditRecorded({ customerId }),
      s.auditRecorded({ clientId: "orders-service" }),
      s.customerDeleted(other),
    ];
    const taken = (filter: string) => all.filter((subject) => subjectMatches(filter, subject));
    expect(taken(s.ofType("identity.v1.CustomerDeleted"))).toEqual([
      s.customerDeleted(customerId),
      s.customerDeleted(other),
    ]);
    expect(taken(s.ofType("identity.v1.IdentityDisabled"))).toEqual([s.identityDisabled(customerId)]);
    expect(taken(s.ofType("identity.v1.IdentityEnabled"))).toEqual([s.identityEnabled(customerId)]);
    expect(taken(s.ofType("identity.v1.PasswordChanged"))).toEqual([s.passwordChanged(customerId)]);
    expect(taken(s.ofType("identity.v1.AuditRecorded"))).toEqual([
      s.auditRecorded({ customerId }),
      s.auditRecorded({ clientId: "orders-service" }),
    ]);
    expect(taken(s.customerEvents)).toEqual([
      ...account,
      s.customerAuthenticated(customerId),
      s.customerEmailVerified(customerId),
      s.customerDeleted(other),
    ]);
    expect(taken(s.ofCustomer(customerId))).toEqual(all.slice(0, 8));
  });
});

describe("subjectMatches", () => {
  it.each([
    ["a.*.c", "a.b.c", true],
    ["a.*.c", "a.b.d", false],
    ["a.*", "a.b.c", false],
    ["a.>", "a.b.c", true],
    ["a.>", "a", false],
    ["a.b", "a.b", true],
    ["a.b", "a.b.c", false],
    ["a.b.c", "a.b", false],
  ])("%s against %s is %s", (filter, subject, expected) => {
    expect(subjectMatches(filter, subject)).toBe(expected);
  });
});
