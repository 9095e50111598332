import { closeSync, openSync, readSync } from "node:fs";
import { isIP } from "node:net";
import { dirname, resolve } from "node:path";
import { isPair, isScalar, isSeq, parseDocument, type Scalar, visit } from "yaml";
import { z } from "zod";
import { ConfigError } from "../errors.ts";
import { configSchema, type ParsedConfig, type VariantConfig } from "./schema.ts";

export interface HostPort {
  host: string;
  port: number;
}

/** The validated config, with addresses split and paths made absolute against the config file's folder. */
export interface Config extends Omit<ParsedConfig, "listen" | "admin" | "fallback"> {
  /** a variant name, or "reject" (503) */
  fallback: string;
  listen: HostPort;
  /** tokenVariables: the environment variables the tokens were read from (`token: ${MY_TOKEN}`), kept from replicas */
  admin: { listen: HostPort; token?: string; ingestToken?: string; tokenVariables: string[]; allowedHosts: string[] };
  /** folder of the config file: relative `build`, `cwd` and `sqlite:` paths are resolved against it */
  baseDir: string;
  /** the sticky salt, defaulted to the experiment name */
  salt: string;
  control: string;
}

export function parseHostPort(value: string): HostPort {
  const i = value.lastIndexOf(":");
  let host = value.slice(0, i);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return { host, port: Number(value.slice(i + 1)) };
}

/**
 * Expands the references of ENV_REFERENCE from the environment; `$${` is a literal `${`. An unset name expands to
 * nothing. Throws ConfigError for a `?` reference whose variable is missing.
 */
export function expandEnv(text: string, env: NodeJS.ProcessEnv = process.env): string {
  return text.replace(ENV_REFERENCE, (whole, key: string, op?: string, def?: string) => {
    if (whole.startsWith("$$")) return whole.slice(1);
    const v = envValue(env, key, op, def);
    if (typeof v !== "string") throw new ConfigError([{ path: "", message: v.error }]);
    return v;
  });
}

/** A path component of a Docker image name (distribution's reference grammar): separators between alphanumerics only. */
const DOCKER_PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
/** Docker's limit on a swarm service's name (a DNS label). */
const MAX_SERVICE_NAME_CHARS = 63;

/** A whole value written as docker compose's unbraced reference, `$NAME`. */
const UNBRACED_REFERENCE = /^\$[A-Za-z_][A-Za-z0-9_]*$/;
/** Keys whose value is a secret: one that reads as an unexpanded `$NAME` is refused rather than used as that text. */
const SECRET_KEYS = new Set(["admin.token", "admin.ingestToken", "strategy.salt"]);

/** The key path (`variants[1].env.X`) of key `last` of the mapping at the end of a yaml visitor's `ancestors`. */
function keyPathOf(ancestors: readonly unknown[], last: string): string {
  const parts: (string | number)[] = [];
  for (let i = 0; i < ancestors.length; i++) {
    const node = ancestors[i];
    if (isPair(node) && isScalar(node.key)) parts.push(String(node.key.value));
    else if (isSeq(node)) parts.push(node.items.indexOf(ancestors[i + 1] as never));
  }
  parts.push(last);
  return pathOf(parts);
}

function pathOf(path: PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/** Turn zod issues into `key.path: expected ...` lines; unknown keys are named one by one. */
function issuesOf(err: z.ZodError): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  for (const issue of err.issues) {
    if (issue.code === "unrecognized_keys") {
      for (const k of issue.keys) out.push({ path: pathOf([...issue.path, k]), message: "unknown key" });
    } else if (issue.code === "invalid_key") {
      // (a record's key refused by its schema: say why, not just "Invalid key in record")
      out.push({ path: pathOf(issue.path), message: issue.issues[0]?.message ?? issue.message });
    } else if (issue.code === "invalid_type" && /received undefined/.test(issue.message)) {
      out.push({ path: pathOf(issue.path), message: `required (${issue.message.replace(/^Invalid input: /, "").replace(/, received undefined$/, "")})` });
    } else {
      out.push({ path: pathOf(issue.path), message: issue.message });
    }
  }
  return out;
}

