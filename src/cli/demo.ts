import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type Docker from "dockerode";
import { parseConfig, type Config } from "../config/index.ts";
import { AbgateError } from "../errors.ts";
import type { Engine } from "../engines/types.ts";
import { simulate, type SimulateResult } from "./simulate.ts";

/**
 * `abgate demo`: the whole story on this machine. Two recommender models (popularity, item-kNN) built and run
 * as containers, two replicas each, behind the proxy; simulated users ask for recommendations and watch
 * movies; the report names the winner. Everything it started is removed at the end.
 */
export interface DemoOptions {
  out?: (line: string) => void;
  /** docker, process, or auto (docker when an engine answers or can be started, else process) */
  engine?: "auto" | "docker" | "process";
  users?: number;
  requests?: number;
  durationMs?: number;
  concurrency?: number;
  seed?: number;
  /** first replica port (default 9100; skips ports in use) */
  portBase?: number;
  /** proxy and admin listen addresses (default: free loopback ports) */
  listen?: string;
  adminListen?: string;
  /** experiment name (default recommender-demo: never the name of a running `abgate up`) */
  experiment?: string;
  /** allow running scripts/start-dockerd.sh when no engine answers and we are root on Debian (default true) */
  startDocker?: boolean;
  /** how long replicas may take to become healthy */
  healthTimeoutMs?: number;
}

export interface DemoResult {
  engine: "docker" | "process";
  simulation: SimulateResult;
  report: unknown;
  /** the variant the report's decision names, if any */
  winner?: string;
  elapsedMs: number;
}

/** The repository (or installed package) root: where scripts/ and examples/ are. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "examples", "recommender", "abgate.yaml"))) return dir;
    dir = dirname(dir);
  }
  throw new AbgateError("cannot find examples/recommender next to abgate's code", "ABGATE_ERR_DEMO");
}

function run(cmd: string, args: string[], out: (line: string) => void): Promise<number> {
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    const relay = (chunk: Buffer) => {
      for (const l of chunk.toString().split("\n")) if (l.trim()) out(`  ${l}`);
    };
    child.stdout.on("data", relay);
    child.stderr.on("data", relay);
    child.on("error", (err) => {
      out(`  ${err.message}`);
      resolvePromise(1);
    });
    child.on("close", (code) => resolvePromise(code ?? 1));
  });
}

async function reachable(docker: Docker): Promise<string | undefined> {
  const { ensureReachable } = await import("../engines/docker/client.ts");
  try {
    await ensureReachable(docker, 3000);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** Find (or start) a Docker engine; undefined means: use the process engine. */
async function findDocker(opts: DemoOptions, root: string, out: (line: string) => void): Promise<Docker | undefined> {
  const { createDockerClient, dockerAddress } = await import("../engines/docker/client.ts");
  const docker = createDockerClient();
  const why = await reachable(docker);
  if (!why) {
    out(`docker engine: found on ${dockerAddress()}`);
    return docker;
  }
  const isRoot = process.getuid?.() === 0;
  const debian = existsSync("/etc/debian_version");
  if (opts.startDocker !== false && isRoot && debian) {
    out(`no Docker engine answers on ${dockerAddress()}; this is root on Debian, so installing docker.io if needed and starting dockerd (--bridge=none --iptables=false) with scripts/start-dockerd.sh`);
    const code = await run(join(root, "scripts", "start-dockerd.sh"), [], out);
    if (code === 0 && !(await reachable(docker))) return docker;
    out(`starting dockerd failed (exit ${code})`);
  } else {
    out(`no Docker engine answers on ${dockerAddress()} (${isRoot ? "not Debian" : "not root"}, so not starting one)`);
  }
  if (opts.engine === "docker") throw new AbgateError(`the demo was asked for the docker engine, but none is reachable: ${why}`, "ABGATE_ERR_ENGINE_UNAVAILABLE");
  out("falling back to the process engine: the same two models run as local Node processes");
  return undefined;
}

async function ensureBaseImage(docker: Docker, root: string, out: (line: string) => void): Promise<void> {
  if (process.env.ABGATE_BASE_IMAGE) return; // the user chose a base (e.g. node:20-slim from their registry)
  const { imageExists } = await import("../engines/docker/build.ts");
  if (await imageExists(docker, "abgate/node-base:20")) return;
  out("making the local base image abgate/node-base:20 from this host's node (no registry needed)");
  const code = await run(join(root, "scripts", "make-base-image.sh"), [], out);
  if (code !== 0) throw new AbgateError(`scripts/make-base-image.sh failed (exit ${code})`, "ABGATE_ERR_DEMO");
}

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

