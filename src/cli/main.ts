import { Command, CommanderError, InvalidArgumentError as CommanderArgumentError, Option } from "commander";
import { loadConfig, type Config } from "../config/index.ts";
import { AbgateError, ConfigError, exitCodeFor, InvalidArgumentError } from "../errors.ts";
import { fallbackOutcome, startGateway, type Gateway } from "../gateway.ts";
import type { HealthTracker } from "../health/index.ts";
import { configuredReplicas, createEngine } from "../engines/index.ts";
import type { Engine } from "../engines/types.ts";
import { createLogger } from "../log/index.ts";
import { openStore } from "../store/index.ts";
import { experimentReport } from "../admin/report.ts";
import { adminCall, adminTarget, answers, refusedHost, type AdminTarget, type ExperimentAnswer } from "./admin-client.ts";
import { textTable } from "./table.ts";
import { tuneGcForServing } from "./gc-threads.ts";

const program = new Command();
/** How far into up's health wait a crash-looping replica may still become healthy before the wait ends (see up). */
const CRASH_LOOP_GRACE_MS = 30_000;

program
  .name("abgate")
  .description("A/B experiments between containerised model services: build, run, route, measure, decide.")
  .version("0.1.0")
  .exitOverride()
  .showHelpAfterError("(run abgate --help for usage)");

const configOption = () => new Option("-c, --config <file>", "experiment config file").default("abgate.yaml");

/**
 * An option's value as a whole number from `min` to `max` (commander then reports a bad one as a usage error, exit
 * 2). A timer's longest delay is 2^31 - 1 ms: Node fires a longer one after 1 ms.
 */
function wholeNumber(min: number, also: readonly string[] = [], max = 2 ** 31 - 1): (value: string) => string {
  return (value) => {
    if (also.includes(value) || (/^\d+$/.test(value) && Number(value) >= min && Number(value) <= max)) return value;
    throw new CommanderArgumentError(`expected a whole number from ${min} to ${max}${also.length ? ` or ${also.map((a) => `"${a}"`).join(", ")}` : ""}, got "${value}"`);
  };
}

function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

/**
 * The signals that stop a serving abgate. SIGHUP (the terminal closed, the ssh session dropped) too: its default
 * action kills Node at once, without the `exit` event or a drain (process replicas would then be stopped only by
 * the reaper, without their requests finishing).
 */
const STOP_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** Resolve when one of STOP_SIGNALS arrives (once). */
function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      for (const s of STOP_SIGNALS) process.removeListener(s, on);
      resolve(sig);
    };
    for (const s of STOP_SIGNALS) process.on(s, on);
  });
}

/**
 * A serving process must not die on one bad request's bug: log an unexpected exception or rejection with its
 * stack and keep serving. (Errors that are expected are handled where they happen; this is the last line.)
 */
function guardServing(log: ReturnType<typeof createLogger>): void {
  process.on("uncaughtException", (err) => log.error({ err }, "unexpected exception (kept serving)"));
  process.on("unhandledRejection", (err) => log.error({ err }, "unhandled rejection (kept serving)"));
}

/**
 * Serve until a stop signal, then drain. A second signal during the drain means "now": `hard`, by default exit 1
 * (process.exit still runs the process engine's `exit` hook, which kills the replicas).
 */
async function serveUntilSignal(
  gw: Gateway,
  log: ReturnType<typeof createLogger>,
  {
    signalled = untilSignal(),
    hard = () => {
      // (said, not a silent exit 1: what the second signal gives up is what the drain was for)
      log.warn("second signal: exiting now, without finishing the drain: requests in flight are cut, and exposures not yet written are lost");
      process.exit(1);
    },
    engine,
  }: { signalled?: Promise<NodeJS.Signals>; hard?: () => void; engine?: Engine } = {},
): Promise<"signal" | "removed"> {
  guardServing(log);
  // The replicas removed from outside (`abgate down` in another terminal): serving on would only answer 503s.
  let unsubscribe = () => {};
  const removed = new Promise<string>((resolve) => (unsubscribe = engine?.onRemoved?.(resolve) ?? unsubscribe));
  const why = await Promise.race([signalled.then((sig) => ({ sig })), removed.then((reason) => ({ reason }))]);
  unsubscribe();
  if ("sig" in why) log.info({ signal: why.sig }, "signal received: draining");
  else log.warn(`${why.reason}: draining and stopping`);
  for (const s of STOP_SIGNALS) process.once(s, hard);
  await gw.stop();
  for (const s of STOP_SIGNALS) process.removeListener(s, hard);
  return "sig" in why ? "signal" : "removed";
}