function semanticChecks(cfg: ParsedConfig): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  // Only the docker engine publishes ports on a bridge; swarm services run on the host's network whatever this says.
  if (cfg.network === "bridge" && cfg.engine !== "docker") {
    out.push({ path: "network", message: `host with engine ${cfg.engine} (bridge, with published ports, is for engine docker)` });
  }
  if (cfg.limits.maxEjectionMs !== undefined && cfg.limits.maxEjectionMs < cfg.limits.ejectionMs) {
    out.push({ path: "limits.maxEjectionMs", message: `at least limits.ejectionMs (${cfg.limits.ejectionMs}): it bounds how long ejections in a row grow` });
  }
  const names = new Set<string>();
  cfg.variants.forEach((v: VariantConfig, i) => {
    const at = `variants[${i}]`;
    if (names.has(v.name)) out.push({ path: `${at}.name`, message: `duplicate variant name "${v.name}"` });
    // `fallback: reject` means "answer 503": a variant of that name could never be the fallback.
    if (v.name === "reject") out.push({ path: `${at}.name`, message: `a name other than "reject", which fallback uses to mean "answer 503"` });
    names.add(v.name);
    if (Object.hasOwn(v.env, "PORT")) out.push({ path: `${at}.env.PORT`, message: "not set here: abgate gives each replica its own port in PORT (set variants[].port to choose the first)" });
    // What a replica runs from: which key each engine takes follows from ENGINE_KEYS.
    const sources = SOURCE_KEYS.filter((k) => v[k] !== undefined);
    const allowed = SOURCE_KEYS.filter((k) => readBy(k, cfg.engine));
    const ok = sources.filter((s) => readBy(s, cfg.engine));
    if (ok.length !== 1) {
      out.push({ path: at, message: `engine ${cfg.engine} needs exactly one of ${allowed.join(" or ")} (found ${sources.join(", ") || "none"})` });
    }
    // An image is run as it is: build keys beside it would look as if they were in effect.
    if (v.image !== undefined && v.build === undefined && readBy("image", cfg.engine)) {
      if (Object.keys(v.buildArgs).length > 0) out.push({ path: `${at}.buildArgs`, message: "only with build: an image is run as it is, not built" });
      if (v.dockerfile !== undefined) out.push({ path: `${at}.dockerfile`, message: "only with build: an image is run as it is, not built" });
    }
    // Keys another engine reads are refused, not silently ignored: a `cwd:` or `url:` left from an engine change
    // would otherwise look as if it were in effect.
    const present = (key: (typeof ENGINE_KEYS)[number][0]) =>
      key === "buildArgs" || key === "env" ? Object.keys(v[key]).length > 0 : v[key] !== undefined;
    for (const [key, engines] of ENGINE_KEYS) {
      // (with no single source, the message above already lists the sources found)
      const source = (sources as readonly string[]).includes(key);
      if (!readBy(key, cfg.engine) && present(key) && (ok.length === 1 || !source)) {
        out.push({ path: `${at}.${key}`, message: `not used by engine ${cfg.engine} (it is for engine ${engines.join(" or ")})` });
      }
    }
    // The static engine's own checks, here too, so that `abgate validate` says what `serve` would refuse.
    (v.urls ?? (v.url !== undefined ? [v.url] : [])).forEach((raw, j) => {
      const key = v.urls ? `${at}.urls[${j}]` : `${at}.url`;
      const u = new URL(raw);
      if (u.protocol !== "http:") out.push({ path: key, message: `an http:// URL (got ${JSON.stringify(raw)})` });
      else if (u.pathname !== "/" || u.search || u.hash) out.push({ path: key, message: "an origin without path or query (http://host:port)" });
      // (they would be dropped: the proxy forwards the client's own authorization, and adds none)
      else if (u.username || u.password) out.push({ path: key, message: "an origin without user or password (http://host:port): abgate does not send credentials to replicas" });
      else if (u.port === "0") out.push({ path: key, message: `a port from 1 to 65535 (got ${JSON.stringify(raw)}: port 0 cannot be connected to)` });
      else {
        // A replica at abgate's own address: each request came back through abgate, a loop until the head
        // outgrew maxHeaderBytes (1,472 exposures for one request).
        for (const [listenKey, value] of [["listen", cfg.listen], ["admin.listen", cfg.admin.listen]] as const) {
          if (reachesListener(u, parseHostPort(value))) {
            out.push({ path: key, message: `an endpoint other than abgate's own ${listenKey} (${value}): requests sent there would come back to abgate` });
          }
        }
      }
    });
    if (v.urls && v.replicas !== 1 && v.replicas !== v.urls.length) {
      out.push({ path: `${at}.replicas`, message: `with urls the replica count is the number of urls (${v.urls.length})` });
    }
    // One url is one endpoint: the static engine cannot start more, so `replicas: 3` would silently run one.
    if (v.url !== undefined && v.urls === undefined && v.replicas !== 1) {
      out.push({ path: `${at}.replicas`, message: `1 with url (one endpoint); list several endpoints with urls (got ${v.replicas})` });
    }
    // Names Docker itself would refuse at `up`, after a build ("invalid reference format"), said here instead.
    if (v.build !== undefined && readBy("build", cfg.engine) && !DOCKER_PATH_COMPONENT.test(`${cfg.experiment}-${v.name}`)) {
      out.push({
        path: `${at}.name`,
        message: `a name Docker can use in the image abgate builds (abgate/${cfg.experiment}-${v.name}): end it with a letter or digit, with at most two '_' in a row and none next to '-'`,
      });
    }
    if (cfg.engine === "swarm") {
      // (the service name of its last replica, as engines/docker's containerName makes it)
      const service = `abgate-${cfg.experiment}-${v.name}-${v.replicas - 1}`;
      if (service.length > MAX_SERVICE_NAME_CHARS) {
        out.push({
          path: `${at}.name`,
          message: `a shorter name: with experiment ${cfg.experiment} the swarm service of its replicas (${service}) has ${service.length} characters, and Docker takes at most ${MAX_SERVICE_NAME_CHARS}`,
        });
      }
    }
  });
  for (const [key, value] of [["listen", cfg.listen], ["admin.listen", cfg.admin.listen]] as const) {
    const at = parseHostPort(value);
    if (at.port > 65535) out.push({ path: key, message: `host:port with a port from 0 to 65535 (got ${value})` });
    // (a name may be anything the resolver knows, but four numbers are an IPv4 address or nothing)
    else if (/^\d+(\.\d+){3}$/.test(at.host) && isIP(at.host) === 0) out.push({ path: key, message: `host:port with an IPv4 address of four numbers from 0 to 255 (got ${value})` });
  }
  const proxyAt = parseHostPort(cfg.listen);
  const adminAt = parseHostPort(cfg.admin.listen);
  if (proxyAt.port !== 0 && proxyAt.port === adminAt.port && listenersClash(proxyAt.host, adminAt.host)) {
    out.push({
      path: "admin.listen",
      message: proxyAt.host === adminAt.host ? `an address other than listen's (both are ${cfg.listen})` : `a port other than listen's: ${cfg.admin.listen} and ${cfg.listen} cannot both be listened on`,
    });
  }
  // Replicas of a variant with `port` get port, port+1, ...: none of them may be the proxy's or the admin's port,
  // or the replica and abgate's own listener fight over it (the engines also keep those ports out of `ports.base`).
  if (cfg.engine !== "static") {
    cfg.variants.forEach((v, i) => {
      if (v.port === undefined) return;
      for (const [key, at] of [["listen", proxyAt], ["admin.listen", adminAt]] as const) {
        if (at.port !== 0 && at.port >= v.port && at.port < v.port + v.replicas) {
          const span = v.replicas === 1 ? `port ${v.port}` : `ports ${v.port}-${v.port + v.replicas - 1} (one per replica)`;
          out.push({ path: `variants[${i}].port`, message: `a port other than ${key}'s ${at.port} (this variant's replicas would get ${span})` });
        }
      }
      const last = v.port + v.replicas - 1;
      if (last > 65535) out.push({ path: `variants[${i}].port`, message: `a port that leaves room for ${v.replicas} replicas (one port each) up to 65535; the last would get ${last}` });
      const other = cfg.variants.findIndex((w, j) => j < i && w.port !== undefined && w.port <= last && v.port! <= w.port + w.replicas - 1);
      if (other >= 0) out.push({ path: `variants[${i}].port`, message: `ports apart from variants[${other}]'s (${cfg.variants[other]!.name}'s replicas get ${cfg.variants[other]!.port} up to ${cfg.variants[other]!.port! + cfg.variants[other]!.replicas - 1}; these get ${v.port} up to ${last})` });
    });
  }
  const total = cfg.variants.reduce((s, v) => s + v.weight, 0);
  if (!(total > 0)) out.push({ path: "variants", message: "weights must sum to a positive number" });
  // Each weight is finite, but their sum can overflow (1e308 + 1e308): the strategies would refuse it at serve time.
  else if (!Number.isFinite(total)) out.push({ path: "variants", message: `weights must sum to a finite number (they overflow to ${total}); use smaller weights, only their ratios matter` });
  if (cfg.fallback !== undefined && cfg.fallback !== "reject" && !names.has(cfg.fallback)) {
    out.push({ path: "fallback", message: `"reject" or a variant name (got "${cfg.fallback}")` });
  }
  const metricNames = new Set<string>();
  cfg.metrics.forEach((m, i) => {
    if (metricNames.has(m.name)) out.push({ path: `metrics[${i}].name`, message: `duplicate metric name "${m.name}"` });
    metricNames.add(m.name);
  });
  if (cfg.strategy.metric !== undefined) {
    const m = cfg.metrics.find((x) => x.name === cfg.strategy.metric);
    if (!m || m.kind !== "conversion") out.push({ path: "strategy.metric", message: "the name of a conversion metric" });
  }
  // Past 1/n every variant keeps the floor and the bandit is a fixed equal split.
  if (cfg.strategy.kind === "bandit" && cfg.strategy.floor > 1 / cfg.variants.length) {
    out.push({ path: "strategy.floor", message: `at most 1/${cfg.variants.length} with ${cfg.variants.length} variants (got ${cfg.strategy.floor}: every variant would keep it, an equal split)` });
  }
  if (cfg.store.startsWith("postgres")) {
    try {
      new URL(cfg.store);
    } catch {
      out.push({ path: "store", message: "postgres://user:password@host:port/database, a valid URL (percent-encode special characters in the password)" });
    }
  }
  if (cfg.strategy.kind === "bandit" && !cfg.metrics.some((m) => m.kind === "conversion")) {
    out.push({ path: "strategy.kind", message: "bandit needs a conversion metric in metrics" });
  }
  return out;
}

