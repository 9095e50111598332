import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { halfSipHash64 } from "./halfsiphash.ts";

describe("halfSipHash64", () => {
  it("gives the reference's HalfSipHash-2-4 64-bit test vectors", () => {
    // The SipHash repository's vectors_hsip64: key bytes 00..07, message bytes 00..(i-1) for the i-th. A string of
    // code units is the message of their bytes little-endian, so the even lengths are the ones a string can give.
    const vectors: Record<number, string> = {
      0: "218d1f59b9b83cc8",
      2: "064f39ef7c50eb57",
      4: "d5e78a175be52ea1",
      6: "ce3e91358aa2bc25",
      8: "edfee820bce4858c",
      10: "95b0469f06a6f2ee",
      12: "7bc71f9faef5c799",
      14: "3bb1a870eae8e658",
      16: "7336aad25f7bf3b5",
      18: "c9b2db2b9a3e42f9",
      20: "1bf52b0a6feea7db",
      22: "e20103fa1ba776ef",
    };
    const out = new Int32Array(2);
    for (const [length, expected] of Object.entries(vectors).map(([k, v]) => [Number(k), v] as const)) {
      let text = "";
      for (let j = 0; j < length; j += 2) text += String.fromCharCode(j | ((j + 1) << 8));
      halfSipHash64(0x03020100, 0x07060504, text, 2, 4, out);
      const bytes = Buffer.alloc(8);
      bytes.writeInt32LE(out[0]!, 0);
      bytes.writeInt32LE(out[1]!, 4);
      assert.equal(bytes.toString("hex"), expected, `${length} bytes`);
    }
  });

  it("hashes a string's code units, so strings that differ in any of them differ", () => {
    const out = new Int32Array(2);
    const seen = new Set<string>();
    for (const s of ["", "a", "b", "ab", "ba", "a\u0000", "\u0000a", "\ud800", "\udc00", "\u0100", "\u0001\u0001", "é", "é"]) {
      halfSipHash64(1, 2, s, 1, 3, out);
      seen.add(`${out[0]},${out[1]}`);
    }
    assert.equal(seen.size, 12, "all but the one string given twice");
  });
});
