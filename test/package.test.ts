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

test("bin/abgate.js runs the build, unless a source file is newer than it (sources pulled or edited since the build)", async () => {
  const { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const dir = mkdtempSync(join(tmpdir(), "abgate-bin-"));
  try {
    mkdirSync(join(dir, "bin"));
    mkdirSync(join(dir, "dist"));
    mkdirSync(join(dir, "src/cli"), { recursive: true });
    cpSync(`${root}bin/abgate.js`, join(dir, "bin/abgate.js"));
    symlinkSync(`${root}node_modules`, join(dir, "node_modules"));
    writeFileSync(join(dir, "package.json"), `{"type": "module"}`);
    writeFileSync(join(dir, "dist/cli.js"), `console.log("build");`);
    writeFileSync(join(dir, "src/cli/main.ts"), `const from: string = "sources"; console.log(from);`);
    writeFileSync(join(dir, "src/cli/main.test.ts"), ``);
    const run = () => spawnSync(process.execPath, [join(dir, "bin/abgate.js")], { encoding: "utf8" }).stdout.trim();
    const at = (path: string, s: number) => utimesSync(join(dir, path), s, s);
    at("src/cli/main.ts", 1000);
    at("src/cli/main.test.ts", 3000); // tests are not part of the CLI
    at("dist/cli.js", 2000);
    assert.equal(run(), "build");
    at("src/cli/main.ts", 2001);
    assert.equal(run(), "sources", "a source newer than the build");
    at("src/cli/main.ts", 2000);
    assert.equal(run(), "build", "same time, as in an installed package's tarball");
    rmSync(join(dir, "dist"), { recursive: true });
    assert.equal(run(), "sources", "no build");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
