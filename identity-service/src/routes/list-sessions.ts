import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { and, desc, eq, gt, isNull, max, or, sql } from "drizzle-orm";
import { alias } from "drizzle-orm/pg-core";
import { refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { authenticateCustomerCall } from "../sessions.js";

/**
 * ListSessions: the caller's live sessions, newest sign-in first. A session
 * is a refresh-token family; it is live while one of its tokens still
 * refreshes (not rotated, not revoked, not expired, the session's absolute
 * lifetime not over). Its first row is the sign-in (when, which client, the
 * User-Agent and address seen); its newest row, the last refresh.
 */
export function listSessions(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "listSessions"> {
  const first = alias(refreshTokens, "first");
  return {
    async listSessions(_req, ctx) {
      const principal = await authenticateCustomerCall(deps, ctx, "list sessions");
      const now = deps.now();
      const live = and(
        isNull(refreshTokens.rotatedAt),
        isNull(refreshTokens.revokedAt),
        gt(refreshTokens.expiresAt, now),
        or(isNull(refreshTokens.sessionExpiresAt), gt(refreshTokens.sessionExpiresAt, now)),
      );
      const rows = await deps.db
        .select({
          sessionId: first.familyId,
          clientId: first.clientId,
          createdAt: first.createdAt,
          userAgent: first.userAgent,
          ipAddress: first.ipAddress,
          lastUsedAt: max(refreshTokens.createdAt),
          // A session from before the absolute lifetime has none until its first refresh: its token's expiry then.
          expiresAt:
            sql<Date>`coalesce(max(${refreshTokens.sessionExpiresAt}), max(${refreshTokens.expiresAt}))`.mapWith(
              refreshTokens.expiresAt,
            ),
        })
        .from(first)
        .innerJoin(refreshTokens, eq(refreshTokens.familyId, first.familyId))
        // The family's first row is the one whose id it bears.
        .where(and(eq(first.customerId, principal.subject), eq(first.id, first.familyId)))
        .groupBy(first.id)
        .having(sql`bool_or(${live})`)
        .orderBy(desc(first.createdAt), desc(first.id));
      return {
        sessions: rows.map((row) => ({
          sessionId: row.sessionId,
          clientId: row.clientId,
          createTime: timestampFromDate(row.createdAt),
          lastUseTime: timestampFromDate(row.lastUsedAt ?? row.createdAt),
          expireTime: timestampFromDate(row.expiresAt),
          userAgent: row.userAgent ?? "",
          ipAddress: row.ipAddress ?? "",
          current: row.sessionId === principal.sessionId,
        })),
      };
    },
  };
}
