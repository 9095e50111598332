#!/usr/bin/env node
// Node 20's test runner takes no globs: find the test files here, then run them all in one `node --test`, one
// file at a time (the Docker and browser suites share one engine and one machine). Extra arguments are file
// filters: `node scripts/test.mjs proxy stats` runs the files whose path contains "proxy" or "stats".
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { spawn } from "node:child_process";

const root = new URL("..", import.meta.url).pathname;
function find(dir, out = []) {
  for (const name of readdirSync(dir)) {
    if (name === "node_modules" || name === "helpers" || name.startsWith(".")) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) find(p, out);
    else if (name.endsWith(".test.ts")) out.push(relative(root, p));
  }
  return out;
}
const filters = process.argv.slice(2);
const files = [...find(join(root, "src")), ...find(join(root, "test"))].filter((f) => filters.length === 0 || filters.some((x) => f.includes(x))).sort();
if (files.length === 0) {
  console.error("no test files match");
  process.exit(1);
}
const child = spawn(process.execPath, ["--import", "tsx", "--test", "--test-concurrency=1", "--test-timeout=300000", ...files], { cwd: root, stdio: "inherit" });
child.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
