/**
 * The events this service publishes (identity.v1 events.proto), written to
 * the outbox in the transaction of the change they record.
 */
import { create, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AuditRecordedSchema,
  AuthenticationMethod,
  CustomerAuthenticatedSchema,
  CustomerDeletedSchema,
  CustomerEmailVerifiedSchema,
  DeletedBy,
  IdentityDisabledSchema,
  IdentityEnabledSchema,
  PasswordChangedSchema,
  PasswordChangeKind,
  TokenRevocationReason,
  TokensRevokedSchema,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import { uuidv7 } from "@customer-platform/runtime/ids";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { enqueueEvent, type OutboxEvent, type OutboxTx, outboxEvent } from "@customer-platform/runtime/outbox-writer";
import { identitySubjects } from "@customer-platform/sdk/subjects";

/**
 * identity.v1.CustomerAuthenticated as an outbox row, for the statement that
 * records the sign-in (routes/authenticate-customer.ts). It carries no
 * credential.
 */
export function customerAuthenticatedEvent(
  outbox: Outbox,
  customerId: string,
  method: AuthenticationMethod,
  occurTime: Date,
): OutboxEvent {
  const eventId = uuidv7();
  const event = create(CustomerAuthenticatedSchema, {
    eventId,
    occurTime: timestampFromDate(occurTime),
    customerId,
    method,
  });
  return outboxEvent(outbox, CustomerAuthenticatedSchema, event, {
    eventId,
    occurTime,
    subject: identitySubjects(outbox.subjectPrefix).customerAuthenticated(customerId),
    ceSubject: customerId,
  });
}

/** What a TokensRevoked event says: whose tokens, which, until when, and why. */
export interface RevokedTokens {
  /** A customer's tokens, a service's (client credentials), or a signing key's. */
  readonly owner: { readonly customerId: string } | { readonly clientId: string } | { readonly keyId: string };
  /** `jti` claims of revoked access tokens. */
  readonly jwtIds?: readonly string[];
  /** `sid` claims of revoked sessions (refresh-token families). */
  readonly sessionIds?: readonly string[];
  /** `kid`s of revoked signing keys. */
  readonly keyIds?: readonly string[];
  /** With a client owner: every token of the client issued before this is revoked. */
  readonly issuedBefore?: Date;
  /** When the last access token revoked here expires. */
  readonly expireTime: Date;
  readonly reason: TokenRevocationReason;
}

/**
 * Writes identity.v1.TokensRevoked to the outbox, so resource servers that
 * verify access tokens offline learn of the revocation. Ids only, no token.
 */
export async function emitTokensRevoked(tx: OutboxTx, outbox: Outbox, revoked: RevokedTokens, occurTime: Date) {
  const eventId = uuidv7();
  const customerId = "customerId" in revoked.owner ? revoked.owner.customerId : "";
  const clientId = "clientId" in revoked.owner ? revoked.owner.clientId : "";
  const event = create(TokensRevokedSchema, {
    eventId,
    occurTime: timestampFromDate(occurTime),
    customerId,
    clientId,
    jwtIds: [...(revoked.jwtIds ?? [])],
    sessionIds: [...(revoked.sessionIds ?? [])],
    keyIds: [...(revoked.keyIds ?? [])],
    ...(revoked.issuedBefore && { issuedBefore: timestampFromDate(revoked.issuedBefore) }),
    expireTime: timestampFromDate(revoked.expireTime),
    reason: revoked.reason,
  });
  await enqueueEvent(
    tx,
    outboxEvent(outbox, TokensRevokedSchema, event, {
      eventId,
      occurTime,
      // A key's revocation: `<prefix>.token.revoked.key.<kid>`, beside customers' and clients'.
      subject:
        "keyId" in revoked.owner
          ? `${outbox.subjectPrefix}.token.revoked.key.${revoked.owner.keyId}`
          : identitySubjects(outbox.subjectPrefix).tokensRevoked(customerId ? { customerId } : { clientId }),
      ceSubject: customerId || clientId || ("keyId" in revoked.owner ? revoked.owner.keyId : ""),
    }),
    outbox,
  );
}

export { AuthenticationMethod, TokenRevocationReason };

/**
 * Writes one event to the outbox, stamped with a new event id and the time
 * of the change, on `subject` with `ceSubject` (the customer's or client's
 * id); returns the event id.
 */
async function emit<Desc extends DescMessage>(
  tx: OutboxTx,
  outbox: Outbox,
  schema: Desc,
  fields: Omit<MessageInitShape<Desc>, "eventId" | "occurTime" | "$typeName">,
  where: { subject: string; ceSubject: string },
  occurTime: Date,
): Promise<string> {
  const eventId = uuidv7();
  const event = create(schema, {
    ...fields,
    eventId,
    occurTime: timestampFromDate(occurTime),
    // Every identity event has event_id and occur_time; the type system cannot know that of Desc.
  } as unknown as MessageInitShape<Desc>);
  await enqueueEvent(tx, outboxEvent(outbox, schema, event, { eventId, occurTime, ...where }), outbox);
  return eventId;
}

/**
 * Writes identity.v1.CustomerEmailVerified to the outbox: `email` is now the
 * customer's verified login email, the identity's `version`th.
 */
export async function emitCustomerEmailVerified(
  tx: OutboxTx,
  outbox: Outbox,
  verified: { customerId: string; email: string; version: number },
  occurTime: Date,
) {
  const { customerId, email, version } = verified;
  const subject = identitySubjects(outbox.subjectPrefix).customerEmailVerified(customerId);
  await emit(
    tx,
    outbox,
    CustomerEmailVerifiedSchema,
    { customerId, email, emailVersion: BigInt(version) },
    { subject, ceSubject: customerId },
    occurTime,
  );
}

/**
 * Writes identity.v1.PasswordChanged to the outbox: the customer's password
 * was replaced (`kind`: ChangePassword or CompleteRecovery). No password, no
 * hash.
 */
export async function emitPasswordChanged(
  tx: OutboxTx,
  outbox: Outbox,
  changed: { customerId: string; kind: PasswordChangeKind },
  occurTime: Date,
) {
  const { customerId, kind } = changed;
  const subject = identitySubjects(outbox.subjectPrefix).passwordChanged(customerId);
  await emit(tx, outbox, PasswordChangedSchema, { customerId, kind }, { subject, ceSubject: customerId }, occurTime);
}

export { PasswordChangeKind };

/**
 * Writes identity.v1.IdentityDisabled or IdentityEnabled to the outbox: an
 * operator suspended the customer's account, or lifted the suspension.
 */
export async function emitIdentityStatusChanged(
  tx: OutboxTx,
  outbox: Outbox,
  change: { customerId: string; disabled: boolean },
  occurTime: Date,
) {
  const { customerId } = change;
  const subjects = identitySubjects(outbox.subjectPrefix);
  const where = { ceSubject: customerId };
  await (change.disabled
    ? emit(
        tx,
        outbox,
        IdentityDisabledSchema,
        { customerId },
        { ...where, subject: subjects.identityDisabled(customerId) },
        occurTime,
      )
    : emit(
        tx,
        outbox,
        IdentityEnabledSchema,
        { customerId },
        { ...where, subject: subjects.identityEnabled(customerId) },
        occurTime,
      ));
}

/**
 * Writes identity.v1.CustomerDeleted to the outbox (ids only) and returns its
 * event id: the stream purge of the customer's personal data waits for it.
 */
export function emitCustomerDeleted(
  tx: OutboxTx,
  outbox: Outbox,
  deleted: { customerId: string; deletedBy: DeletedBy },
  occurTime: Date,
): Promise<string> {
  const { customerId, deletedBy } = deleted;
  const subject = identitySubjects(outbox.subjectPrefix).customerDeleted(customerId);
  return emit(
    tx,
    outbox,
    CustomerDeletedSchema,
    { customerId, deletedBy },
    { subject, ceSubject: customerId },
    occurTime,
  );
}

export { DeletedBy };

/**
 * Who did an audited action: an AdminService caller (its client id), the
 * customer themself (their id), or the identity CLI (the operating-system user).
 */
export type AuditActor =
  | { readonly kind: "client"; readonly id: string }
  | { readonly kind: "customer"; readonly id: string }
  | { readonly kind: "cli"; readonly id: string };

/** The actions AuditRecorded names. */
export type AuditAction =
  | "identity.disable"
  | "identity.enable"
  | "identity.delete"
  | "client.disable"
  | "client.enable"
  | "client.create"
  | "client.update"
  | "client.rotate_secret";

/**
 * Writes identity.v1.AuditRecorded to the outbox, on
 * `<prefix>.audit.<customer|client>.<id>`: who did what to which account or
 * client. Ids only.
 */
export async function emitAuditRecorded(
  tx: OutboxTx,
  outbox: Outbox,
  audit: { actor: AuditActor; action: AuditAction; target: { kind: "customer" | "client"; id: string } },
  occurTime: Date,
) {
  const { actor, action, target } = audit;
  const subject = identitySubjects(outbox.subjectPrefix).auditRecorded(
    target.kind === "customer" ? { customerId: target.id } : { clientId: target.id },
  );
  await emit(
    tx,
    outbox,
    AuditRecordedSchema,
    { actorKind: actor.kind, actorId: actor.id, action, targetKind: target.kind, targetId: target.id },
    { subject, ceSubject: target.id },
    occurTime,
  );
}
