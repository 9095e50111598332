import { Option, type Command } from "commander";
import { loadConfig } from "../config/index.ts";
import { AbgateError, InvalidArgumentError } from "../errors.ts";

/** `abgate simulate` and `abgate demo`, registered by main.ts (they live with the container code). */
export function registerDemoCommands(program: Command): void {
  const int = (name: string) => (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--${name} must be a non-negative integer (got "${value}")`);
    return n;
  };
  const out = (line: string): void => void process.stdout.write(`${line}\n`);

  program
    .command("simulate")
    .description("synthetic users: recommendation requests through the proxy plus `watched` outcome events")
    .addOption(new Option("-c, --config <file>", "experiment config file (for the proxy and admin addresses)").default("abgate.yaml"))
    .option("--proxy <url>", "proxy URL (default: from the config's listen)")
    .option("--admin <url>", "admin API URL (default: from the config's admin.listen)")
    .option("--token <token>", "token for POST /v1/events (default: $ABGATE_INGEST_TOKEN, $ABGATE_ADMIN_TOKEN or the config's)")
    .option("--users <n>", "distinct users", int("users"), 1000)
    .option("--requests <n>", "total requests (default: 3 per user)", int("requests"))
    .option("--duration <s>", "stop after this many seconds", int("duration"), 60)
    .option("--concurrency <n>", "requests in flight", int("concurrency"), 16)
    .option("--seed <n>", "random seed", int("seed"), 1)
    .option("--data-dir <dir>", "users.csv and movies.csv from examples/recommender/data/generate.ts")
    .action(async (opts: { config: string; proxy?: string; admin?: string; token?: string; users: number; requests?: number; duration: number; concurrency: number; seed: number; dataDir?: string }) => {
      let proxyUrl = opts.proxy;
      let adminUrl = opts.admin;
      // An empty value means "not set", as for the admin commands (a blank CI variable must not hide the config's).
      let token = opts.token || process.env.ABGATE_INGEST_TOKEN || process.env.ABGATE_ADMIN_TOKEN || undefined;
      // With --proxy and --admin both given the config is not read: it may be another gateway's, and its token must
      // not be sent to these URLs.
      if (!proxyUrl || !adminUrl) {
        const config = loadConfig(opts.config);
        const url = (h: { host: string; port: number }) => `http://${h.host.includes(":") ? `[${h.host}]` : h.host}:${h.port}`;
        proxyUrl ??= url(config.listen);
        adminUrl ??= url(config.admin.listen);
        token ??= config.admin.ingestToken || config.admin.token || undefined;
      }
      const { simulate } = await import("./simulate.ts");
      const total = opts.requests ?? opts.users * 3;
      const r = await simulate({
        proxyUrl,
        adminUrl,
        token,
        users: opts.users,
        requests: total,
        durationMs: opts.duration * 1000,
        concurrency: opts.concurrency,
        seed: opts.seed,
        dataDir: opts.dataDir,
        onProgress: (p) => {
          const parts = Object.entries(p.byVariant).map(([n, v]) => `${n} ${v.requests}`);
          out(`${p.requests}/${total} requests (${p.failed} failed), ${p.watched} watched, ${p.eventsPosted} events posted${parts.length ? `  |  ${parts.join(", ")}` : ""}`);
        },
      });
      for (const [n, v] of Object.entries(r.byVariant).sort(([a], [b]) => (a < b ? -1 : 1))) {
        out(`${n}: ${v.requests} requests, ${v.units} users, ${v.convertedUnits} converted (${v.units ? ((100 * v.convertedUnits) / v.units).toFixed(1) : "0"}%), ${v.minutes.toFixed(0)} minutes watched`);
      }
      out(`done in ${(r.elapsedMs / 1000).toFixed(1)} s: ${r.ok} ok, ${r.failed} failed, ${r.eventsPosted} events posted`);
      if (r.failed) out(`first failure: ${r.failures[0]}`);
      // A run in which nothing got through measured nothing (abgate down, wrong --proxy): a script must see
      // that as a failure (exit 1), not as a simulation that went fine.
      if (r.ok === 0 && total > 0) {
        const why = r.failed > 0 ? `all ${r.failed} requests to ${proxyUrl} failed; first failure: ${r.failures[0]}` : `no request was sent to ${proxyUrl} within --duration ${opts.duration} s`;
        throw new AbgateError(`simulate: no request succeeded (${why})`, "ABGATE_ERR_SIMULATE");
      }
    });

  program
    .command("demo")
    .description("the whole story: two recommender models as containers, simulated users, a live split, a report that names the winner")
    .addOption(new Option("--engine <kind>", "engine to use").choices(["auto", "docker", "process"]).default("auto"))
    // No commander default: demo() owns it, so the command and the function cannot disagree.
    .option("--users <n>", "simulated users (default: 3000)", int("users"))
    .option("--requests <n>", "total requests (default: 3 per user)", int("requests"))
    .option("--duration <s>", "longest simulation, in seconds", int("duration"), 90)
    .option("--port-base <n>", "first replica port", int("port-base"), 9100)
    .action(async (opts: { engine: "auto" | "docker" | "process"; users?: number; requests?: number; duration: number; portBase: number }) => {
      const { demo } = await import("./demo.ts");
      await demo({ engine: opts.engine, users: opts.users, requests: opts.requests, durationMs: opts.duration * 1000, portBase: opts.portBase });
    });
}
