import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { fnv1a32, fnv1a32Update, stickyBucket } from "./fnv.ts";

/** Reference: FNV-1a over TextEncoder's bytes. */
function reference(text: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(text)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h >>> 0;
}

test("known FNV-1a 32-bit vectors", () => {
  assert.equal(fnv1a32(""), 0x811c9dc5);
  assert.equal(fnv1a32("a"), 0xe40c292c);
  assert.equal(fnv1a32("foobar"), 0xbf9cf968);
});

test("hashes UTF-8 bytes (multi-byte, astral and lone surrogates as TextEncoder encodes them)", () => {
  for (const s of ["é", "日本", "🙂", "a🙂b", "\ud800", "x\udc00y", "\ud83d"]) assert.equal(fnv1a32(s), reference(s), JSON.stringify(s));
  fc.assert(fc.property(fc.string({ unit: "binary" }), (s) => fnv1a32(s) === reference(s)), { numRuns: 2000 });
});

test("fnv1a32Update continues a hash: fnv1a32(a + b) === fnv1a32Update(fnv1a32(a), b)", () => {
  fc.assert(fc.property(fc.string(), fc.string(), (a, b) => fnv1a32(a + b) === fnv1a32Update(fnv1a32(a), b)));
});

test("stickyBucket is fnv1a32(salt:unit) / 2^32", () => {
  assert.equal(stickyBucket("exp", "user-1"), fnv1a32("exp:user-1") / 2 ** 32);
  assert.ok(stickyBucket("s", "u") >= 0 && stickyBucket("s", "u") < 1);
});