/** The strategy keys that only some strategies read. */
const STRATEGY_KEYS: Record<string, readonly string[]> = {
  salt: ["sticky", "bandit"],
  hash: ["sticky", "bandit"],
  floor: ["bandit"],
  burnInUnits: ["bandit"],
  updateIntervalMs: ["bandit"],
  metric: ["bandit"],
};

/**
 * Strategy keys the chosen strategy does not read are refused, as another engine's variant keys are: a `floor:` left
 * from a bandit would look as if it were in effect. (Read from the file, before the schema fills in defaults.)
 */
function strategyKeyChecks(raw: unknown, kind: string): { path: string; message: string }[] {
  const given = typeof raw === "object" && raw !== null ? (raw as { strategy?: unknown }).strategy : undefined;
  if (typeof given !== "object" || given === null) return [];
  const out: { path: string; message: string }[] = [];
  for (const key of Object.keys(given)) {
    const kinds = STRATEGY_KEYS[key];
    if (kinds !== undefined && !kinds.includes(kind)) {
      out.push({ path: `strategy.${key}`, message: `not used by strategy ${kind} (it is for ${kinds.join(" and ")})` });
    }
  }
  return out;
}

/** The variant keys that only some engines read. */
const ENGINE_KEYS = [
  ["build", ["docker", "swarm"]],
  ["image", ["docker", "swarm"]],
  ["dockerfile", ["docker", "swarm"]],
  ["buildArgs", ["docker", "swarm"]],
  ["command", ["process"]],
  ["cwd", ["process"]],
  ["url", ["static"]],
  ["urls", ["static"]],
  ["env", ["docker", "swarm", "process"]],
  ["port", ["docker", "swarm", "process"]],
] as const satisfies readonly (readonly [keyof VariantConfig, readonly string[]])[];

