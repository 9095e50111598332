import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseDocument } from "yaml";
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
  admin: { listen: HostPort; token?: string; ingestToken?: string };
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

/** `${NAME}` and `${NAME:-default}` expand from the environment; `$${` is a literal `${`. An unset name expands to nothing. */
export function expandEnv(text: string, env: NodeJS.ProcessEnv = process.env): string {
  return text.replace(/\$?\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (whole, key: string, def?: string) => {
    if (whole.startsWith("$$")) return whole.slice(1);
    const v = env[key];
    return v !== undefined && v !== "" ? v : (def ?? "");
  });
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
  const names = new Set<string>();
  cfg.variants.forEach((v: VariantConfig, i) => {
    const at = `variants[${i}]`;
    if (names.has(v.name)) out.push({ path: `${at}.name`, message: `duplicate variant name "${v.name}"` });
    names.add(v.name);
    const sources = (["build", "image", "command", "url", "urls"] as const).filter((k) => v[k] !== undefined);
    const wanted: Record<string, readonly string[]> = {
      docker: ["build", "image"],
      swarm: ["build", "image"],
      process: ["command"],
      static: ["url", "urls"],
    };
    const allowed = wanted[cfg.engine];
    const ok = sources.filter((s) => allowed.includes(s));
    if (ok.length !== 1) {
      out.push({ path: at, message: `engine ${cfg.engine} needs exactly one of ${allowed.join(" or ")} (found ${sources.join(", ") || "none"})` });
    }
    if (v.urls && v.replicas !== 1 && v.replicas !== v.urls.length) {
      out.push({ path: `${at}.replicas`, message: `with urls the replica count is the number of urls (${v.urls.length})` });
    }
  });
  const total = cfg.variants.reduce((s, v) => s + v.weight, 0);
  if (!(total > 0)) out.push({ path: "variants", message: "weights must sum to a positive number" });
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
  if (cfg.strategy.kind === "bandit" && !cfg.metrics.some((m) => m.kind === "conversion")) {
    out.push({ path: "strategy.kind", message: "bandit needs a conversion metric in metrics" });
  }
  return out;
}

/** Validate a config object (already parsed from YAML). Throws ConfigError naming every bad key. */
export function validateConfig(raw: unknown, baseDir = process.cwd()): Config {
  const parsed = configSchema.safeParse(raw ?? {});
  if (!parsed.success) throw new ConfigError(issuesOf(parsed.error));
  const cfg = parsed.data;
  const problems = semanticChecks(cfg);
  if (problems.length) throw new ConfigError(problems);
  return {
    ...cfg,
    listen: parseHostPort(cfg.listen),
    admin: { ...cfg.admin, listen: parseHostPort(cfg.admin.listen), token: cfg.admin.token || undefined, ingestToken: cfg.admin.ingestToken || undefined },
    store: cfg.store.startsWith("sqlite:") ? `sqlite:${resolve(baseDir, cfg.store.slice("sqlite:".length))}` : cfg.store,
    variants: cfg.variants.map((v) => ({
      ...v,
      build: v.build !== undefined ? resolve(baseDir, v.build) : undefined,
      cwd: v.cwd !== undefined ? resolve(baseDir, v.cwd) : v.command ? baseDir : undefined,
    })),
    baseDir,
    salt: cfg.strategy.salt ?? cfg.experiment,
    fallback: cfg.fallback ?? cfg.variants[0].name,
    control: cfg.variants[0].name,
  };
}

/** Parse YAML text (after `${ENV}` expansion) and validate it. */
export function parseConfig(text: string, baseDir = process.cwd(), env: NodeJS.ProcessEnv = process.env): Config {
  const doc = parseDocument(expandEnv(text, env), { prettyErrors: true });
  if (doc.errors.length) {
    throw new ConfigError(doc.errors.map((e) => ({ path: `line ${e.linePos?.[0].line ?? "?"}`, message: e.message.split("\n")[0] })));
  }
  return validateConfig(doc.toJS(), baseDir);
}

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (cause) {
    throw new ConfigError([{ path: "", message: `cannot read config file ${file}: ${(cause as Error).message}` }], { cause });
  }
  return parseConfig(text, dirname(resolve(file)), env);
}
