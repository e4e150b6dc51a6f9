import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Client, ClientSchema } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { fieldViolation } from "@customer-platform/runtime/errors";
import { type ClientRecord, ClientRegistrationError, type ClientSettings } from "../../clients.js";

/** A client's row as the AdminService returns it (never its secret hash). */
export function clientMessage(c: ClientRecord): Client {
  return create(ClientSchema, {
    clientId: c.clientId,
    description: c.description,
    scopes: c.scopes,
    audiences: c.audiences,
    defaultAudiences: c.defaultAudiences,
    grantTypes: c.grantTypes,
    redirectUris: c.redirectUris,
    postLogoutRedirectUris: c.postLogoutRedirectUris,
    public: c.isPublic,
    firstParty: c.firstParty,
    createTime: timestampFromDate(c.createdAt),
    ...(c.disabledAt && { disableTime: timestampFromDate(c.disabledAt) }),
  });
}

/** The settings a Client message asks for, as clients.ts takes them (whether public included). */
export function settingsOf(c: Client): Partial<ClientSettings> {
  return {
    description: c.description,
    scopes: c.scopes,
    audiences: c.audiences,
    defaultAudiences: c.defaultAudiences,
    grantTypes: c.grantTypes,
    redirectUris: c.redirectUris,
    postLogoutRedirectUris: c.postLogoutRedirectUris,
    isPublic: c.public,
    firstParty: c.firstParty,
  };
}

/** Rethrows a refused registration as INVALID_ARGUMENT naming the field of `client`; anything else as it is. */
export function rethrowAsViolation(err: unknown): never {
  if (err instanceof ClientRegistrationError) throw fieldViolation(`client.${err.field}`, err.ruleId, err.reason);
  throw err;
}
