import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveCommand } from "./command.ts";

test("resolveCommand finds commands as execvp does: paths against the cwd, names in PATH, executable files only", () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cmd-"));
  mkdirSync(join(dir, "bin"));
  mkdirSync(join(dir, "bin", "folder"));
  writeFileSync(join(dir, "bin", "model"), "#!/bin/sh\n");
  chmodSync(join(dir, "bin", "model"), 0o755);
  writeFileSync(join(dir, "bin", "plain"), "not executable");
  assert.equal(resolveCommand("./bin/model", dir, ""), join(dir, "bin", "model"));
  assert.equal(resolveCommand(join(dir, "bin", "model"), "/", ""), join(dir, "bin", "model"));
  assert.equal(resolveCommand("model", "/", `/nonexistent:${join(dir, "bin")}`), join(dir, "bin", "model"));
  // an empty PATH entry is the cwd; a relative one is relative to it
  assert.equal(resolveCommand("model", join(dir, "bin"), ":/nonexistent"), join(dir, "bin", "model"));
  assert.equal(resolveCommand("model", dir, "bin"), join(dir, "bin", "model"));
  for (const missing of ["./bin/plain", "./bin/folder", "./bin/nope", "plain", "folder", ""]) {
    assert.equal(resolveCommand(missing, dir, join(dir, "bin")), undefined, missing);
  }
  // no PATH at all: the system's default path, as execvp and spawn search
  assert.equal(resolveCommand("sh", dir, undefined), "/bin/sh");
  assert.ok(resolveCommand("node", "/", process.env.PATH)?.endsWith("/node"));
});
