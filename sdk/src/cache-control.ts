/**
 * HTTP caching of the key sets the SDK fetches (token JWKS, event keys):
 * how long a response may be kept, by its headers.
 */

/**
 * How long a response may be cached by its headers (RFC 9111): its
 * `max-age` less its `Age` (time spent in caches on the way); 0 for
 * `no-store` or `no-cache`; undefined without a max-age.
 */
export function freshnessMs(headers: Headers): number | undefined {
  const directives = (headers.get("cache-control") ?? "")
    .toLowerCase()
    .split(",")
    .map((d) => d.trim());
  if (directives.includes("no-store") || directives.includes("no-cache")) return 0;
  const maxAge = directives.map((d) => /^max-age="?(\d+)"?$/.exec(d)?.[1]).find((v) => v !== undefined);
  if (maxAge === undefined) return undefined;
  const age = /^\d+$/.test(headers.get("age")?.trim() ?? "") ? Number(headers.get("age")) : 0;
  return Math.max(0, Number(maxAge) - age) * 1000;
}
