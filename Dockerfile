# syntax=docker/dockerfile:1
# One recipe, one image per service:
#   docker build --target customer -t customer-platform/customer .
#   docker build --target identity -t customer-platform/identity .
# The services run their TypeScript through tsx, a runtime dependency, so
# there is no build step and dev dependencies stay out of the image.
# See docs/deploy.md.

ARG NODE_VERSION=20

FROM node:${NODE_VERSION}-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
COPY gen/package.json gen/package.json
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM node:${NODE_VERSION}-slim AS base
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules node_modules
COPY package.json tsconfig.json ./
COPY gen gen
COPY runtime runtime
# Only used without a *_DATABASE_URL (embedded PGlite); compose sets real URLs.
RUN mkdir .data && chown node:node .data
USER node

FROM base AS customer
COPY customer-service/src customer-service/src
ENV CUSTOMER_HOST=0.0.0.0 CUSTOMER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.CUSTOMER_PORT}/readyz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "--import", "tsx", "customer-service/src/main.ts"]

FROM base AS identity
COPY identity-service/src identity-service/src
ENV IDENTITY_HOST=0.0.0.0 IDENTITY_PORT=8081
EXPOSE 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.IDENTITY_PORT}/readyz`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "--import", "tsx", "identity-service/src/main.ts"]
