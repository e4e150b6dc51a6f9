/**
 * The client address seam (runtime/src/interceptors.ts): the peer address
 * unless it is a trusted proxy, then X-Forwarded-For read from the right;
 * what limits count (IPv6 by /64); which proxy lists are accepted.
 */
import { createContextValues } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import {
  addressLimitKey,
  clientAddress,
  kPeerAddress,
  parseTrustedProxies,
  peerContextValues,
} from "../src/interceptors.js";

const ctx = (peer: string, xff?: string) => ({
  values: createContextValues().set(kPeerAddress, peer),
  requestHeader: new Headers(xff === undefined ? {} : { "x-forwarded-for": xff }),
});

describe("clientAddress", () => {
  const trusted = parseTrustedProxies(["127.0.0.1", "10.0.0.0/8", "fd00::/8"]);

  it("is the peer without trusted proxies, whatever the header says", () => {
    expect(clientAddress(ctx("127.0.0.1", "203.0.113.9"))).toBe("127.0.0.1");
  });

  it("is the peer when the peer is not a trusted proxy", () => {
    expect(clientAddress(ctx("198.51.100.1", "203.0.113.9"), trusted)).toBe("198.51.100.1");
  });

  it("is the nearest untrusted hop behind trusted proxies; entries a client prepended are ignored", () => {
    expect(clientAddress(ctx("127.0.0.1", "192.0.2.66, 203.0.113.9, 10.1.2.3"), trusted)).toBe("203.0.113.9");
    expect(clientAddress(ctx("127.0.0.1", "203.0.113.9"), trusted)).toBe("203.0.113.9");
    expect(clientAddress(ctx("fd00::1", "2001:db8::7"), trusted)).toBe("2001:db8::7");
  });

  it("stops at a malformed entry: the hop that appended it is the client", () => {
    expect(clientAddress(ctx("127.0.0.1", "203.0.113.9, not-an-ip, 10.0.0.5"), trusted)).toBe("10.0.0.5");
    expect(clientAddress(ctx("127.0.0.1", "bogus"), trusted)).toBe("127.0.0.1");
  });

  it("takes the peer from the socket, IPv4 on a dual-stack socket as IPv4", () => {
    const values = peerContextValues({ socket: { remoteAddress: "::ffff:127.0.0.1" } });
    expect(values.get(kPeerAddress)).toBe("127.0.0.1");
    expect(peerContextValues({ socket: null }).get(kPeerAddress)).toBe("");
  });
});

describe("addressLimitKey", () => {
  it("keeps IPv4 whole and cuts IPv6 to its /64", () => {
    expect(addressLimitKey("203.0.113.9")).toBe("203.0.113.9");
    expect(addressLimitKey("2001:db8:1:2::a")).toBe("2001:db8:1:2::/64");
    expect(addressLimitKey("2001:0db8:0001:0002:ffff:0:0:1")).toBe("2001:db8:1:2::/64");
    expect(addressLimitKey("::1")).toBe("0:0:0:0::/64");
  });
});

describe("parseTrustedProxies", () => {
  it.each(["10.0.0.0/33", "10.0.0.0/8/1", "proxy.example.com", "fd00::/129", "10.0.0.0/x"])("refuses %s", (entry) => {
    expect(() => parseTrustedProxies([entry])).toThrow(`"${entry}" is not an IP address or CIDR range`);
  });
});
