/**
 * For tests of the identity service's administration (AdminService,
 * DeleteAccount, the `identities` CLI): service clients made with the CLI
 * and signed in for the identity service's own audience, and the events an
 * action wrote to the identity outbox, decoded.
 */
import { randomUUID } from "node:crypto";
import { type DescMessage, fromBinary } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import {
  AuditRecordedSchema,
  CustomerAuthenticatedSchema,
  CustomerDeletedSchema,
  CustomerEmailVerifiedSchema,
  IdentityDisabledSchema,
  IdentityEnabledSchema,
  PasswordChangedSchema,
  TokensRevokedSchema,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import type postgres from "postgres";
import { runCli } from "../../identity-service/src/cli.js";

/** The scope of AdminService. */
export const SCOPE_IDENTITY_ADMIN = "identity:admin";

/** A service client made with `identity clients create`: its id and (shown once) secret. */
export interface ServiceClient {
  readonly clientId: string;
  readonly secret: string;
}

/** Creates a client with the CLI (`--audiences` as given, its default audiences the same). */
export async function createServiceClient(
  env: Record<string, string>,
  scopes: string,
  audiences: string,
): Promise<ServiceClient> {
  const clientId = `svc-${randomUUID().slice(0, 8)}`;
  const out: string[] = [];
  const code = await runCli(["clients", "create", clientId, "--scopes", scopes, "--audiences", audiences], env, (l) =>
    out.push(l),
  );
  if (code !== 0) throw new Error(`clients create exited ${code}`);
  const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  return { clientId, secret: client_secret };
}

/** A client with `scopes` for `audiences`, signed in with client credentials: its access token too. */
export async function serviceSignIn(
  auth: Client<typeof AuthService>,
  env: Record<string, string>,
  scopes: string,
  audiences: string,
): Promise<ServiceClient & { token: string }> {
  const client = await createServiceClient(env, scopes, audiences);
  const res = await auth.authenticateClient({ clientId: client.clientId, clientSecret: client.secret, scope: "" });
  return { ...client, token: res.tokens?.accessToken ?? "" };
}

/** Runs the identity CLI; its exit code and what it printed. */
export async function identityCli(env: Record<string, string>, ...args: string[]) {
  const out: string[] = [];
  const code = await runCli(args, env, (l) => out.push(l));
  return { code, out };
}

const SCHEMAS: readonly DescMessage[] = [
  AuditRecordedSchema,
  CustomerAuthenticatedSchema,
  CustomerDeletedSchema,
  CustomerEmailVerifiedSchema,
  IdentityDisabledSchema,
  IdentityEnabledSchema,
  PasswordChangedSchema,
  TokensRevokedSchema,
];

/** One event of the identity outbox: its row and its payload decoded. */
export interface WrittenEvent {
  readonly eventId: string;
  readonly type: string;
  readonly subject: string;
  readonly payload: Uint8Array;
  readonly message: Record<string, unknown>;
}

/** The identity outbox's events about `ceSubject` (a customer id, or a client id), oldest first, published or not. */
export async function writtenEvents(sql: postgres.Sql, ceSubject: string): Promise<WrittenEvent[]> {
  const rows = await sql<{ event_id: string; type: string; subject: string; payload: Uint8Array }[]>`
    select event_id, type, subject, payload from outbox where ce_subject = ${ceSubject} order by id`;
  return rows.map((r) => {
    const schema = SCHEMAS.find((s) => s.typeName === r.type);
    if (!schema) throw new Error(`no schema for ${r.type}`);
    return {
      eventId: r.event_id,
      type: r.type,
      subject: r.subject,
      payload: r.payload,
      message: fromBinary(schema, r.payload) as unknown as Record<string, unknown>,
    };
  });
}

/** The events of `after` that `before` did not have (an erasure deletes the customer's CustomerEmailVerified rows). */
export function newEvents(before: readonly WrittenEvent[], after: readonly WrittenEvent[]): WrittenEvent[] {
  const seen = new Set(before.map((e) => e.eventId));
  return after.filter((e) => !seen.has(e.eventId));
}
