import { test } from "node:test";
import assert from "node:assert/strict";
import { bearerMatches } from "./auth.ts";

test("bearerMatches: the token after a Bearer scheme in any case; nothing else", () => {
  for (const header of ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret", "Bearer s3cret  "]) assert.equal(bearerMatches(header, "s3cret"), true, header);
  for (const header of [undefined, "", "Bearer", "Bearer ", "Basic s3cret", "s3cret", "Bearer s3cre", "Bearer s3cret2", "Bearers3cret"]) {
    assert.equal(bearerMatches(header, "s3cret"), false, String(header));
  }
  assert.equal(bearerMatches("Bearer ", ""), false, "an empty token never matches");
});
