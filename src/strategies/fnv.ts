/**
 * FNV-1a, 32-bit (Fowler, Noll, Vo; http://www.isthe.com/chongo/tech/comp/fnv/, IETF draft-eastlake-fnv),
 * over the UTF-8 bytes of a string. The bytes are produced inline from the UTF-16 code units rather than with
 * TextEncoder, so that hashing a unit on the hot path allocates nothing. Lone surrogates hash as U+FFFD,
 * exactly as TextEncoder would encode them, so any other implementation that encodes to UTF-8 agrees.
 */

/** FNV-1a 32-bit offset basis. */
export const FNV1A32_OFFSET = 0x811c9dc5;
export const FNV1A32_PRIME = 0x01000193;

/** FNV-1a 32-bit hash of `text`'s UTF-8 bytes, as an unsigned integer in [0, 2^32). */
export function fnv1a32(text: string): number {
  return fnv1a32Update(FNV1A32_OFFSET, text);
}

/**
 * Continue an FNV-1a 32-bit hash from `state` (a previous result, or FNV1A32_OFFSET) over `text`. Because FNV is
 * a byte-at-a-time fold, `fnv1a32Update(fnv1a32(a), b) === fnv1a32(a + b)`: sticky assignment hashes the constant
 * `salt + ":"` prefix once and only the unit per request.
 */
export function fnv1a32Update(state: number, text: string): number {
  let h = state >>> 0;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    let c = text.charCodeAt(i);
    if (c < 0x80) {
      h = Math.imul(h ^ c, FNV1A32_PRIME);
      continue;
    }
    if (c < 0x800) {
      h = Math.imul(h ^ (0xc0 | (c >> 6)), FNV1A32_PRIME);
      h = Math.imul(h ^ (0x80 | (c & 0x3f)), FNV1A32_PRIME);
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = i + 1 < n ? text.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        const cp = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
        i++;
        h = Math.imul(h ^ (0xf0 | (cp >> 18)), FNV1A32_PRIME);
        h = Math.imul(h ^ (0x80 | ((cp >> 12) & 0x3f)), FNV1A32_PRIME);
        h = Math.imul(h ^ (0x80 | ((cp >> 6) & 0x3f)), FNV1A32_PRIME);
        h = Math.imul(h ^ (0x80 | (cp & 0x3f)), FNV1A32_PRIME);
        continue;
      }
      c = 0xfffd;
    }
    h = Math.imul(h ^ (0xe0 | (c >> 12)), FNV1A32_PRIME);
    h = Math.imul(h ^ (0x80 | ((c >> 6) & 0x3f)), FNV1A32_PRIME);
    h = Math.imul(h ^ (0x80 | (c & 0x3f)), FNV1A32_PRIME);
  }
  return h >>> 0;
}

/** The sticky bucket of a unit: `fnv1a32(salt + ":" + unit) / 2^32`, in [0, 1). */
export function stickyBucket(salt: string, unit: string): number {
  return fnv1a32(`${salt}:${unit}`) / 4294967296;
}

/**
 * MurmurHash3's 32-bit finalizer (Austin Appleby, public domain): every input bit flips each output bit with
 * probability about 1/2. FNV-1a alone mixes the last bytes of its input poorly, so units that differ only at the
 * end (`user-1`, `user-2`, ...) land close together and a 50/50 split of sequential ids can come out 60/40.
 */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** How a unit's hash becomes its bucket: the spec's plain FNV-1a, or FNV-1a followed by fmix32. */
export type StickyHash = "fnv1a32" | "fnv1a32-fmix";

/** Bucket in [0, 1) from an FNV-1a state. */
export function bucketOf(h: number, hash: StickyHash = "fnv1a32"): number {
  return (hash === "fnv1a32-fmix" ? fmix32(h) : h) / 4294967296;
}
