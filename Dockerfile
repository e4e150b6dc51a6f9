# syntax=docker/dockerfile:1
# One recipe, one image per service:
#   docker build --target customer -t customer-platform/customer .
#   docker build --target identity -t customer-platform/identity .
# The build stage compiles the TypeScript (`npm run build`); an image holds the
# compiled JavaScript and production dependencies only (no TypeScript, no
# tsx) and runs it with plain `node`. test/docker-image.test.ts rebuilds each
# image's file set from the COPY lines below and starts the services from it.
# See docs/deploy.md.

ARG NODE_VERSION=20

# Compiles every package the services run from to <package>/dist.
FROM node:${NODE_VERSION}-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY gen/package.json gen/package.json
COPY sdk/package.json sdk/package.json
COPY runtime/package.json runtime/package.json
# npm ci's postinstall: the fixes to installed dependencies (see the script).
COPY scripts/patch-dependencies.mjs scripts/patch-dependencies.mjs
RUN npm ci --no-audit --no-fund
COPY tsconfig.base.json tsconfig.build.json ./
COPY scripts/build.ts scripts/build.ts
COPY gen gen
COPY sdk sdk
COPY runtime runtime
COPY customer-service customer-service
COPY identity-service identity-service
RUN npm run build

# Production dependencies only; the workspace packages are symlinks into /app.
FROM node:${NODE_VERSION}-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY gen/package.json gen/package.json
COPY sdk/package.json sdk/package.json
COPY runtime/package.json runtime/package.json
COPY scripts/patch-dependencies.mjs scripts/patch-dependencies.mjs
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:${NODE_VERSION}-slim AS base
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules node_modules
# package.json files: "type": "module" and the exports maps that lead to dist/.
COPY package.json ./
COPY gen gen
COPY --from=build /app/sdk/package.json sdk/package.json
COPY --from=build /app/sdk/dist sdk/dist
COPY --from=build /app/runtime/package.json runtime/package.json
COPY --from=build /app/runtime/dist runtime/dist
# Only for the embedded PGlite database; compose gives each service a PostgreSQL URL.
RUN mkdir .data && chown node:node .data
USER node

FROM base AS customer
# dist/ includes db/migrations, applied at start.
COPY --from=build /app/customer-service/dist customer-service/dist
ENV CUSTOMER_HOST=0.0.0.0 CUSTOMER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.CUSTOMER_PORT}/readyz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "customer-service/dist/main.js"]

FROM base AS identity
# dist/ includes db/migrations, applied at start, and cli.js (the admin CLI).
COPY --from=build /app/identity-service/dist identity-service/dist
ENV IDENTITY_HOST=0.0.0.0 IDENTITY_PORT=8081
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.IDENTITY_PORT}/readyz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "identity-service/dist/main.js"]
