/**
 * `abgate up` start-up time, beside plain `docker run`: 2 variants x 2 replicas of the recommender example,
 * images already built (cached), from nothing running to every replica healthy.
 *
 *   npx tsx bench/up.ts [--rounds 3]
 *
 * - abgate (in-process): DockerEngine.start (hash check, stale-container sweep, create + start x4) and the
 *   gateway's health checker until all 4 replicas are healthy. What `abgate up` does after its config is read.
 * - abgate up (CLI): the real command in a child process, from spawn until it prints "all 4 replicas healthy"
 *   (adds Node + tsx start-up and module loading).
 * - docker run: `docker run -d --network host -e PORT=...` of the same 4 images from the shell's point of view
 *   (4 docker CLI invocations in parallel), then GET /health on each every 25 ms until all answer 200.
 * Rounds are interleaved; medians are printed. Target: abgate up under 5 s. Ports 19600-19699.
 */
import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { loadConfig } from "../src/config/index.ts";
import { DockerEngine } from "../src/engines/docker/index.ts";
import { startGateway } from "../src/gateway.ts";
import { createLogger } from "../src/log/index.ts";

const run = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const EXAMPLE = join(ROOT, "examples/recommender/abgate.yaml");
const rounds = Number(process.argv[process.argv.indexOf("--rounds") + 1]) || 3;
const work = mkdtempSync(join(tmpdir(), "abgate-bench-up-"));
const env = {
  ...process.env,
  ABGATE_PORT_BASE: "19600",
  ABGATE_LISTEN: "127.0.0.1:19680",
  ABGATE_ADMIN_LISTEN: "127.0.0.1:19681",
  ABGATE_ADMIN_TOKEN: "bench",
  ABGATE_STORE: `sqlite:${join(work, "bench.db")}`,
};
const config = { ...loadConfig(EXAMPLE, env), experiment: "bench-up", salt: "bench-up", logLevel: "error" as const };
const quiet = createLogger("silent");

async function healthy(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(500) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

async function abgateInProcess(): Promise<number> {
  const t0 = performance.now();
  const engine = new DockerEngine(config, { log: () => {} });
  await engine.start();
  const gw = await startGateway(config, { engine, log: quiet, onGeneratedToken: () => {} });
  await gw.health.waitHealthy(engine.endpoints().map((e) => e.id), 60_000);
  const ms = performance.now() - t0;
  await gw.stop();
  await engine.stop();
  return ms;
}

async function abgateCli(): Promise<number> {
  const file = join(work, "bench-up.yaml");
  // the example, under the bench's experiment name, so that nothing else's containers are touched
  const { readFileSync } = await import("node:fs");
  writeFileSync(file, readFileSync(EXAMPLE, "utf8").replace(/^experiment: .*$/m, "experiment: bench-up").replace(/^(\s+build:) \.$/gm, `$1 ${join(ROOT, "examples/recommender")}`));
  const t0 = performance.now();
  const child = spawn(process.execPath, [join(ROOT, "bin/abgate.js"), "up", "-c", file], { env: { ...env, ABGATE_NO_EXIT: "0" }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const ms = await new Promise<number>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`abgate up did not get healthy in 60 s:\n${out}`)), 60_000);
    let healthyAt = 0;
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      if (!healthyAt && /all 4 replicas healthy/.test(out)) healthyAt = performance.now();
      if (healthyAt && /abgate: experiment/.test(out)) {
        clearTimeout(timer);
        resolvePromise(healthyAt - t0);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`abgate up exited with ${code}:\n${out}`)));
  });
  child.removeAllListeners("exit");
  const exited = new Promise((r) => child.once("exit", r));
  // main.ts installs its SIGTERM handler just after printing the serving line: a signal within that window
  // takes the default action (exit, containers left behind), so give it a moment
  await new Promise((r) => setTimeout(r, 300));
  child.kill("SIGTERM");
  await exited;
  const left = (await run("docker", ["ps", "-aq", "--filter", "label=abgate.experiment=bench-up"])).stdout.trim();
  if (left) throw new Error(`abgate up left containers behind after SIGTERM: ${left.split("\n").length}`);
  return ms;
}

async function dockerRun(images: string[]): Promise<number> {
  const ports = [19650, 19651, 19652, 19653];
  const names = ports.map((p) => `bench-up-plain-${p}`);
  const t0 = performance.now();
  await Promise.all(
    ports.map((port, i) =>
      run("docker", ["run", "-d", "--name", names[i], "--network", "host", "-e", `PORT=${port}`, "-e", "HOST=127.0.0.1", images[i < 2 ? 0 : 1]]),
    ),
  );
  const pending = new Set(ports);
  while (pending.size) {
    for (const p of [...pending]) if (await healthy(p)) pending.delete(p);
    if (pending.size) await new Promise((r) => setTimeout(r, 25));
  }
  const ms = performance.now() - t0;
  await run("docker", ["rm", "-f", ...names]);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

try {
  // build (or find) the images first: the benchmark is about start-up with a warm image cache
  const warm = new DockerEngine(config, { log: () => {} });
  await warm.start();
  const images = [...warm.images().values()];
  await warm.stop();
  console.log(`images: ${images.join(", ")} (cached); ${rounds} interleaved rounds`);
  const results: Record<string, number[]> = { "abgate (in-process)": [], "abgate up (CLI)": [], "docker run + health wait": [] };
  for (let r = 0; r < rounds; r++) {
    results["docker run + health wait"].push(await dockerRun(images));
    results["abgate (in-process)"].push(await abgateInProcess());
    results["abgate up (CLI)"].push(await abgateCli());
    console.log(`round ${r + 1}: ${Object.entries(results).map(([k, v]) => `${k} ${fmt(v[r])}`).join(", ")}`);
  }
  const base = median(results["docker run + health wait"]);
  console.log("\n2 variants x 2 replicas, cached images, until all healthy (median):");
  for (const [k, v] of Object.entries(results)) {
    console.log(`  ${k.padEnd(26)} ${fmt(median(v)).padStart(8)}   x${(median(v) / base).toFixed(2)} of docker run   rounds: ${v.map(fmt).join(", ")}`);
  }
  const cli = median(results["abgate up (CLI)"]);
  console.log(`\ntarget: abgate up under 5 s: ${cli < 5000 ? "PASS" : "FAIL"} (${fmt(cli)})`);
} finally {
  await run("docker", ["rm", "-f", "bench-up-plain-19650", "bench-up-plain-19651", "bench-up-plain-19652", "bench-up-plain-19653"]).catch(() => {});
  rmSync(work, { recursive: true, force: true });
}
