/**
 * HalfSipHash-c-d with a 64-bit output (Jean-Philippe Aumasson, 2016: the 32-bit-word version of SipHash, Aumasson and
 * Bernstein, "SipHash: a fast short-input PRF", INDOCRYPT 2012), of a string taken as its UTF-16 code units, each two
 * bytes little-endian (so any string, lone surrogates included, is one message, and two strings never the same one).
 *
 * Why a keyed PRF and not a faster multiply-xor hash with a random seed: the unit cache takes a unit's 64-bit hash
 * for the unit itself, and units come from clients. Multiply-xor hashes (MurmurHash, CityHash) have collisions that
 * hold whatever the seed (Aumasson and Bernstein found them), so a client could choose a unit that passes for
 * another; without the key, finding one for a keyed PRF is as hard as guessing 64 bits. The Linux kernel keys its
 * hash tables with HalfSipHash-1-3 for the same reason; abgate uses that round count too (`c` = 1, `d` = 3).
 *
 * Sets out[0] and out[1] to the output's two 32-bit words (int32), in the order the reference writes them.
 *
 * `text` may also be bytes, text[start] to text[start + length - 1], each taken as the code unit of that value: the
 * hash of an ASCII or Latin-1 string's bytes is that of the string.
 */
export function halfSipHash64(k0: number, k1: number, text: string | Uint8Array, cRounds: number, dRounds: number, out: Int32Array, start = 0, length = text.length): void {
  let v0 = k0 | 0;
  let v1 = (k1 ^ 0xee) | 0; // (0xee: the 64-bit output's domain separation)
  let v2 = (k0 ^ 0x6c796765) | 0;
  let v3 = (k1 ^ 0x74656462) | 0;
  const n = length;
  const end = n & ~1;
  // Steps 0 to words - 1 take the message's 32-bit words, each two code units; step `words` the last block, the
  // bytes left over (none, or one code unit's two) under the length in bytes (mod 256); the two after it each
  // finish one half of the output. One loop, so that the round is written once.
  const words = end >> 1;
  for (let step = 0; step <= words + 2; step++) {
    let m = 0;
    let rounds = cRounds;
    if (step < words) {
      m = codeUnit(text, start + 2 * step) | (codeUnit(text, start + 2 * step + 1) << 16);
    } else if (step === words) {
      m = ((2 * n) << 24) | (end < n ? codeUnit(text, start + end) : 0);
    } else {
      if (step === words + 1) v2 ^= 0xee;
      rounds = dRounds;
    }
    v3 ^= m;
    for (let r = 0; r < rounds; r++) {
      v0 = (v0 + v1) | 0;
      v1 = (v1 << 5) | (v1 >>> 27);
      v1 ^= v0;
      v0 = (v0 << 16) | (v0 >>> 16);
      v2 = (v2 + v3) | 0;
      v3 = (v3 << 8) | (v3 >>> 24);
      v3 ^= v2;
      v0 = (v0 + v3) | 0;
      v3 = (v3 << 7) | (v3 >>> 25);
      v3 ^= v0;
      v2 = (v2 + v1) | 0;
      v1 = (v1 << 13) | (v1 >>> 19);
      v1 ^= v2;
      v2 = (v2 << 16) | (v2 >>> 16);
    }
    if (step <= words) {
      v0 ^= m;
    } else {
      out[step - words - 1] = v1 ^ v3;
      v1 ^= 0xdd;
    }
  }
}

function codeUnit(text: string | Uint8Array, i: number): number {
  return typeof text === "string" ? text.charCodeAt(i) : text[i]!;
}
