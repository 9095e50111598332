import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import Docker from "dockerode";
import { validateConfig, type Config } from "../../config/index.ts";
import { imageExists } from "./build.ts";

/**
 * Helpers for the Docker test suites: find the engine (skip without one, fail with ABGATE_REQUIRE_DOCKER=1),
 * make the local base image, and write tiny model-service build contexts.
 */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const BASE_IMAGE = process.env.ABGATE_BASE_IMAGE || "abgate/node-base:20";

let cached: Promise<Docker | undefined> | undefined;

async function probe(): Promise<Docker | undefined> {
  const docker = new Docker();
  try {
    await docker.ping();
  } catch {
    return undefined;
  }
  if (!(await imageExists(docker, BASE_IMAGE))) {
    execFileSync(join(ROOT, "scripts/make-base-image.sh"), { stdio: "inherit", env: { ...process.env, ABGATE_BASE_IMAGE: BASE_IMAGE } });
  }
  return docker;
}

/** A Docker client, or skips the test (fails it when ABGATE_REQUIRE_DOCKER=1) when no engine answers. */
export async function requireDocker(t: TestContext): Promise<Docker | undefined> {
  cached ??= probe();
  const docker = await cached;
  if (docker) return docker;
  if (process.env.ABGATE_REQUIRE_DOCKER === "1") throw new Error("ABGATE_REQUIRE_DOCKER=1 but no Docker engine answers (run scripts/start-dockerd.sh)");
  t.skip("no Docker engine (set ABGATE_REQUIRE_DOCKER=1 to fail instead)");
  return undefined;
}

/** A Docker test's start: Docker (or a skip, which CI makes a failure) and a build context removed after the test. */
export async function dockerTest(t: TestContext): Promise<{ docker: Docker; dir: string } | undefined> {
  const docker = await requireDocker(t);
  if (!docker) return undefined;
  const dir = writeServiceContext();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return { docker, dir };
}

let seq = 0;
const made = new Set<string>();
/** An experiment name no other test run uses. */
export function uniqueExperiment(prefix = "t"): string {
  const name = `${prefix}-${process.pid}-${Date.now().toString(36)}-${++seq}`;
  made.add(name);
  return name;
}

/** Remove the images of every experiment `uniqueExperiment` named in this process (call it in an `after` hook). */
export async function removeTestImages(): Promise<void> {
  const docker = await cached;
  if (!docker) return;
  for (const experiment of made) await removeExperimentImages(docker, experiment);
}

/**
 * A tiny model service: answers /health and / with its variant and port, exits with 1 on /crash, and can be
 * told through env to print lines and exit at start (CRASH_AT_START) to simulate a crash loop.
 */
export const TEST_SERVER = `
const http = require("node:http");
const port = Number(process.env.PORT);
if (process.env.CRASH_AT_START) {
  for (let i = 0; i < 30; i++) console.log("boot line " + i);
  // Docker copies stdout and stderr by separate readers, so lines written to both within microseconds may be
  // logged in either order; a real service's fatal error comes a moment after its boot lines, as here.
  setTimeout(() => {
    console.error("fatal: cannot load model weights");
    process.exit(2);
  }, 100);
} else {
const server = http.createServer((req, res) => {
  if (req.url === "/crash") { res.end("bye"); setTimeout(() => process.exit(1), 10); return; }
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ variant: process.env.VARIANT || "", port, ok: true }));
});
server.keepAliveTimeout = 65000;
server.listen(port, process.env.HOST || "127.0.0.1", () => console.log("listening on " + port));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
}
`;

/** Write a build context for TEST_SERVER (plus extra files) and return its folder. */
export function writeServiceContext(extra: Record<string, string> = {}, dockerfile?: string): string {
  const dir = mkdtempSync(join(tmpdir(), "abgate-svc-"));
  const files: Record<string, string> = {
    "server.js": TEST_SERVER,
    Dockerfile: dockerfile ?? `ARG BASE_IMAGE=node:20-slim\nFROM \${BASE_IMAGE}\nCOPY server.js /app/server.js\nCMD ["node", "/app/server.js"]\n`,
    ...extra,
  };
  for (const [p, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, p)), { recursive: true });
    writeFileSync(join(dir, p), content);
  }
  return dir;
}

/** A validated docker-engine config for tests, on ports 19000-19999. */
export function testConfig(raw: Record<string, unknown>): Config {
  return validateConfig({ engine: "docker", ports: { base: 19100 }, listen: "127.0.0.1:19080", admin: { listen: "127.0.0.1:19081" }, ...raw });
}

/** GET a URL on the loopback; resolves with status and body, or rejects on a connection error. */
export async function get(url: string, timeoutMs = 2000): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, body: await res.text() };
}

/** Poll until `fn` returns a truthy value (or throw after `timeoutMs`). Only for waiting on real containers. */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Remove the images a test experiment built (they are tagged `abgate/<experiment>-<variant>:<hash>`). */
export async function removeExperimentImages(docker: Docker, experiment: string): Promise<void> {
  const images = await docker.listImages();
  const tags = images.flatMap((i) => i.RepoTags ?? []).filter((tag) => tag.startsWith(`abgate/${experiment}-`));
  await Promise.all(tags.map((tag) => docker.getImage(tag).remove({ force: true }).catch(() => {})));
}