/** The keys that say what a replica runs from, one of which each variant needs (the one its engine reads). */
const SOURCE_KEYS = ["build", "image", "command", "url", "urls"] as const;

/** Whether `engine` reads a variant's `key`. */
function readBy(key: (typeof ENGINE_KEYS)[number][0], engine: string): boolean {
  return (ENGINE_KEYS.find(([k]) => k === key)![1] as readonly string[]).includes(engine);
}

/** A host as an address: without IPv6 brackets, and localhost as 127.0.0.1. */
function canonicalHost(h: string): string {
  return h === "localhost" ? "127.0.0.1" : h.replace(/^\[|\]$/g, "");
}

/** Whether a connection to `url` reaches a listener on `at` (loopback and wildcard addresses; port 0 is never). */
function reachesListener(url: URL, at: HostPort): boolean {
  const port = url.port === "" ? 80 : Number(url.port);
  if (at.port === 0 || port !== at.port) return false;
  // (a connection to 0.0.0.0 or :: goes to this host's loopback on Linux)
  const host = canonicalHost(url.hostname);
  const target = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host;
  const listener = canonicalHost(at.host);
  if (listener === "0.0.0.0") return target.startsWith("127.");
  if (listener === "::") return target.startsWith("127.") || target === "::1";
  return target === listener;
}

/**
 * Whether two listeners on one port would fight over it: the same host, a wildcard (which takes the port on every
 * address), or two names of the same loopback address.
 */
function listenersClash(a: string, b: string): boolean {
  const [x, y] = [canonicalHost(a), canonicalHost(b)];
  const v6 = (h: string) => h.includes(":");
  // `::` takes the port on every address (IPv4 too, unless the host sets bindv6only); 0.0.0.0 on every IPv4 one.
  if (x === y || x === "::" || y === "::") return true;
  return (x === "0.0.0.0" && !v6(y)) || (y === "0.0.0.0" && !v6(x));
}

