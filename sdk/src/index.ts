/**
 * @customer-platform/sdk: what a service of another team needs to build on
 * the customer and identity platform. Each part is also its own entry point
 * (`@customer-platform/sdk/tokens`, …).
 */
export * from "./background.js";
export * from "./cloudevents.js";
export * from "./event-signing.js";
export * from "./events.js";
export * from "./revocations.js";
export * from "./scopes.js";
export * from "./subjects.js";
export * from "./tokens.js";