program
  .command("serve")
  .description("serve against endpoints that already run (static, process, or containers found by label)")
  .addOption(configOption())
  .action(async (opts: { config: string }) => {
    const config = loadConfig(opts.config);
    tuneGcForServing();
    // (serve builds nothing: it adopts containers that run)
    await assertLocalPaths(config, { builds: false });
    // Before any replica is started (process engine) or adopted: a second serve of a running experiment.
    await assertListenersFree(config);
    await assertStoreOpens(config);
    const log = createLogger(config.logLevel, { experiment: config.experiment });
    const signalled = untilSignal();
    let engine;
    if (runsContainers(config)) {
      engine = await createEngine(config, { adopt: true, log: (l, m, f) => log[l](f ?? {}, m) });
      await engine.start((line) => log.info(line));
    }
    const gw = await startGateway(config, { log, engine, onProgress: (line) => log.info(line) });
    out(`abgate: experiment ${config.experiment} — proxy ${gw.proxyUrl}, admin ${gw.adminUrl}`);
    await serveUntilSignal(gw, log, { signalled, engine });
    if (engine) await engine.stop();
  });

program
  .command("up")
  .description("build images, start every replica, wait until healthy, serve; Ctrl-C removes the containers")
  .addOption(configOption())
  .option("--wait-timeout <ms>", "how long to wait for replicas to become healthy", wholeNumber(1), "120000")
  .action(async (opts: { config: string; waitTimeout: string }) => {
    const config = loadConfig(opts.config);
    tuneGcForServing();
    const log = createLogger(config.logLevel, { experiment: config.experiment });
    await assertLocalPaths(config);
    // Before anything is built or removed: starting removes the experiment's stale containers, and when the ports
    // are taken because the experiment already runs (another `up` or `serve`), that took its replicas away and then
    // failed to listen.
    await assertListenersFree(config);
    await assertStoreOpens(config);
    const engine = await createEngine(config, { log: (l, m, f) => log[l](f ?? {}, m) });
    const started = Date.now();
    // Signals are caught from the first moment: Ctrl-C during a build or the health wait must still remove
    // whatever containers were started.
    const signalled = untilSignal();
    const interrupted = signalled.then((sig) => {
      throw Object.assign(new Error(`interrupted by ${sig} while starting; replicas removed`), { code: "ABGATE_ERR_INTERRUPTED" });
    });
    let gw: Gateway | undefined;
    /** the gateway's health tracker, once it has one (the wait below runs before the gateway is returned) */
    let health: HealthTracker | undefined;
    /** why the replicas went during the health wait, when they were removed from outside (`abgate down`) */
    let removedWhileStarting: string | undefined;
    try {
      const starting = engine.start((line) => out(line));
      // After an interrupt it goes on in the background until its next step sees the engine stopped, and rejects.
      starting.catch(() => undefined);
      await Promise.race([starting, interrupted]);
      // The proxy listens only once the replicas are healthy (beforeServing): before, every client got a 503, which
      // was recorded as an exposure. (Not raced with the interrupt: the wait is, and the gateway then stops itself
      // before this rejects, its store closed whole.)
      gw = await startGateway(config, {
        log,
        engine,
        beforeServing: async (tracker) => {
          health = tracker;
          // Every replica of the config, not only those running now: a variant whose command is missing, or a
          // replica between two crashes, made the wait pass with "all 2 replicas healthy" out of 4.
          const ids = [...new Set([...engine.endpoints().map((e) => e.id), ...configuredReplicas(config).map((r) => r.id)])];
          out(`waiting for ${ids.length} replicas to become healthy...`);
          // Progress while waiting (the SPEC's long work shows progress): a line each time the count changes.
          let healthy = -1;
          const report = () => {
            const now = ids.filter((id) => tracker.isHealthy(id)).length;
            if (now !== healthy && now < ids.length) out(`${now}/${ids.length} replicas healthy`);
            healthy = now;
          };
          report();
          const unsubscribe = tracker.onChange(report);
          // `abgate down` meanwhile: nothing is left to wait for (it waited out --wait-timeout, then exited 1).
          let unsubscribeRemoved = () => {};
          const removed = new Promise<void>((resolve) => {
            unsubscribeRemoved = engine.onRemoved?.((why) => {
              removedWhileStarting = why;
              resolve();
            }) ?? unsubscribeRemoved;
          });
          // A replica found crash-looping is said so at once, with what it printed; if it is still not healthy
          // CRASH_LOOP_GRACE_MS into the wait, the wait ends there rather than after --wait-timeout (120 s of "died"
          // lines, then only "not running"). Not at once: a replica that exits until its database is up gets that long.
          const waitStartedMs = Date.now();
          const graceTimers: ReturnType<typeof setTimeout>[] = [];
          /** the last crash-loop report of each replica that sent one */
          const lastDetail = new Map<string, string>();
          let unsubscribeCrashLoop = () => {};
          const crashLooping = new Promise<never>((_resolve, reject) => {
            unsubscribeCrashLoop =
              engine.onCrashLoop?.((replica, detail) => {
                if (tracker.isHealthy(replica)) return;
                const first = !lastDetail.has(replica);
                lastDetail.set(replica, detail);
                if (!first) return;
                out(`replica ${replica} is crash-looping: ${detail}`);
                const judge = () => {
                  if (tracker.isHealthy(replica)) return;
                  reject(new AbgateError(`replica ${replica} is crash-looping and not healthy ${Math.round((Date.now() - waitStartedMs) / 1000)} s into the health wait: ${lastDetail.get(replica)}`, "ABGATE_ERR_CRASH_LOOP"));
                };
                graceTimers.push(setTimeout(judge, Math.max(0, waitStartedMs + CRASH_LOOP_GRACE_MS - Date.now())));
              }) ?? unsubscribeCrashLoop;
          });
          crashLooping.catch(() => undefined);
          try {
            await Promise.race([tracker.waitHealthy(ids, Number(opts.waitTimeout)), interrupted, removed, crashLooping]);
          } finally {
            unsubscribe();
            unsubscribeRemoved();
            unsubscribeCrashLoop();
            for (const t of graceTimers) clearTimeout(t);
          }
          if (removedWhileStarting !== undefined) throw new Error(removedWhileStarting);
          out(`all ${ids.length} replicas healthy in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        },
      });
      out(`abgate: experiment ${config.experiment} — proxy ${gw.proxyUrl}, admin ${gw.adminUrl}`);
    } catch (err) {
      interrupted.catch(() => undefined);
      if (removedWhileStarting !== undefined) {
        // As when they are removed while it serves: it stops, exit 0 (the gateway already stopped itself).
        log.warn(`${removedWhileStarting}: stopping`);
        await engine.stop();
        out("the experiment's replicas were removed outside abgate; abgate stopped");
        return;
      }
      // Not healthy in time: say how the replicas that do not run ended (read before they are stopped).
      if ((err as AbgateError).code === "ABGATE_ERR_HEALTH_TIMEOUT" && engine.lastExit) {
        const ended = configuredReplicas(config).flatMap((r) => {
          const how = health?.isHealthy(r.id) ? undefined : engine.lastExit!(r.id);
          return how !== undefined ? [`  ${r.id}: ${how}`] : [];
        });
        if (ended.length > 0) (err as Error).message += `\n${ended.join("\n")}`;
      }
      // (the gateway's stop too: a second Ctrl-C during it must kill the replicas, not leave them)
      await removingReplicas(config, async () => {
        await gw?.stop();
        await engine.stop();
      });
      throw err;
    }
    interrupted.catch(() => undefined);
    const stoppedBy = await serveUntilSignal(gw, log, { signalled, hard: () => killReplicasAndExit(config), engine });
    if (stoppedBy === "removed") {
      await engine.stop();
      out("the experiment's replicas were removed outside abgate; abgate stopped");
      return;
    }
    out("removing the experiment's replicas... (press Ctrl-C again to kill them now)");
    await removingReplicas(config, () => engine.stop());
    if (!killedOnSignal) out("removed; abgate stopped");
  });

/** Set once the replicas were killed on a second signal: the stop was not graceful, so abgate exits 1. */
let killedOnSignal = false;

/** Kill the experiment's replicas without waiting for them to exit on SIGTERM, then exit 1. */
function killReplicasAndExit(config: Config): void {
  killedOnSignal = true;
  out("killing the experiment's replicas now...");
  const kill = runsContainers(config) ? import("./docker-commands.ts").then(({ down }) => down(config, { stopTimeoutS: 0, out: () => {} })) : Promise.resolve(0);
  void kill.catch(() => 0).finally(() => process.exit(1));
}

/**
 * Runs the removal of the experiment's replicas, which waits for each to exit on SIGTERM (up to its stop timeout;
 * a server running as PID 1 often ignores SIGTERM). A signal meanwhile (a second Ctrl-C) kills them at once and
 * exits 1, as docker compose does; it used to exit at once and leave them all behind.
 */
async function removingReplicas(config: Config, remove: () => Promise<void>): Promise<void> {
  // Only this process's own handlers are on these signals (untilSignal's, when the start was interrupted).
  for (const s of STOP_SIGNALS) process.removeAllListeners(s);
  const killNow = () => killReplicasAndExit(config);
  for (const s of STOP_SIGNALS) process.once(s, killNow);
  try {
    await remove();
  } finally {
    for (const s of STOP_SIGNALS) process.removeListener(s, killNow);
  }
}

/**
 * A config error (exit 2) naming the key when a folder the replicas need is missing: a build context or its
 * Dockerfile (`variants[i].build`), or a process replica's working folder (`variants[i].cwd`, which spawn reported
 * as the command missing: "spawn node ENOENT"). Not part of loading the config: `down`, `ps`, `logs` and `report`
 * must still work after a model's folder is gone.
 */
async function assertLocalPaths(config: Config, { builds = true } = {}): Promise<void> {
  const issues: { path: string; message: string }[] = [];
  if (builds && runsContainers(config)) {
    const { buildContextIssues } = await import("../engines/docker/context.ts");
    issues.push(...buildContextIssues(config.variants));
  }
  if (config.engine === "process") {
    const { statSync } = await import("node:fs");
    const isFolder = (path: string) => {
      try {
        return statSync(path).isDirectory();
      } catch {
        return false; // missing, a file on the way (ENOTDIR), no permission
      }
    };
    const { resolveCommand } = await import("../engines/process/command.ts");
    config.variants.forEach((v, i) => {
      if (v.cwd !== undefined && !isFolder(v.cwd)) {
        issues.push({ path: `variants[${i}].cwd`, message: `an existing folder; ${v.cwd} is not one` });
        return;
      }
      // A command that cannot run made `up` wait out its whole health timeout (120 s) for replicas that never start.
      const command = v.command?.[0];
      const path = v.env.PATH ?? process.env.PATH;
      if (command !== undefined && resolveCommand(command, v.cwd ?? process.cwd(), path) === undefined) {
        const where = command.includes("/") ? `no executable file ${command}${v.cwd ? ` (from ${v.cwd})` : ""}` : `no executable ${command} in PATH`;
        issues.push({ path: `variants[${i}].command`, message: `a command that can run; there is ${where}` });
      }
    });
  }
  if (issues.length > 0) throw new ConfigError(issues);
}

/**
 * Opens (and migrates) the store before any image is built or replica started: a store: that is not a database,
 * or a PostgreSQL that refuses, failed only once the replicas ran, leaving them to be stopped again.
 */
async function assertStoreOpens(config: Config): Promise<void> {
  const store = openStore(config.store);
  try {
    await store.init();
  } finally {
    await store.close().catch(() => {});
  }
}

/** Fails (exit 1) when the proxy's or the admin listener's address cannot be bound, naming it and the likely cause. */
async function assertListenersFree(config: Config): Promise<void> {
  const { createServer } = await import("node:net");
  for (const [key, at] of [["listen", config.listen], ["admin.listen", config.admin.listen]] as const) {
    if (at.port === 0) continue;
    await new Promise<void>((resolve, reject) => {
      const server = createServer();
      server.once("error", (err: NodeJS.ErrnoException) => {
        const why = err.code === "EADDRINUSE" ? "is in use: is this experiment already running (abgate up or serve)?" : `cannot be listened on (${err.code ?? err.message})`;
        reject(new AbgateError(`${key} ${at.host}:${at.port} ${why} Nothing was started or removed.`, "ABGATE_ERR_LISTEN", { cause: err }));
      });
      server.listen({ host: at.host, port: at.port }, () => server.close(() => resolve()));
    });
  }
}

/**
 * Whether the engine's replicas are containers, which `ps`, `logs` and `down` find through Docker by label and
 * `serve` adopts; static endpoints are not abgate's, and process replicas live only inside the abgate serving them.
 */
function runsContainers(config: Config): boolean {
  return config.engine === "docker" || config.engine === "swarm";
}

program
  .command("down")
  .description("remove the experiment's containers")
  .addOption(configOption())
  .action(async (opts: { config: string }) => {
    const config = loadConfig(opts.config);
    if (!runsContainers(config)) {
      // Static endpoints are not abgate's, and process replicas are its children, stopped when it stops (even by a
      // SIGKILL: see ProcessReaper). Asking Docker would only fail on a machine without it.
      out(
        `engine ${config.engine} runs no containers: nothing to remove` +
          (config.engine === "process" ? " (process replicas stop with the abgate that started them, even after a kill -9 of it)" : ""),
      );
      return;
    }
    const { down } = await import("./docker-commands.ts");
    await down(config);
  });

program
  .command("ps")
  .description("replicas, ports and health")
  .addOption(configOption())
  .option("--admin <url>", "static and process engines: admin API URL of the running abgate (default: from the config's admin.listen)")
  .action(async (opts: { config: string; admin?: string }) => {
    const config = loadConfig(opts.config);
    if (!runsContainers(config)) {
      // No containers to find by label: process replicas exist only inside a running abgate, and only it
      // knows their health (and that of static endpoints), so ask it rather than needing Docker.
      const view = await runningExperiment(adminTarget(config, { admin: opts.admin }), config);
      out(formatReplicaTable(view.variants.flatMap((v) => v.replicas)) || `no replicas of experiment ${config.experiment}`);
      return;
    }
    const { ps } = await import("./docker-commands.ts");
    await ps(config);
  });

/** `abgate ps` for the static and process engines: the running gateway's view of each replica. */
function formatReplicaTable(replicas: { id: string; address: string; health: string; checks?: string; outstanding?: number }[]): string {
  if (replicas.length === 0) return "";
  // CHECKS passive: a static URL without health:, "healthy" until requests to it fail (an older abgate: "-")
  return textTable(["REPLICA", "ADDRESS", "HEALTH", "CHECKS", "IN-FLIGHT"], replicas.map((r) => [r.id, r.address, r.health, r.checks ?? "-", String(r.outstanding ?? "-")]));
}

program
  .command("logs <variant>")
  .description("container logs of a variant, each line prefixed by its replica")
  .addOption(configOption())
  .option("-f, --follow", "keep following")
  .option("--tail <n>", "lines from the end of each replica's log", wholeNumber(0, ["all"]), "all")
  .action(async (variant: string, opts: { config: string; follow?: boolean; tail: string }) => {
    const config = loadConfig(opts.config);
    if (!config.variants.some((v) => v.name === variant)) {
      throw new InvalidArgumentError(`unknown variant "${variant}" (the config has ${config.variants.map((v) => v.name).join(", ")})`);
    }
    if (!runsContainers(config)) {
      // Nothing to show, as docker's "no containers of variant" is, and as `down` says "nothing to remove": exit 0.
      // The reason goes to stderr, so that `abgate logs control > file` holds only log lines.
      process.stderr.write(
        config.engine === "static"
          ? `abgate logs shows container logs; engine static proxies to endpoints abgate does not run, so their logs are wherever those services write them\n`
          : `abgate logs shows container logs; engine process keeps each replica's last lines in the serving abgate, which logs them when a replica crash-loops (run the command by hand to see all its output)\n`,
      );
      return;
    }
    const { logs } = await import("./docker-commands.ts");
    await logs(config, variant, { follow: Boolean(opts.follow), tail: opts.tail === "all" ? undefined : Number(opts.tail) });
  });

program
  .command("report")
  .description("the analysis: which variant wins, how sure, what to do")
  .addOption(configOption())
  .option("--json", "print the report as JSON")
  .option("--writable", "open the store writable: migrate an older schema, and record the report's state (sequential p-values, weights seen) as GET /v1/report does")
  .action(async (opts: { config: string; json?: boolean; writable?: boolean }) => {
    const config = loadConfig(opts.config);
    if (config.store.startsWith("sqlite:")) {
      // A writable open (--writable) would create it, folders included: a typo in store: then read as "No exposures
      // yet". (A read-only open refuses it too, but this says where a store comes from.)
      const { existsSync } = await import("node:fs");
      const path = config.store.slice("sqlite:".length);
      if (path !== ":memory:" && !existsSync(path)) {
        throw new AbgateError(`no SQLite store at ${path}: abgate up or serve creates it when it starts (is the config's store: right?)`, "ABGATE_ERR_NO_STORE");
      }
    }
    // Read-only unless asked: the store may be a copy on a read-only mount, a file this user may only read, or a
    // PostgreSQL role with SELECT rights alone, and a report should not change what it reads (no migration, no
    // checkpoint, no state saved; see experimentReport for what not saving its state means).
    const store = openStore(config.store, { readOnly: !opts.writable });
    try {
      await store.init();
      const saved = await store.getState(config.experiment, "strategy");
      const weights: Record<string, number> = saved
        ? ((JSON.parse(saved) as { weights: Record<string, number> }).weights ?? {})
        : Object.fromEntries(config.variants.map((v) => [v.name, v.weight]));
      const report = await experimentReport(config, store, weights, Date.now(), { save: Boolean(opts.writable) });
      if (opts.json) out(JSON.stringify(report, null, 2));
      else {
        const { formatReportTable } = await import("../stats/index.ts");
        out(formatReportTable(report as Parameters<typeof formatReportTable>[0]));
      }
    } finally {
      await store.close();
    }
  });

function adminOptions(cmd: Command): Command {
  return cmd
    .addOption(configOption())
    .option("--admin <url>", "admin API URL (default: from the config's admin.listen)")
    .option("--token <token>", "admin token (default: $ABGATE_ADMIN_TOKEN or the config's admin.token)");
}

/**
 * The running abgate's view of its experiment, read (without the token) before anything is changed: it shows that
 * what answers is an abgate admin API, not a model behind the proxy's port that the token would be sent to, and
 * that it runs the config's experiment, not another one a mistyped --admin or a shared port leads to.
 */
async function runningExperiment(target: AdminTarget, config: Config | undefined): Promise<ExperimentAnswer> {
  // Without the token first: it goes only to a server that answered as abgate's admin API. One that refuses the Host
  // (a name outside admin.allowedHosts, such as a reverse proxy's) answered so, and passes requests with the token.
  let view: ExperimentAnswer;
  try {
    view = await adminCall({ adminUrl: target.adminUrl }, "GET", "/v1/experiment", answers.experiment);
  } catch (err) {
    if (!refusedHost(err) || target.token === undefined) throw err;
    view = await adminCall(target, "GET", "/v1/experiment", answers.experiment);
  }
  if (config !== undefined && view.experiment !== config.experiment) {
    throw new AbgateError(`the abgate at ${target.adminUrl} runs experiment ${view.experiment}, not ${config.experiment}: nothing was changed`, "ABGATE_ERR_WRONG_EXPERIMENT");
  }
  return view;
}

/** Load the config when the file exists; the admin commands can also run with --admin alone. */
function maybeConfig(file: string, explicit: boolean): Config | undefined {
  try {
    return loadConfig(file);
  } catch (err) {
    if (!explicit && err instanceof ConfigError && /cannot read config file/.test(err.message)) return undefined;
    throw err;
  }
}

adminOptions(program.command("weights <assignments...>").description("set weights of a running experiment: abgate weights control=20 treatment=80")).action(
  async (assignments: string[], opts: { config: string; admin?: string; token?: string }, cmd: Command) => {
    const weights: Record<string, number> = {};
    const given = new Map<string, string>();
    for (const a of assignments) {
      const m = /^([a-z0-9][a-z0-9_-]*)=([0-9]+(\.[0-9]+)?)$/.exec(a);
      if (!m) throw new InvalidArgumentError(`"${a}": expected variant=weight, e.g. control=20`);
      // The last one won silently: `control=5 ... control=7` is a slip, and which was meant only the user knows.
      const before = given.get(m[1]);
      if (before !== undefined) throw new InvalidArgumentError(`variant ${m[1]} is given twice (${before} and ${a}): give each variant once`);
      given.set(m[1], a);
      weights[m[1]] = Number(m[2]);
    }
    const config = maybeConfig(opts.config, cmd.getOptionValueSource("config") === "cli");
    const target = adminTarget(config, opts);
    const view = await runningExperiment(target, config);
    const res = await adminCall(target, "PUT", "/v1/weights", answers.weights, weights);
    const set = Object.entries(res.weights);
    out(`weights: ${set.map(([name, weight]) => `${name}=${weight}`).join(" ")}`);
    warnUnservable(view, set.filter(([, weight]) => weight > 0).map(([name]) => name));
  },
);

adminOptions(program.command("promote <variant>").description("send all traffic to a variant")).action(
  async (variant: string, opts: { config: string; admin?: string; token?: string }, cmd: Command) => {
    const config = maybeConfig(opts.config, cmd.getOptionValueSource("config") === "cli");
    const target = adminTarget(config, opts);
    const view = await runningExperiment(target, config);
    const res = await adminCall(target, "POST", "/v1/promote", answers.promote, { variant });
    out(`promoted ${res.promoted}: it now gets all traffic`);
    warnUnservable(view, [res.promoted]);
  },
);

/**
 * As Flagger would refuse to: say so when a variant that now gets traffic (by promote, rollback or weights) has no
 * healthy replica to serve it, and what happens to its requests meanwhile.
 */
function warnUnservable(view: ExperimentAnswer, variants: string[]): void {
  const healthy = (name: string | undefined) => view.variants.some((v) => v.name === name && v.replicas.some((r) => r.health === "healthy"));
  for (const name of variants) {
    const variant = view.variants.find((v) => v.name === name);
    if (variant === undefined || healthy(name)) continue;
    const replicas = variant.replicas.length ? variant.replicas.map((r) => `${r.id} ${r.health}`).join(", ") : "none";
    const fallback = view.fallback ?? "reject";
    process.stderr.write(`abgate: warning: ${name} has no healthy replica (${replicas}): until one is, ${fallbackOutcome(name, fallback, healthy(fallback))}\n`);
  }
}

adminOptions(program.command("rollback").description("send all traffic to the control")).action(
  async (opts: { config: string; admin?: string; token?: string }, cmd: Command) => {
    const config = maybeConfig(opts.config, cmd.getOptionValueSource("config") === "cli");
    const target = adminTarget(config, opts);
    const view = await runningExperiment(target, config);
    const res = await adminCall(target, "POST", "/v1/rollback", answers.rollback);
    out(`rolled back: all traffic to ${res.rolledBackTo}`);
    warnUnservable(view, [res.rolledBackTo]);
  },
);

program
  .command("validate")
  .description("check a config file")
  .addOption(configOption())
  .action(async (opts: { config: string }) => {
    const config = loadConfig(opts.config);
    await assertLocalPaths(config);
    out(
      `ok: experiment ${config.experiment}, engine ${config.engine}, strategy ${config.strategy.kind}, ` +
        `variants ${config.variants.map((v) => `${v.name} (weight ${v.weight}, ${v.replicas} replica${v.replicas === 1 ? "" : "s"})`).join(", ")}, ` +
        `${config.metrics.length} metric${config.metrics.length === 1 ? "" : "s"}`,
    );
  });

async function main(argv: string[]): Promise<number> {
  // Late-registered commands (simulate, demo) live with the container code.
  try {
    const { registerDemoCommands } = (await import("./demo-commands.ts")) as { registerDemoCommands(p: Command): void };
    registerDemoCommands(program);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ERR_MODULE_NOT_FOUND") throw err;
  }
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // help and version exit 0; usage errors exit 2 (commander already printed the message)
      return err.exitCode === 0 ? 0 : 2;
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`abgate: config error\n${err.message.split("\n").map((l) => `  ${l}`).join("\n")}\n`);
    } else {
      const e = err as Error & { code?: string; output?: string };
      process.stderr.write(`abgate: ${e.message}${e.output ? `\n${e.output}` : ""}\n`);
      if (process.env.ABGATE_DEBUG) process.stderr.write(`${e.stack}\n`);
    }
    return exitCodeFor(err);
  }
}

// `abgate up | head -1`: once the reader is gone, every later line fails with EPIPE, which crashed the command with
// a stack trace (or, once serving, logged one per line). The lines have nowhere to go; the work goes on, as with
// stdout sent to /dev/null.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE") throw err;
  });
}

const done = await main(process.argv);
// (the graceful removal may finish first, once the kill has made the replicas exit)
const code = killedOnSignal && done === 0 ? 1 : done;
// Commands that serve return after their drain; the rest end here. Exit explicitly so that no stray handle
// (a keep-alive socket, a docker event stream) keeps a finished command alive.
process.exitCode = code;
if (process.env.ABGATE_NO_EXIT !== "1") setImmediate(() => process.exit(code));
