import { BlockList, isIP } from "node:net";

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) are meaningful for one connection only and are never forwarded. The
 * x-forwarded-* and x-abgate-* request headers are rewritten by abgate, so a client's own copies are dropped too.
 */
export const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** The headers abgate sets on every answer, and so never passes on from a replica. */
export const ABGATE_RESPONSE_HEADERS: ReadonlySet<string> = new Set(["x-abgate-variant", "x-abgate-request-id"]);

/**
 * Headers a Connection header cannot make hop-by-hop: the body's framing and Host. Dropping a listed
 * Content-Length while still relaying the body would leave its bytes unframed, for the next hop to read as another
 * request or response (request smuggling); dropping Host would send an HTTP/1.1 request without one.
 */
const NEVER_CONNECTION_SCOPED = new Set(["content-length", "transfer-encoding", "host"]);

/** Names listed in a Connection header value, lower-cased (they are hop-by-hop as well), less framing and Host. */
export function connectionTokens(value: string | undefined): Set<string> | undefined {
  if (!value) return undefined;
  // The common values, without splitting (a replica's every keep-alive response says one of them).
  if (value.length <= 10) {
    const v = value.toLowerCase();
    if (v === "keep-alive" || v === "close") return undefined;
  }
  let out: Set<string> | undefined;
  for (const t of value.split(",")) {
    const n = t.trim().toLowerCase();
    if (n && n !== "close" && n !== "keep-alive" && !NEVER_CONNECTION_SCOPED.has(n)) (out ??= new Set()).add(n);
  }
  return out;
}

/** Value of `name` in a Cookie header, without allocating for headers that do not contain it. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  let i = header.indexOf(name);
  while (i !== -1) {
    const before = i === 0 ? ";" : header[i - 1];
    if ((before === ";" || before === " ") && header.charCodeAt(i + name.length) === 61 /* = */) {
      const start = i + name.length + 1;
      const end = header.indexOf(";", start);
      let v = header.slice(start, end === -1 ? undefined : end).trim();
      // RFC 6265 §4.1.1: a value may be in double quotes, which are not part of it; the application's cookie parser
      // (npm cookie, Go's net/http, Python's http.cookies) drops them, and its events must name the same unit.
      if (v.length >= 2 && v.charCodeAt(0) === 34 && v.charCodeAt(v.length - 1) === 34) v = v.slice(1, -1);
      return v || undefined;
    }
    i = header.indexOf(name, i + 1);
  }
  return undefined;
}

/** Value of query parameter `name` in a request target, decoded; undefined when absent or empty. */
export function queryValue(url: string, name: string): string | undefined {
  const q = url.indexOf("?");
  if (q === -1) return undefined;
  // Parameters end where the fragment begins.
  const fragment = url.indexOf("#", q);
  if (fragment !== -1) url = url.slice(0, fragment);
  let i = url.indexOf(name, q + 1);
  while (i !== -1) {
    const before = url.charCodeAt(i - 1);
    if ((before === 63 /* ? */ || before === 38) /* & */ && url.charCodeAt(i + name.length) === 61) {
      const start = i + name.length + 1;
      let end = url.indexOf("&", start);
      if (end === -1) end = url.length;
      const hash = url.indexOf("#", start);
      if (hash !== -1 && hash < end) end = hash;
      const raw = url.slice(start, end);
      if (!raw) return undefined;
      try {
        return decodeURIComponent(raw.replace(/\+/g, " "));
      } catch {
        // Malformed escapes (%FF, %E2%82, %zz): decoded as URLSearchParams does (invalid UTF-8 becomes U+FFFD, a
        // % that starts no escape stays), the way the application reads the same parameter to post its events.
        return new URLSearchParams(`u=${raw}`).get("u") || undefined;
      }
    }
    i = url.indexOf(name, i + 1);
  }
  return undefined;
}

/** A set of ASCII characters as a lookup table (1 at each one's code), for `onlyFrom`. */
export function asciiSet(chars: string): Uint8Array {
  const set = new Uint8Array(128);
  for (let i = 0; i < chars.length; i++) set[chars.charCodeAt(i)] = 1;
  return set;
}

/** Whether s[start, end) holds only characters of `set`: a table lookup each, cheap enough for every request. */
export function onlyFrom(set: Uint8Array, s: string, end = s.length, start = 0): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c > 127 || set[c] === 0) return false;
  }
  return true;
}

/** RFC 9110 §5.6.2: the characters of a token (tchar), such as a field name. */
export const TCHAR = asciiSet("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");

/** Whether a peer address is in `ranges` (forwardedHeaders.trustedIPs); undefined when none are configured. */
export function trustedPeers(ranges: readonly string[]): ((address: string) => boolean) | undefined {
  if (ranges.length === 0) return undefined;
  const list = new BlockList();
  for (const range of ranges) {
    const slash = range.indexOf("/");
    const address = slash === -1 ? range : range.slice(0, slash);
    const family = isIP(address) === 6 ? "ipv6" : "ipv4";
    if (slash === -1) list.addAddress(address, family);
    else list.addSubnet(address, Number(range.slice(slash + 1)), family);
  }
  return (address) => {
    // (an IPv4 client of a dual-stack listener shows as ::ffff:a.b.c.d)
    const v4 = address.startsWith("::ffff:") && isIP(address.slice(7)) === 4 ? address.slice(7) : undefined;
    const family = isIP(address);
    if (family === 0) return false;
    return list.check(address, family === 6 ? "ipv6" : "ipv4") || (v4 !== undefined && list.check(v4, "ipv4"));
  };
}
