#!/usr/bin/env node
// The built CLI is used when present (fast start) and no source file is newer than it; otherwise (a checkout
// without a build, or sources pulled or edited since `npm ci` built it) the sources run through tsx, so that
// `npx abgate` always runs the code that is there. Installed packages keep tarball times (all alike): the build.
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
const built = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
const sources = fileURLToPath(new URL("../src", import.meta.url));

function newerThan(dir, ms) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      if (newerThan(path, ms)) return true;
    } else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts") && statSync(path).mtimeMs > ms) {
      return true;
    }
  }
  return false;
}

if (existsSync(built) && !(existsSync(sources) && newerThan(sources, statSync(built).mtimeMs))) {
  await import(built);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../src/cli/main.ts");
}
