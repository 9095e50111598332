import { createHash, timingSafeEqual } from "node:crypto";

const digest = (s: string) => createHash("sha256").update(s).digest();

/**
 * Bearer-token check in constant time: both sides are hashed first, so neither the token's length nor a common
 * prefix shows in the timing.
 */
export function bearerMatches(authorization: string | undefined, token: string): boolean {
  // The scheme is case-insensitive (RFC 9110 §11.1): "bearer x" and "BEARER x" are the same credentials.
  const given = authorization !== undefined && /^bearer +/i.test(authorization) ? authorization.replace(/^bearer +/i, "").trim() : "";
  return timingSafeEqual(digest(given), digest(token)) && given.length > 0;
}
