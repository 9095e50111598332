import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

test("the package builds at install time: dist/ and the dashboard bundle exist", () => {
  assert.ok(existsSync(`${root}dist/cli.js`), "dist/cli.js (npm ci runs `prepare`)");
  assert.ok(existsSync(`${root}dist/stats/index.js`));
  assert.ok(existsSync(`${root}src/dashboard/assets/manifest.json`));
});

test('import { ... } from "abgate/stats" resolves to the statistics API', async () => {
  const stats = (await import("abgate/stats" as string)) as Record<string, unknown>;
  for (const name of ["proportionTest", "meanTest", "srmTest", "mixtureSprt", "chanceToWin", "adjustPValues", "buildReport"]) {
    assert.equal(typeof stats[name], "function", name);
  }
  const r = (stats.proportionTest as (a: object, b: object) => { pValue: number })({ units: 1000, conversions: 100 }, { units: 1000, conversions: 130 });
  assert.ok(r.pValue > 0 && r.pValue < 0.05);
});

test("npx abgate --help lists the commands", () => {
  const res = spawnSync("npx", ["abgate", "--help"], { cwd: root, encoding: "utf8" });
  assert.equal(res.status, 0, res.stderr);
  for (const cmd of ["up", "serve", "down", "ps", "logs", "report", "weights", "promote", "rollback", "validate", "simulate", "demo"]) {
    assert.match(res.stdout, new RegExp(`\\n  ${cmd}\\b`), cmd);
  }
});
