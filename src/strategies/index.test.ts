import assert from "node:assert/strict";
import { test } from "node:test";
import { InvalidArgumentError } from "../errors.ts";
import { createStrategy, fnv1a32, type StrategyKind } from "./index.ts";

test("createStrategy builds each kind", () => {
  for (const kind of ["random", "sticky", "round-robin", "bandit"] as StrategyKind[]) {
    const s = createStrategy(kind, { variants: [{ name: "a", weight: 1 }], salt: "s" });
    assert.equal(s.kind, kind);
    assert.equal(s.assign("u"), "a");
  }
});

test("createStrategy rejects an unknown kind", () => {
  assert.throws(() => createStrategy("nope" as StrategyKind, { variants: [{ name: "a", weight: 1 }], salt: "s" }), InvalidArgumentError);
});

test("fnv1a32 is exported", () => {
  assert.equal(fnv1a32("a"), 0xe40c292c);
});
