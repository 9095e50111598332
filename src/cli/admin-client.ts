import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { SENDABLE_TOKEN, type Config } from "../config/index.ts";
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
  // Spaces and line ends around it (a secret file's newline) are no part of it, as the config loader and the server
  // read it; what is left must be sendable in a header.
  // Blank after trimming counts as not set too (`ABGATE_ADMIN_TOKEN=' '`), so the trim comes before the choice.
  const [from, given] = opts.token?.trim()
    ? ["--token", opts.token]
    : env.ABGATE_ADMIN_TOKEN?.trim()
      ? ["ABGATE_ADMIN_TOKEN", env.ABGATE_ADMIN_TOKEN]
      : ["admin.token", config?.admin.token ?? ""];
  const token = given.trim();
  if (!SENDABLE_TOKEN.test(token)) throw new InvalidArgumentError(`the admin token (${from}) has spaces or characters that are not ASCII inside it, which cannot be sent in an HTTP header`);
  return { adminUrl, token: token || undefined };
}

/** A mistyped --admin is the user's to fix, not an unreachable server: say so, with the usage exit code. */
function checkAdminUrl(value: string): void {
  checkHttpUrl("--admin", value, "abgate's admin API", "http://127.0.0.1:8081");
}

/**
 * Throws InvalidArgumentError (exit 2) naming `option` unless `value` is an http(s) URL with a host: a mistyped URL
 * otherwise failed only at its first request, as an unreachable server (exit 1).
 */
export function checkHttpUrl(option: string, value: string, of: string, example: string): void {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || !url.hostname) {
    throw new InvalidArgumentError(`${option} ${JSON.stringify(value)}: expected an http(s) URL of ${of}, e.g. ${example}`);
  }
}

/** Whether `err` is abgate's admin API refusing a request's Host (403 ABGATE_ERR_HOST), which a token passes. */
export function refusedHost(err: unknown): boolean {
  const cause = err instanceof AbgateError ? (err.cause as { status?: unknown; code?: unknown } | undefined) : undefined;
  return cause?.status === 403 && cause.code === "ABGATE_ERR_HOST";
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
  weights: (j: unknown): j is { weights: Record<string, number> } => isObject(j) && isNumberMap(j.weights),
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

/** How long one admin call may take in all (connecting, waiting for the answer, reading it), by default. */
export const ADMIN_CALL_TIMEOUT_MS = 30_000;

/**
 * The most of an answer adminCall reads. The largest answers of abgate's admin API are GET /v1/experiment and
 * GET /v1/report: about 200 KB each for 20 variants of 64 replicas and 20 metrics, so this leaves room 40 times
 * over, and still stops a wrong --admin (a model, a file server) from being read whole.
 */
export const MAX_ANSWER_BYTES = 8 * 1024 * 1024;

export interface AdminCallOptions {
  /** the whole call's deadline (default ADMIN_CALL_TIMEOUT_MS) */
  timeoutMs?: number;
  /** larger answers are refused, the rest left unread (default MAX_ANSWER_BYTES) */
  maxAnswerBytes?: number;
}

const seconds = (ms: number): string => `${ms / 1000} s`;
const MiB = 1024 * 1024;
const size = (bytes: number): string => (bytes % MiB === 0 ? `${bytes / MiB} MiB` : `${bytes} bytes`);

/**
 * Sends one request and reads its whole answer, failing with a message that names the request (method and URL) and
 * what went wrong: nothing listens (connection refused), something listens but does not answer, or an answer that
 * stalls. node:http rather than fetch: fetch says only "fetch failed" or "The operation was aborted due to timeout",
 * and cannot tell whether the connection was made when its timeout fired.
 */
function send(
  url: URL,
  method: string,
  headers: Record<string, string>,
  body: string | undefined,
  adminUrl: string,
  { timeoutMs, maxAnswerBytes }: Required<AdminCallOptions>,
): Promise<{ status: number; text: string }> {
  const call = `${method} ${url.href}`;
  // Where the call is when it fails: the message depends on it.
  let phase: "connecting" | "waiting" | "reading" = "connecting";
  let status = 0;
  let received = 0;
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (err: Error | undefined, answer?: { status: number; text: string }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        req.destroy();
        reject(err);
      } else resolve(answer!);
    };
    // A new connection per call (agent: false): the CLI makes one or two, and a kept-alive socket would only hold
    // the process (or a test's server.close()) open.
    const req = (url.protocol === "https:" ? httpsRequest : httpRequest)(url, {
      method,
      agent: false,
      headers: { accept: "application/json", ...headers, ...(body !== undefined ? { "content-length": String(Buffer.byteLength(body)) } : {}) },
    });
    const timer = setTimeout(() => {
      // (once the answer's status came, a change answered 2xx was made: only a call without one leaves that open)
      const changeUnknown = method === "GET" ? "" : `; whether the change was made is unknown (GET ${new URL("/v1/experiment", adminUrl).href} shows the weights)`;
      const why =
        phase === "connecting"
          ? `could not connect within ${seconds(timeoutMs)} (nothing answered the connection attempt: is the host up, or a firewall dropping packets?)`
          : phase === "waiting"
            ? `something listens at ${adminUrl} but did not answer within ${seconds(timeoutMs)} (is it abgate's admin API? check --admin or the config's admin.listen)${changeUnknown}`
            : `the answer (${status}) stalled: ${received} bytes of its body read, not complete after ${seconds(timeoutMs)}`;
      finish(new AbgateError(`${call}: ${why}`, "ABGATE_ERR_ADMIN_TIMEOUT"));
    }, timeoutMs);
    req.on("socket", (socket) => {
      if (!socket.connecting) phase = "waiting";
      else socket.once("connect", () => (phase = "waiting"));
    });
    req.on("error", (cause: NodeJS.ErrnoException) => {
      if (cause.code === "ECONNREFUSED") {
        finish(new AbgateError(`no abgate admin API answers at ${adminUrl}: nothing listens there (${call}: connection refused; is \`abgate serve\` or \`abgate up\` running?)`, "ABGATE_ERR_ADMIN_UNREACHABLE", { cause }));
      } else if (cause.code === "ENOTFOUND" || cause.code === "EAI_AGAIN") {
        finish(new AbgateError(`no abgate admin API answers at ${adminUrl}: its host ${url.hostname} does not resolve (${call}: ${cause.code})`, "ABGATE_ERR_ADMIN_UNREACHABLE", { cause }));
      } else if (phase === "connecting") {
        finish(new AbgateError(`no abgate admin API answers at ${adminUrl}: ${call} could not connect (${cause.code ?? cause.message})`, "ABGATE_ERR_ADMIN_UNREACHABLE", { cause }));
      } else {
        finish(new AbgateError(`${call}: the connection failed before an answer came (${cause.code ?? cause.message})`, "ABGATE_ERR_ADMIN_CALL", { cause }));
      }
    });
    req.on("response", (res: IncomingMessage) => {
      phase = "reading";
      status = res.statusCode ?? 0;
      const tooLarge = (what: string) =>
        new AbgateError(
          `${call}: the answer (${status}) is larger than ${size(maxAnswerBytes)} (${what}), far more than abgate's admin API sends: refused, the rest not read (check --admin or the config's admin.listen)`,
          "ABGATE_ERR_ADMIN_ANSWER_TOO_LARGE",
        );
      const declared = Number(res.headers["content-length"]);
      if (declared > maxAnswerBytes) return finish(tooLarge(`content-length: ${declared} bytes`));
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => {
        received += chunk.length;
        if (received > maxAnswerBytes) return finish(tooLarge("stopped reading there"));
        chunks.push(chunk);
      });
      res.on("error", () => {}); // (reported by 'close' below, as an answer cut short)
      res.on("end", () => finish(undefined, { status, text: Buffer.concat(chunks).toString("utf8") }));
      res.on("close", () => {
        if (!res.complete) finish(new AbgateError(`${call}: the connection closed after ${received} bytes of the answer (${status}), before its end`, "ABGATE_ERR_ADMIN_CALL"));
      });
    });
    req.end(body);
  });
}

