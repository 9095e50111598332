import { createHash, timingSafeEqual } from "node:crypto";

const digest = (s: string) => createHash("sha256").update(s).digest();

/**
 * Bearer-token check in constant time: both sides are hashed first, so neither the token's length nor a common
 * prefix shows in the timing.
 */
export function bearerMatches(authorization: string | undefined, token: string): boolean {
  const given = authorization?.startsWith("Bearer ") ? authorization.slice(7).trim() : "";
  return timingSafeEqual(digest(given), digest(token)) && given.length > 0;
}
