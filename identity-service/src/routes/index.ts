import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { AuthServiceDeps } from "../deps.js";
import { authenticateClient } from "./authenticate-client.js";
import { authenticateCustomer } from "./authenticate-customer.js";
import { changePassword } from "./change-password.js";
import { completeEmailChange } from "./complete-email-change.js";
import { completeRecovery } from "./complete-recovery.js";
import { completeSignUp } from "./complete-sign-up.js";
import { createCredentials } from "./create-credentials.js";
import { deleteAccount } from "./delete-account.js";
import { introspectToken } from "./introspect-token.js";
import { listSessions } from "./list-sessions.js";
import { refreshToken } from "./refresh-token.js";
import { revokeAllSessions } from "./revoke-all-sessions.js";
import { revokeSession } from "./revoke-session.js";
import { revokeToken } from "./revoke-token.js";
import { startEmailChange } from "./start-email-change.js";
import { startRecovery } from "./start-recovery.js";
import { startSignUp } from "./start-sign-up.js";

/** The AuthService handlers: one file per RPC under routes/. */
export function createAuthService(deps: AuthServiceDeps): ServiceImpl<typeof AuthService> {
  return {
    ...createCredentials(deps),
    ...authenticateCustomer(deps),
    ...refreshToken(deps),
    ...revokeToken(deps),
    ...introspectToken(deps),
    ...changePassword(deps),
    ...authenticateClient(deps),
    ...startRecovery(deps),
    ...completeRecovery(deps),
    ...startSignUp(deps),
    ...completeSignUp(deps),
    ...startEmailChange(deps),
    ...completeEmailChange(deps),
    ...listSessions(deps),
    ...revokeSession(deps),
    ...revokeAllSessions(deps),
    ...deleteAccount(deps),
  };
}
