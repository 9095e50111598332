import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { InvalidArgumentError } from "../../errors.ts";
import { buildContextIssues, isIgnored, parseDockerignore, readBuildContext } from "./context.ts";

function tree(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "abgate-ctx-"));
  for (const [p, content] of Object.entries(files)) {
    mkdirSync(join(dir, p, ".."), { recursive: true });
    writeFileSync(join(dir, p), content);
  }
  return dir;
}

test(".dockerignore rules: globs, directories, ** and negation, last match wins", () => {
  const rules = parseDockerignore("# comment\nnode_modules\n*.log\n/build/\n**/*.tmp\ndata/*\n!data/keep.csv\n");
  const cases: [string, boolean][] = [
    ["node_modules", true],
    ["node_modules/x/index.js", true],
    ["app.log", true],
    ["sub/app.log", false],
    ["build/out.js", true],
    ["a/b/c.tmp", true],
    ["c.tmp", true],
    ["data/big.csv", true],
    ["data/keep.csv", false],
    ["server.js", false],
  ];
  for (const [path, ignored] of cases) assert.equal(isIgnored(path, rules), ignored, path);
});

test("build context: ignored files are left out, the archive lists the rest and tar can read it", (t) => {
  const long = `deep/${"x".repeat(60)}/${"y".repeat(60)}.js`;
  const dir = tree({
    Dockerfile: "FROM scratch\n",
    ".dockerignore": "*.log\nDockerfile\n",
    "server.js": "console.log(1)\n",
    "debug.log": "noise",
    [long]: "long name",
  });
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const ctx = readBuildContext(dir);
  assert.deepEqual(ctx.files, [".dockerignore", "Dockerfile", long, "server.js"]);
  const listed = execFileSync("tar", ["-t"], { input: ctx.tar }).toString().trim().split("\n").sort();
  assert.deepEqual(listed, [".dockerignore", "Dockerfile", "deep/", `deep/${"x".repeat(60)}/`, long, "server.js"].sort());
  const content = execFileSync("tar", ["-xO", long], { input: ctx.tar }).toString();
  assert.equal(content, "long name");
});

test("build context hash: stable, and changes with content, build args and Dockerfile name only", (t) => {
  const dir = tree({ Dockerfile: "FROM scratch\n", "a.txt": "1", "x.log": "a" , ".dockerignore": "*.log\n"});
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const h0 = readBuildContext(dir).hash;
  assert.equal(readBuildContext(dir).hash, h0);
  writeFileSync(join(dir, "x.log"), "ignored change");
  assert.equal(readBuildContext(dir).hash, h0);
  assert.notEqual(readBuildContext(dir, { buildArgs: { BASE_IMAGE: "node:20-slim" } }).hash, h0);
  assert.equal(
    readBuildContext(dir, { buildArgs: { A: "1", B: "2" } }).hash,
    readBuildContext(dir, { buildArgs: { B: "2", A: "1" } }).hash,
  );
  writeFileSync(join(dir, "a.txt"), "2");
  assert.notEqual(readBuildContext(dir).hash, h0);
});

test("missing context or Dockerfile is an InvalidArgumentError", (t) => {
  const dir = tree({ "a.txt": "1" });
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  assert.throws(() => readBuildContext(join(dir, "nope")), InvalidArgumentError);
  assert.throws(() => readBuildContext(dir), /no Dockerfile/);
});

test("validate's check of a build context agrees with the build's: Dockerfile names as Docker reads them, symlinked folders", (t) => {
  const dir = tree({ "sub/Dockerfile.prod": "FROM x\n", Dockerfile: "FROM x\n" });
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // A Windows-style or "./" Dockerfile path: the build reads it as sub/Dockerfile.prod, so validate must too.
  for (const dockerfile of ["sub\\Dockerfile.prod", "./sub/Dockerfile.prod"]) {
    assert.doesNotThrow(() => readBuildContext(dir, { dockerfile }));
    assert.deepEqual(buildContextIssues([{ build: dir, dockerfile }]), [], dockerfile);
  }
  // A symlink to the folder: the build refuses it, and validate says so.
  const link = `${dir}-link`;
  symlinkSync(dir, link);
  t.after(() => rmSync(link, { force: true }));
  assert.throws(() => readBuildContext(link), /is not a directory/);
  assert.deepEqual(buildContextIssues([{ build: link }]).map((i) => i.path), ["variants[0].build"]);
  // A Dockerfile outside the context: the daemon refuses it ("forbidden path outside the build context"), so validate does.
  for (const dockerfile of ["../other/Dockerfile", "sub/../../Dockerfile", "/etc/Dockerfile"]) {
    assert.deepEqual(buildContextIssues([{ build: dir, dockerfile }]), [{ path: "variants[0].dockerfile", message: `a path inside the build context ${dir} (relative to it); ${dockerfile} is outside it` }], dockerfile);
    assert.throws(() => readBuildContext(dir, { dockerfile }), /is outside build context/);
  }
  assert.deepEqual(buildContextIssues([{ build: dir, dockerfile: "sub/../Dockerfile" }]), [], "inside after all");
});
