#!/usr/bin/env node
// The built CLI is used when present (fast start); a checkout without a build runs the sources through tsx.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
const built = fileURLToPath(new URL("../dist/cli.js", import.meta.url));
if (existsSync(built)) {
  await import(built);
} else {
  const { register } = await import("tsx/esm/api");
  register();
  await import("../src/cli/main.ts");
}