function variantLines(sim: SimulateResult): string[] {
  const names = Object.keys(sim.byVariant).sort();
  const lines = ["variant      requests  units  watched  converted units  conversion  minutes/unit"];
  for (const n of names) {
    const v = sim.byVariant[n];
    const conv = v.units ? v.convertedUnits / v.units : 0;
    lines.push(
      `${n.padEnd(12)} ${String(v.requests).padStart(8)}  ${String(v.units).padStart(5)}  ${String(v.watched).padStart(7)}  ${String(v.convertedUnits).padStart(15)}  ${pct(conv).padStart(10)}  ${(v.units ? v.minutes / v.units : 0).toFixed(1).padStart(12)}`,
    );
  }
  return lines;
}

interface ReportShape {
  metrics?: { name: string; kind: string; control?: { value: number }; comparisons?: { variant: string; value: number; relative?: { estimate: number }; pValueAdjusted?: number; pValue?: number; significant?: boolean }[] }[];
  guardrails?: { name: string; variant: string; ok: boolean; detail?: string }[];
  srm?: { pValue: number | null; mismatch: boolean };
  decision?: { action: string; variant?: string; reason?: string };
}

/** A compact text report, used when the stats module has no table formatter. */
function plainReport(report: ReportShape, control: string): string[] {
  const lines: string[] = [];
  if (report.srm) {
    // null: not judged (no units yet, or a bandit's allocation, adaptive by design)
    const p = report.srm.pValue === null ? "not judged" : `p = ${report.srm.pValue.toPrecision(3)}`;
    lines.push(`sample ratio: ${p}${report.srm.mismatch ? "  MISMATCH" : "  ok"}`);
  }
  for (const m of report.metrics ?? []) {
    for (const c of m.comparisons ?? []) {
      const p = c.pValueAdjusted ?? c.pValue;
      lines.push(
        `${m.name.padEnd(14)} ${control} ${m.control?.value.toPrecision(4)}  vs  ${c.variant} ${c.value.toPrecision(4)}` +
          `${c.relative ? `  (${c.relative.estimate >= 0 ? "+" : ""}${pct(c.relative.estimate)})` : ""}${p !== undefined ? `  p = ${p.toPrecision(3)}` : ""}${c.significant ? "  significant" : ""}`,
      );
    }
  }
  for (const g of report.guardrails ?? []) lines.push(`guardrail ${g.name} (${g.variant}): ${g.ok ? "ok" : "BREACHED"}${g.detail ? ` — ${g.detail}` : ""}`);
  return lines;
}

/** Config for the demo: the example file, on its own experiment name, store and ports. */
function demoConfig(root: string, engine: "docker" | "process", storeFile: string, opts: DemoOptions): Config {
  const file = join(root, "examples", "recommender", engine === "docker" ? "abgate.yaml" : "abgate.process.yaml");
  const env = {
    ...process.env,
    ABGATE_STORE: `sqlite:${storeFile}`,
    ABGATE_LISTEN: opts.listen ?? "127.0.0.1:0",
    ABGATE_ADMIN_LISTEN: opts.adminListen ?? "127.0.0.1:0",
    ABGATE_PORT_BASE: String(opts.portBase ?? 9100),
  };
  const base = parseConfig(readFileSync(file, "utf8"), dirname(file), env);
  const experiment = opts.experiment ?? "recommender-demo";
  return { ...base, experiment, salt: experiment, logLevel: "warn" };
}