/**
 * One call to a running abgate's admin API; errors carry the server's message. Something else listening on
 * the address (the proxy port, another service) also answers HTTP, so an answer counts only when it has the
 * shape `check` expects: otherwise the command would report a change that never happened.
 */
export async function adminCall<T>(target: AdminTarget, method: string, path: string, check: AnswerCheck<T>, body?: unknown, options: AdminCallOptions = {}): Promise<T> {
  const headers: Record<string, string> = { "content-type": "application/json", ...(target.token ? { authorization: `Bearer ${target.token}` } : {}) };
  const res = await send(new URL(path, target.adminUrl), method, headers, body === undefined ? undefined : JSON.stringify(body), target.adminUrl, {
    timeoutMs: options.timeoutMs ?? ADMIN_CALL_TIMEOUT_MS,
    maxAnswerBytes: options.maxAnswerBytes ?? MAX_ANSWER_BYTES,
  });
  const ok = res.status >= 200 && res.status < 300;
  const text = res.text;
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
  if (!ok) {
    // abgate's admin API answers every failure as JSON { error, code }; anything else came from something else
    if (!isJson || !isObject(json) || typeof json.error !== "string" || typeof json.code !== "string" || !json.code.startsWith("ABGATE_")) throw notAdmin();
    const hint = res.status === 401 ? " (pass --token or set ABGATE_ADMIN_TOKEN)" : "";
    const message = `${method} ${path}: ${res.status} ${json.error}${hint}`;
    // A 400 refused the command's own arguments (an unknown variant, weights summing to 0): a usage error, exit 2.
    if (res.status === 400) throw new InvalidArgumentError(message);
    throw new AbgateError(message, "ABGATE_ERR_ADMIN_CALL", { cause: { status: res.status, code: json.code } });
  }
  if (!isJson || !check(json)) throw notAdmin();
  return json;
}