/** Validate a config object (already parsed from YAML). Throws ConfigError naming every bad key. */
export function validateConfig(raw: unknown, baseDir = process.cwd(), envPaths?: Map<string, string>): Config {
  let parsed = configSchema.safeParse(raw ?? {});
  if (!parsed.success && envPaths !== undefined && envPaths.size > 0 && typedEnvValues(parsed.error, raw, envPaths)) parsed = configSchema.safeParse(raw);
  if (!parsed.success) throw new ConfigError(issuesOf(parsed.error));
  const cfg = parsed.data;
  const problems = [...strategyKeyChecks(raw, cfg.strategy.kind), ...semanticChecks(cfg)];
  if (problems.length) throw new ConfigError(problems);
  return {
    ...cfg,
    listen: parseHostPort(cfg.listen),
    admin: { ...cfg.admin, listen: parseHostPort(cfg.admin.listen), token: cfg.admin.token || undefined, ingestToken: cfg.admin.ingestToken || undefined, tokenVariables: [] },
    // (sqlite::memory: is SQLite's name for a throwaway database, not a file beside the config)
    store: cfg.store.startsWith("sqlite:") && cfg.store !== "sqlite::memory:" ? `sqlite:${resolve(baseDir, cfg.store.slice("sqlite:".length))}` : cfg.store,
    variants: cfg.variants.map((v) => ({
      ...v,
      // with urls, one replica per url (semanticChecks allows only 1, the default, or that number)
      replicas: v.urls !== undefined ? v.urls.length : v.replicas,
      build: v.build !== undefined ? resolve(baseDir, v.build) : undefined,
      cwd: v.cwd !== undefined ? resolve(baseDir, v.cwd) : v.command ? baseDir : undefined,
    })),
    baseDir,
    // An empty salt (an unset ${SALT}) is the default too: else every experiment whose variable is unset would hash
    // units alike, their splits correlated.
    salt: cfg.strategy.salt || cfg.experiment,
    fallback: cfg.fallback ?? cfg.variants[0].name,
    control: cfg.variants[0].name,
  };
}

/** Whether a scalar with these ancestors is in a variant's command, env or buildArgs (text for the program). */
function inProgramText(path: readonly unknown[]): boolean {
  return path.some((p) => isPair(p) && isScalar(p.key) && (p.key.value === "command" || p.key.value === "env" || p.key.value === "buildArgs"));
}

/** A whole scalar that was one `${NAME}`: its text, typed by the schema where the key expects a number or boolean. */
class EnvValue {
  /** `name`: the variable, to name it when its value (empty: "") is what the schema refuses */
  constructor(
    readonly text: string,
    readonly name?: string,
  ) {}
}

/** A scalar with references in it that is not one whole unquoted reference: its expanded text, and the variables used. */
class EnvText {
  constructor(
    readonly text: string,
    readonly names: string[],
  ) {}
}

/**
 * Parse YAML text, expand `${ENV}` references, and validate.
 *
 * A variable's value is data, never YAML: it is put into the parsed document, not into the text, so a token with
 * `#` or `: ` in it, or one made of digits, is the string it was (pasted into the text, `#2024` became a comment
 * and `0123` a number). Each reference becomes a placeholder of plain letters before parsing (so that
 * `{ MODEL: ${MODEL} }` still parses), then the placeholders are replaced in the parsed scalars. A scalar that was
 * exactly one unquoted reference is the variable's text, the empty string for an empty or unset one (as docker
 * compose reads it); where such a scalar meets a key that wants a number or a boolean, its text is read as one
 * (`weight: ${W}`).
 */