async function waitForExposures(adminUrl: string, token: string, atLeast: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    try {
      const res = await fetch(new URL("/v1/experiment", adminUrl), { headers: { authorization: `Bearer ${token}` } });
      const body = (await res.json()) as { counts?: { exposures?: number } };
      if ((body.counts?.exposures ?? 0) >= atLeast) return;
    } catch {
      // the admin API is ours and local: keep asking until the deadline
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Run the demo; resolves with the simulation counts and the report once everything is cleaned up. */
export async function demo(opts: DemoOptions = {}): Promise<DemoResult> {
  const out = opts.out ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const started = Date.now();
  const root = packageRoot();
  const docker = opts.engine === "process" ? undefined : await findDocker(opts, root, out);
  const kind = docker ? "docker" : "process";
  const work = mkdtempSync(join(tmpdir(), "abgate-demo-"));
  const config = demoConfig(root, kind, join(work, "demo.db"), opts);
  const { createLogger } = await import("../log/index.ts");
  // errors only (a crash loop, say): health transitions while replicas boot would drown the story
  const log = createLogger("error", { experiment: config.experiment });
  const engineLog = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => log[level](fields ?? {}, msg);

  let engine: Engine;
  if (docker) {
    await ensureBaseImage(docker, root, out);
    const { DockerEngine } = await import("../engines/docker/index.ts");
    engine = new DockerEngine(config, { docker, log: engineLog });
  } else {
    const { createEngine } = await import("../engines/index.ts");
    engine = await createEngine(config, { log: engineLog });
  }
  const { startGateway } = await import("../gateway.ts");
  // (before the gateway's store starts its threads)
  const { tuneGcForServing } = await import("./gc-threads.ts");
  tuneGcForServing();
  let gateway: Awaited<ReturnType<typeof startGateway>> | undefined;
  try {
    out(`\n== 1. ${kind === "docker" ? "build the two model images and start" : "start"} 2 replicas of each (engine: ${kind})`);
    await engine.start((line) => {
      // the builder's per-step chatter is noise here; steps, results and replica starts are the story
      if (/ ---> |Removing intermediate|Running in /.test(line)) return;
      out(`  ${line}`);
    });
    gateway = await startGateway(config, { engine, log, onGeneratedToken: () => {} });
    const ids = engine.endpoints().map((e) => e.id);
    await gateway.health.waitHealthy(ids, opts.healthTimeoutMs ?? 60_000);
    out(`  ${ids.length} replicas healthy after ${((Date.now() - started) / 1000).toFixed(1)} s; proxy ${gateway.proxyUrl}, admin ${gateway.adminUrl}`);

    // Warm every replica directly (not through the proxy, so nothing is recorded): JIT compilation of a fresh
    // Node process would otherwise land in the first requests' latency and sway the latency guardrail.
    await Promise.all(
      engine.endpoints().map(async (e) => {
        for (let i = 0; i < 100; i++) {
          await fetch(`http://${e.host}:${e.port}/recommend?user=warm-up-${i}&k=10`).then((r) => r.arrayBuffer()).catch(() => undefined);
        }
      }),
    );

    // 3,000 users: with 2,000 the always-valid p-value the decision waits for was ~0.001 in most runs but 0.063 in one
    // of about ten (the users' requests interleave differently each run), and the demo then ended without a winner.
    const users = opts.users ?? 3000;
    const requests = opts.requests ?? users * 3;
    out(`\n== 2. simulate ${users} users making ${requests} requests (sticky 50/50 split; each user watches a movie with a probability set by their hidden taste)`);
    const simulation = await simulate({
      proxyUrl: gateway.proxyUrl,
      adminUrl: gateway.adminUrl,
      token: gateway.adminToken,
      users,
      requests,
      durationMs: opts.durationMs ?? 90_000,
      concurrency: opts.concurrency ?? 16,
      seed: opts.seed ?? 7,
      onProgress: (p) => {
        const parts = Object.entries(p.byVariant)
          .sort(([a], [b]) => (a < b ? -1 : 1))
          .map(([n, v]) => `${n} ${v.requests} req, ${v.units ? pct(v.convertedUnits / v.units) : "-"} converted`);
        out(`  ${p.requests}/${requests} requests, ${p.failed} failed, ${p.watched} watched  |  ${parts.join("  |  ")}`);
      },
      progressEveryMs: 2000,
    });
    out("");
    for (const l of variantLines(simulation)) out(`  ${l}`);
    if (simulation.failed) out(`  ${simulation.failed} requests failed, e.g. ${simulation.failures[0]}`);

    out("\n== 3. the report (GET /v1/report)");
    await waitForExposures(gateway.adminUrl, gateway.adminToken, simulation.ok, 10_000);
    const res = await fetch(new URL("/v1/report", gateway.adminUrl), { headers: { authorization: `Bearer ${gateway.adminToken}` } });
    const report = (await res.json()) as ReportShape;
    if (!res.ok) throw new AbgateError(`GET /v1/report answered ${res.status}: ${JSON.stringify(report)}`, "ABGATE_ERR_DEMO");
    const stats = (await import("../stats/index.ts")) as { formatReportTable?: (r: unknown) => string };
    const lines = typeof stats.formatReportTable === "function" ? stats.formatReportTable(report).split("\n") : plainReport(report, config.control);
    for (const l of lines) out(`  ${l}`);
    const d = report.decision;
    const winner = d?.action === "promote" ? d.variant : undefined;
    out(
      winner
        ? `\n  winner: ${winner} (${config.variants.find((v) => v.name === winner)?.env.MODEL ?? ""}) — ${d?.reason ?? ""}`
        : `\n  decision: ${d?.action ?? "none"}${d?.variant ? ` ${d.variant}` : ""}${d?.reason ? ` — ${d.reason}` : ""}`,
    );
    return { engine: kind, simulation, report, winner, elapsedMs: Date.now() - started };
  } finally {
    out(`\n== 4. clean up`);
    await gateway?.stop().catch((err) => out(`  stopping the gateway: ${(err as Error).message}`));
    await engine.stop().catch((err) => out(`  stopping the engine: ${(err as Error).message}`));
    rmSync(work, { recursive: true, force: true });
    out(`  ${kind === "docker" ? "containers removed" : "processes stopped"}; demo took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
}

