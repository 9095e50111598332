import type { Config } from "../config/index.ts";
import { AbgateError, InvalidArgumentError } from "../errors.ts";

export interface AdminTarget {
  adminUrl: string;
  token?: string;
}

export function adminTarget(config: Config | undefined, opts: { admin?: string; token?: string }, env: NodeJS.ProcessEnv = process.env): AdminTarget {
  if (opts.admin !== undefined) checkAdminUrl(opts.admin);
  const host = config?.admin.listen.host ?? "127.0.0.1";
  const adminUrl = opts.admin ?? `http://${host.includes(":") ? `[${host}]` : host}:${config?.admin.listen.port ?? 8081}`;
  // An empty value means "not set", as in the config loader: `ABGATE_ADMIN_TOKEN= abgate promote ...` (or a
  // CI variable that exists but is blank) must not hide the config's token and turn into a 401.
  return { adminUrl, token: opts.token || env.ABGATE_ADMIN_TOKEN || config?.admin.token || undefined };
}

/** A mistyped --admin is the user's to fix, not an unreachable server: say so, with the usage exit code. */
function checkAdminUrl(value: string): void {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname) {
    throw new InvalidArgumentError(`--admin ${JSON.stringify(value)}: expected an http(s) URL of abgate's admin API, e.g. http://127.0.0.1:8081`);
  }
}

/** Checks that a 2xx answer has the shape abgate's admin API gives for that endpoint. */
export type AnswerCheck<T> = (json: unknown) => json is T;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const isNumberMap = (v: unknown): v is Record<string, number> => isObject(v) && Object.values(v).every((n) => typeof n === "number");

/** What the CLI reads of GET /v1/experiment. */
export interface ExperimentAnswer {
  experiment: string;
  engine: string;
  fallback?: string;
  variants: { name: string; weight: number; replicas: { id: string; address: string; health: string; checks?: string; outstanding: number }[] }[];
}

export const answers = {
  weights: (j: unknown): j is { weights: { name: string; weight: number }[] } =>
    isObject(j) && Array.isArray(j.weights) && j.weights.every((w) => isObject(w) && typeof w.name === "string" && typeof w.weight === "number"),
  promote: (j: unknown): j is { promoted: string; weights: Record<string, number> } => isObject(j) && typeof j.promoted === "string" && isNumberMap(j.weights),
  rollback: (j: unknown): j is { rolledBackTo: string; weights: Record<string, number> } => isObject(j) && typeof j.rolledBackTo === "string" && isNumberMap(j.weights),
  experiment: (j: unknown): j is ExperimentAnswer =>
    isObject(j) &&
    typeof j.experiment === "string" &&
    typeof j.engine === "string" &&
    Array.isArray(j.variants) &&
    j.variants.every(
      (v) =>
        isObject(v) &&
        typeof v.name === "string" &&
        typeof v.weight === "number" &&
        Array.isArray(v.replicas) &&
        v.replicas.every((r) => isObject(r) && typeof r.id === "string" && typeof r.address === "string" && typeof r.health === "string"),
    ),
} satisfies Record<string, AnswerCheck<unknown>>;

/** Enough of an unexpected body to recognise what answered, on one line. */
function snippet(text: string): string {
  const one = text.replace(/\s+/g, " ").trim();
  if (!one) return "an empty body";
  return JSON.stringify(one.length > 80 ? `${one.slice(0, 80)}…` : one);
}

/**
 * One call to a running abgate's admin API; errors carry the server's message. Something else listening on
 * the address (the proxy port, another service) also answers HTTP, so an answer counts only when it has the
 * shape `check` expects: otherwise the command would report a change that never happened.
 */
export async function adminCall<T>(target: AdminTarget, method: string, path: string, check: AnswerCheck<T>, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(new URL(path, target.adminUrl), {
      method,
      headers: { "content-type": "application/json", ...(target.token ? { authorization: `Bearer ${target.token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
  } catch (cause) {
    throw new AbgateError(`no abgate admin API answers at ${target.adminUrl} (is \`abgate serve\` or \`abgate up\` running?)`, "ABGATE_ERR_ADMIN_UNREACHABLE", { cause });
  }
  const text = await res.text();
  let json: unknown;
  let isJson = true;
  try {
    json = JSON.parse(text);
  } catch {
    isJson = false;
  }
  const notAdmin = () =>
    new AbgateError(
      `${target.adminUrl} is not an abgate admin API: ${method} ${path} answered ${res.status} with ${snippet(text)} (check --admin or the config's admin.listen)`,
      "ABGATE_ERR_NOT_ADMIN_API",
    );
  if (!res.ok) {
    // abgate's admin API answers every failure as JSON { error, code }; anything else came from something else
    if (!isJson || !isObject(json) || typeof json.error !== "string" || typeof json.code !== "string" || !json.code.startsWith("ABGATE_")) throw notAdmin();
    const hint = res.status === 401 ? " (pass --token or set ABGATE_ADMIN_TOKEN)" : "";
    const message = `${method} ${path}: ${res.status} ${json.error}${hint}`;
    // A 400 refused the command's own arguments (an unknown variant, weights summing to 0): a usage error, exit 2.
    if (res.status === 400) throw new InvalidArgumentError(message);
    throw new AbgateError(message, "ABGATE_ERR_ADMIN_CALL");
  }
  if (!isJson || !check(json)) throw notAdmin();
  return json;
}