export function parseConfig(text: string, baseDir = process.cwd(), env: NodeJS.ProcessEnv = process.env, warnUnset?: (name: string) => void): Config {
  /** what each placeholder stands for: a variable's value, or the literal `${...}` of a `$${...}` escape */
  const values: { text: string; literal: boolean; name?: string; unset?: boolean; error?: string }[] = [];
  const tag = `abgateenv${Math.random().toString(36).slice(2, 10)}x`;
  const marked = text.replace(ENV_REFERENCE, (whole, key: string, op?: string, def?: string) => {
    // The escape gets a placeholder too: put back into the text, its braces would end a flow map (`{ A: $${X} }`)
    if (whole.startsWith("$$")) values.push({ text: whole.slice(1), literal: true });
    else {
      const v = envValue(env, key, op, def);
      values.push(typeof v === "string" ? { text: v, literal: false, name: key, unset: op === undefined && env[key] === undefined } : { text: "", literal: false, name: key, error: v.error });
    }
    return `${tag}${values.length - 1}x`;
  });
  // merge: YAML merge keys (`<<: *defaults`), which docker compose files use to share a variant's settings
  // uniqueKeys off: yaml's own check compares every key with every other (80,000 keys took 68 s); keys are checked
  // below, in linear time, and named.
  const doc = parseDocument(marked, { prettyErrors: true, merge: true, uniqueKeys: false });
  if (doc.errors.length) {
    const said = new Set<string>();
    throw new ConfigError(
      doc.errors.map((e) => {
        const line = e.linePos?.[0].line;
        // yaml's first line ends "at line 6, column 1:" before a code frame, which is not shown (the line may hold
        // a token).
        const what = e.message
          .split("\n")[0]!
          .replaceAll(tag, "$env")
          .replace(/ at line \d+, column \d+:?$/, "")
          .replace(/^Source contains multiple documents.*/, "a config is one YAML document: this is the start of a second one (---)")
          .replace(/^Maximum call stack size exceeded$/, "the YAML is nested too deeply");
        return { path: `line ${line ?? "?"}`, message: what };
      }).filter((issue) => {
        // (nesting too deep says so once per level: one line of each is enough)
        const key = `${issue.path}\n${issue.message}`;
        if (said.has(key)) return false;
        said.add(key);
        return true;
      }),
    );
  }
  const placeholder = new RegExp(`${tag}(\\d+)x`, "g");
  /** a scalar's text with its placeholders replaced by what they stand for */
  const expanded = (text: string) => text.replace(placeholder, (_, i: string) => values[Number(i)]!.text);
  const lineOf = (node: { range?: [number, number, number] | null }) => (node.range ? `line ${marked.slice(0, node.range[0]).split("\n").length}` : "(root)");
  const duplicates: { path: string; message: string }[] = [];
  visit(doc, {
    Map(_, map, path) {
      const seen = new Set<string>();
      for (const pair of map.items) {
        const key = isScalar(pair.key) ? pair.key.value : undefined;
        if ((typeof key !== "string" && typeof key !== "number") || key === "<<") continue;
        // (compared as they expand: `${K1}` and `${K2}` are two keys unless both variables hold the same name)
        const text = expanded(String(key));
        // Building the values would make it the object's prototype, not a key: the schema then read its contents as
        // inherited keys (`__proto__: { experiment: x }` passed as the experiment's name) and named none of them.
        if (text === "__proto__") duplicates.push({ path: keyPathOf([...path, map], text), message: "unknown key (and no name abgate can take, in env or buildArgs either)" });
        if (seen.has(text)) duplicates.push({ path: lineOf(pair.key as Scalar), message: `duplicate key ${JSON.stringify(text)} (a key may appear once in a mapping)` });
        seen.add(text);
      }
    },
  });
  if (duplicates.length > 0) throw new ConfigError(duplicates);
  /** variables used without a default that are not set: as docker compose does, said once each (`warnUnset`) */
  const unset = new Set<string>();
  /** variables used in mapping keys (told apart from values, which land in varsAt) */
  const inKeys = new Set<string>();
  /** references in values that cannot be expanded: a `?` one whose variable is missing, a form abgate does not read */
  const refused: { path: string; message: string }[] = [];
  const whole = new RegExp(`^${tag}(\\d+)x$`);
  visit(doc, {
    Scalar(key, node, path) {
      // A number in a command's arguments, env or buildArgs is text for the program: the text written, not YAML's
      // number printed again (`1.10` was "1.1", `0x1F` "31", `007` "7").
      if (typeof node.value === "number" && key !== "key" && node.type === "PLAIN" && typeof node.source === "string" && inProgramText(path)) {
        node.value = node.source;
        return;
      }
      if (typeof node.value !== "string") return;
      // What is left of a `${` once every reference and escape is a placeholder is a form this does not expand
      // (`${A:+x}`, `${A:-${B}}`, `${not a name}`): kept as text, a token or a salt would silently be that text.
      const left = /(?:^|[^$])(\$\{)/d.exec(node.value);
      if (left !== null) {
        // (only `${` and the name after it: the value may be a token written into the file)
        const from = left.indices![1]![0];
        const shown = /^\$\{[A-Za-z0-9_]{0,40}/.exec(node.value.slice(from))![0];
        refused.push({
          path: lineOf(node),
          message: `${JSON.stringify(shown)}... is not a reference abgate expands: write \${NAME}, \${NAME:-default}, \${NAME-default}, \${NAME:?message} or \${NAME?message} (NAME: letters, digits and _, no nesting), or $\${ for a literal \${`,
        });
        return;
      }
      // `token: $MY_TOKEN` (docker compose's unbraced form, which abgate does not expand, so that a command's `$PORT`
      // stays the shell's) made the token the public text "$MY_TOKEN". For the secrets, such a value is refused.
      const pair = path[path.length - 1];
      if (key === "value" && isPair(pair) && isScalar(pair.key) && UNBRACED_REFERENCE.test(node.value)) {
        const at = keyPathOf(path.slice(0, -1), String(pair.key.value));
        if (SECRET_KEYS.has(at)) {
          refused.push({ path: at, message: `${JSON.stringify(node.value)} is not expanded (abgate reads only \${...} forms): write \${${node.value.slice(1)}} to read the variable` });
          return;
        }
      }
      if (!node.value.includes(tag)) return;
      // (only references in the document's values count, not those in comments)
      const parent = path[path.length - 1];
      const field = isPair(parent) && isScalar(parent.key) ? String(parent.key.value) : "";
      const names: string[] = [];
      for (const [, i] of node.value.matchAll(placeholder)) {
        const v = values[Number(i)]!;
        if (v.unset) unset.add(v.name!);
        if (key === "key" && !v.literal) inKeys.add(v.name!);
        if (!v.literal) names.push(v.name!);
        if (v.error !== undefined) refused.push({ path: `${lineOf(node)}${field ? ` (${field})` : ""}`, message: v.error });
      }
      const only = whole.exec(node.value);
      const value = only !== null ? values[Number(only[1])]! : undefined;
      if (value !== undefined && !value.literal && key !== "key" && node.type === "PLAIN") {
        node.value = new EnvValue(value.text, value.name);
      } else if (key !== "key" && names.length > 0) {
        // (the variables it was made of, told where the value lands: under an alias or a merge key, too)
        node.value = new EnvText(expanded(node.value), names);
      } else node.value = expanded(node.value);
    },
  });
  if (refused.length > 0) throw new ConfigError(refused);
  const envPaths = new Map<string, string>();
  let js: unknown;
  try {
    js = doc.toJS();
  } catch (cause) {
    // The parse succeeded but building the values did not: yaml refuses aliases that expand too far (an
    // "alias bomb", `*a` nested into millions of nodes). That is the file's problem, so a config error (exit 2).
    const why = (cause as Error).message;
    const message = /excessive alias/i.test(why)
      ? `YAML aliases (*name) expand to too many nodes (${why}); write the values out or use fewer aliases`
      : /Maximum call stack/.test(why)
        ? "the YAML is nested too deeply"
        : `the YAML cannot be read: ${why}`;
    throw new ConfigError([{ path: "", message }], { cause });
  }
  const emptyVars = new Map<string, string>();
  /** key path -> the variable whose value the key is (named when the schema refuses it) */
  const fromVars = new Map<string, string>();
  /** key path -> the variables its value was made of, whatever the YAML form (quoted, an alias, a merge key) */
  const varsAt = new Map<string, string[]>();
  const raw = unwrapEnv(js, [], envPaths, emptyVars, fromVars, varsAt);
  warnUnsetVariables(unset, varsAt, inKeys, warnUnset);
  // Top-level keys starting with x- hold YAML anchors for merge keys, as docker compose's extension fields do.
  if (typeof raw === "object" && raw !== null && !Array.isArray(raw)) {
    for (const key of Object.keys(raw)) if (key.startsWith("x-")) delete (raw as Record<string, unknown>)[key];
  }
  try {
    const config = validateConfig(raw, baseDir, envPaths);
    // The variables the admin and ingest tokens were read from: process replicas do not inherit them, whatever
    // their name and length.
    config.admin.tokenVariables = [...new Set(TOKEN_PATHS.flatMap((path) => varsAt.get(path) ?? []))];
    return config;
  } catch (err) {
    // "listen: expected string, received null" does not say why: name the variable that was empty or unset, or
    // whose value was refused (not the value: it may be a token).
    if (!(err instanceof ConfigError) || (emptyVars.size === 0 && fromVars.size === 0)) throw err;
    throw new ConfigError(
      err.issues.map((i) =>
        emptyVars.has(i.path)
          ? { ...i, message: `${i.message} (it is \${${emptyVars.get(i.path)}}, which is empty or not set)` }
          : fromVars.has(i.path)
            ? { ...i, message: `${i.message} (it is the value of \${${fromVars.get(i.path)}})` }
            : i,
      ),
      { cause: err },
    );
  }
}

/**
 * The references docker compose reads: `${NAME}`; `${NAME:-default}` (when unset or empty) and `${NAME-default}`
 * (when unset); `${NAME:?message}` and `${NAME?message}`, an error when unset or empty, or unset. With `$$` in front,
 * a literal, whatever it holds up to its `}` (no space, quote, comma or brace: it must not end a quoted string or a
 * flow map). A default holds no reference (no nesting): `${A:-${B}}` is left over, and refused, not half expanded.
 */
const ENV_REFERENCE = /\$\$\{[^}\s"',{]*\}|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^}$\n]|\$(?!\{))*))?\}/g;

/** A variable's text, as the reference's operator says; or why it has none (a `?` reference). */
function envValue(env: NodeJS.ProcessEnv, key: string, op: string | undefined, def: string | undefined): string | { error: string } {
  const v = env[key];
  const missing = op === "-" || op === "?" ? v === undefined : v === undefined || v === "";
  if (!missing) return v ?? "";
  if (op === ":?" || op === "?") {
    return { error: `\${${key}} is ${v === undefined ? "not set" : "empty"}${def ? `: ${def}` : " (it must be)"}` };
  }
  return def ?? "";
}

/** The key paths of the admin and ingest tokens, as `varsAt` names them. */
const TOKEN_PATHS = ["admin.token", "admin.ingestToken"];

/**
 * Warns about each unset variable once, unless all its values land in the tokens (an unset token variable is the
 * documented way to have a token generated, or none), told by where the values land: a token written under an x-
 * anchor and used through an alias or a merge key is a token too. (Values under the x- keys themselves are dropped.)
 */
function warnUnsetVariables(unset: Set<string>, varsAt: Map<string, string[]>, inKeys: Set<string>, warnUnset: ((name: string) => void) | undefined): void {
  if (unset.size === 0 || warnUnset === undefined) return;
  // (a mapping key is no token: its variables count as used elsewhere; varsAt has values only)
  const elsewhere = new Set<string>(inKeys);
  const inTokens = new Set<string>();
  for (const [path, names] of varsAt) {
    if (path.startsWith("x-")) continue;
    const token = TOKEN_PATHS.includes(path);
    for (const name of names) (token ? inTokens : elsewhere).add(name);
  }
  for (const name of unset) if (elsewhere.has(name) || !inTokens.has(name)) warnUnset(name);
}

/** Replaces EnvValues and EnvTexts by their text, noting where each was (key path -> text, variables). */
function unwrapEnv(value: unknown, path: PropertyKey[], found: Map<string, string>, empty: Map<string, string>, from: Map<string, string>, varsAt: Map<string, string[]>): unknown {
  if (value instanceof EnvText) {
    varsAt.set(pathOf(path), value.names);
    return value.text;
  }
  if (value instanceof EnvValue) {
    if (value.name !== undefined) varsAt.set(pathOf(path), [value.name]);
    // An empty or unset variable is the empty string, as docker compose reads it (and as the README says), not the
    // null of the text `key: `: `env: { MODEL: ${MODEL} }` is then MODEL="" for the replica, not a config error.
    if (value.text === "") {
      if (value.name !== undefined) empty.set(pathOf(path), value.name);
      return "";
    }
    found.set(pathOf(path), value.text);
    if (value.name !== undefined) from.set(pathOf(path), value.name);
    return value.text;
  }
  if (Array.isArray(value)) return value.map((v, i) => unwrapEnv(v, [...path, i], found, empty, from, varsAt));
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = unwrapEnv(v, [...path, k], found, empty, from, varsAt);
    return out;
  }
  return value;
}

/** Where the schema wanted a number or a boolean and got a variable's text that reads as one, puts that in `raw`; true if any. */
function typedEnvValues(err: z.ZodError, raw: unknown, envPaths: Map<string, string>): boolean {
  let changed = false;
  for (const issue of err.issues) {
    if (issue.code !== "invalid_type" || (issue.expected !== "number" && issue.expected !== "boolean")) continue;
    const text = envPaths.get(pathOf(issue.path));
    if (text === undefined) continue;
    let typed: number | boolean | undefined;
    if (issue.expected === "number" && /^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$/.test(text.trim())) typed = Number(text);
    if (issue.expected === "boolean" && (text === "true" || text === "false")) typed = text === "true";
    if (typed === undefined) continue;
    let parent = raw as Record<PropertyKey, unknown>;
    for (const p of issue.path.slice(0, -1)) parent = parent[p as string] as Record<PropertyKey, unknown>;
    parent[issue.path.at(-1) as string] = typed;
    changed = true;
  }
  return changed;
}

/** Far beyond any experiment's config; it bounds what a wrong `-c` (a log file, /dev/zero) reads and parses. */
export const MAX_CONFIG_BYTES = 1024 * 1024;

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readUpTo(file, MAX_CONFIG_BYTES);
  } catch (cause) {
    if (cause instanceof ConfigError) throw cause;
    throw new ConfigError([{ path: "", message: `cannot read config file ${file}: ${(cause as Error).message}` }], { cause });
  }
  return parseConfig(text, dirname(resolve(file)), env, (name) => {
    process.stderr.write(`abgate: warning: \${${name}} in ${file} is not set, so it reads as empty (write \${${name}:-value} for a default)\n`);
  });
}

/** The file's text, read in pieces (it may be a pipe: `-c /dev/stdin`); a ConfigError past `maxBytes`. */
function readUpTo(file: string, maxBytes: number): string {
  const fd = openSync(file, "r");
  try {
    const buf = Buffer.alloc(maxBytes + 1);
    let got = 0;
    for (;;) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) break;
      got += n;
      if (got > maxBytes) {
        throw new ConfigError([{ path: "", message: `config file ${file} is larger than ${maxBytes / 1024 / 1024} MiB: is it the config?` }]);
      }
    }
    return buf.toString("utf8", 0, got);
  } finally {
    closeSync(fd);
  }
}
