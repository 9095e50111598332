import { isIP } from "node:net";
import { z } from "zod";

/**
 * Names are at most 63 characters (a DNS label, as Docker's service names must be): they go into container, service
 * and image names, labels, metrics and every stored row's keys, where a long one broke the dashboard's layout and
 * made PostgreSQL refuse index rows (a 1,400-character experiment name with a long unit passed its 2,704 bytes).
 */
const MAX_NAME_CHARS = 63;
const name = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]*$/, "a name of lowercase letters, digits and '-', starting with a letter or digit")
  .max(MAX_NAME_CHARS, `at most ${MAX_NAME_CHARS} characters`);
const listen = z.string().regex(/^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/, "host:port, e.g. 127.0.0.1:8080");
/** variants and metrics may use '_' too (the spec's own example has `watch_minutes`) */
const metricName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_-]*$/, "a name of lowercase letters, digits, '-' and '_', starting with a letter or digit")
  .max(MAX_NAME_CHARS, `at most ${MAX_NAME_CHARS} characters`);
const positiveMs = z.number().int().positive();
/**
 * A duration abgate sets a timer for. Node's timers take at most 2^31 - 1 ms and turn anything longer into 1 ms
 * (with a TimeoutOverflowWarning): `intervalMs: 3000000000` checked a replica every few ms instead of monthly.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
const timerMs = positiveMs.max(MAX_TIMER_MS, `at most ${MAX_TIMER_MS} ms (about 24.8 days: the longest timer Node.js can set)`);
/** RFC 9110 §5.6.2's token: a header or cookie name (anything else in one splits or forges a header line). */
const token = (what: string) => z.string().regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, `${what}: letters, digits and !#$%&'*+-.^_\`|~, without spaces`);

export const healthSchema = z.strictObject({
  // (a request target: no spaces or control characters, which could not be sent, or would forge header lines)
  path: z
    .string()
    .regex(/^\/[\x21-\x7e]*$/, "a path starting with / without spaces or control characters (percent-encode them)")
    .default("/health"),
  intervalMs: timerMs.default(2000),
  timeoutMs: timerMs.default(1000),
  rise: z.number().int().min(1).default(2),
  fall: z.number().int().min(1).default(3),
});

/** An env or build-arg value: text, or a number or boolean written as one (`WORKERS: 4`), as docker compose takes. */
const scalarText = z.union([z.string(), z.number(), z.boolean()]).transform((v) => String(v));

export const variantSchema = z
  .strictObject({
    name: metricName,
    weight: z.number().min(0).default(1),
    build: z.string().min(1).optional(),
    dockerfile: z.string().min(1).optional(),
    image: z.string().min(1).optional(),
    // A list, as Kubernetes' command is: abgate runs no shell, so a string would need rules for splitting and quoting.
    // Numbers and booleans in it are their text, as in env (`[server, --workers, 4]`).
    command: z
      .array(scalarText, {
        error: (issue) =>
          issue.input === undefined
            ? undefined
            : `a list of the program and its arguments, such as [node, server.js] (a string is not split; for a shell line write [sh, -c, "..."])`,
      })
      .min(1, "a list with the program first, such as [node, server.js]")
      .optional(),
    cwd: z.string().optional(),
    url: z.url().optional(),
    urls: z.array(z.url()).min(1).optional(),
    buildArgs: z.record(z.string(), scalarText).default({}),
    // (a name with '=' would set another variable than it says; NUL cannot be passed to a process at all)
    env: z
      .record(
        z.string().regex(/^[^=\0]+$/, "an environment variable name: not empty, without '=' or NUL"),
        scalarText.pipe(z.string().regex(/^[^\0]*$/, "a value without NUL characters")),
      )
      .default({}),
    replicas: z.number().int().min(1).max(64).default(1),
    /** First port of this variant's replicas; by default ports are given out from `ports.base`. */
    port: z.number().int().min(1).max(65535).optional(),
    health: healthSchema.optional(),
  });

const guardrailSchema = z
  .strictObject({
    maxRelativeIncrease: z.number().positive().optional(),
    maxAbsoluteIncrease: z.number().positive().optional(),
  })
  .refine((g) => g.maxRelativeIncrease !== undefined || g.maxAbsoluteIncrease !== undefined, {
    message: "a guardrail needs maxRelativeIncrease or maxAbsoluteIncrease",
  });

/**
 * An event name: any text an application sends, but no control or bidirectional-formatting characters, which the
 * report's and dashboard's notes quote (U+202E turned the rest of a note around) and a log line would carry raw.
 */
const eventName = z
  .string()
  .min(1)
  .regex(/^[^\p{Cc}\u200e\u200f\u202a-\u202e\u2066-\u2069]+$/u, "an event name without control or bidirectional-formatting characters");

export const metricSchema = z.discriminatedUnion("kind", [
  z.strictObject({ name: metricName, kind: z.literal("conversion"), event: eventName, windowMs: positiveMs.optional(), guardrail: guardrailSchema.optional() }),
  z.strictObject({ name: metricName, kind: z.literal("mean"), event: eventName, windowMs: positiveMs.optional(), guardrail: guardrailSchema.optional() }),
  z.strictObject({ name: metricName, kind: z.literal("latency"), guardrail: guardrailSchema.optional() }),
  z.strictObject({ name: metricName, kind: z.literal("error_rate"), guardrail: guardrailSchema.optional() }),
]);

/**
 * What a client can send after `Bearer `: visible ASCII. A token with a space inside, or non-ASCII, was accepted and
 * could never be matched (clients cannot send non-ASCII in a header); one around it is dropped. The CLI checks the
 * token it sends with the same pattern.
 */
export const SENDABLE_TOKEN = /^[\x21-\x7e]*$/;
const bearerToken = z
  .string()
  // (spaces and line ends around it, as a secret file's last newline, are never sent: a client's header loses them)
  .trim()
  .regex(SENDABLE_TOKEN, "visible ASCII characters only (no spaces, no non-ASCII): a client sends it in an HTTP header");

/** "127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8": an address, or one with a prefix length its family allows. */
export function isAddressOrRange(text: string): boolean {
  const slash = text.indexOf("/");
  if (slash === -1) return isIP(text) !== 0;
  const family = isIP(text.slice(0, slash));
  const bits = text.slice(slash + 1);
  return family !== 0 && /^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128);
}

export const configSchema = z.strictObject({
  experiment: name,
  listen: listen.default("127.0.0.1:8080"),
  admin: z
    .strictObject({
      listen: listen.default("127.0.0.1:8081"),
      // `token: ${ABGATE_ADMIN_TOKEN}` with the variable unset is empty: that means "none", as in the spec's example
      // (null, `token:` with nothing after it, too)
      token: bearerToken.nullish(),
      ingestToken: bearerToken.nullish(),
      /**
       * Host names (besides IP addresses, localhost and the listen host) this listener answers to, e.g. the name a
       * reverse proxy forwards; ".example.com" takes its subdomains too, "*" any name. Others get 403 (DNS rebinding),
       * unless they carry a token. Without any, only a loopback listener is checked.
       */
      allowedHosts: z
        .array(z.string().regex(/^(\*|\.?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?)$/, "a host name (abgate.example.com), .example.com for its subdomains, or *"))
        .default([]),
    })
    .prefault({}),
  store: z
    .string()
    .regex(/^(sqlite:.+|postgres(ql)?:\/\/.+)$/, "sqlite:<path> or postgres://user@host:port/db")
    .default("sqlite:./abgate.db"),
  engine: z.enum(["docker", "swarm", "process", "static"]),
  network: z.enum(["host", "bridge"]).default("host"),
  ports: z.strictObject({ base: z.number().int().min(1024).max(65000).default(9100) }).prefault({}),
  forwardedHeaders: z
    .strictObject({
      /**
       * Peers whose X-Forwarded-Proto and X-Forwarded-Host are passed on instead of replaced (a TLS terminator in
       * front of abgate): addresses or CIDR ranges, as Traefik's forwardedHeaders.trustedIPs
       */
      trustedIPs: z.array(z.string().refine(isAddressOrRange, "an IP address or a CIDR range (127.0.0.1, 10.0.0.0/8, ::1)")).default([]),
    })
    .prefault({}),
  // Each key has its default on its own: `unit: { cookie: sid }` keeps reading x-user-id and ?user= (a block that
  // replaced all three dropped them without a word, and every request got a made-up unit). null turns a source off.
  unit: z
    .strictObject({
      header: token("a header name").toLowerCase().nullable().default("x-user-id"),
      query: z.string().min(1).nullable().default("user"),
      // (not nullable: the cookie is how a client that names no unit keeps the one abgate made up for it)
      cookie: z
        .string({ error: (issue) => (issue.input === null ? "a cookie name: unlike header and query it cannot be null, since it keeps the unit abgate makes up for a client that names none" : undefined) })
        .regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, "a cookie name: letters, digits and !#$%&'*+-.^_`|~, without spaces")
        .default("abgate_uid"),
    })
    .prefault({}),
  strategy: z
    .strictObject({
      kind: z.enum(["random", "sticky", "round-robin", "bandit"]).default("sticky"),
      salt: z.string().optional(),
      /** sticky/bandit buckets: the spec's plain FNV-1a, or FNV-1a + fmix32 (even splits of sequential ids) */
      hash: z.enum(["fnv1a32", "fnv1a32-fmix"]).default("fnv1a32"),
      /** bandit: smallest share any variant keeps (0..1/n) */
      floor: z.number().min(0).max(0.5).default(0.01),
      /** bandit: units that must be exposed before weights start to follow the posterior */
      burnInUnits: z.number().int().min(0).default(100),
      /** bandit: how often weights are recomputed */
      updateIntervalMs: timerMs.default(10_000),
      /** bandit: the conversion metric to optimise; defaults to the first one */
      metric: z.string().optional(),
    })
    .prefault({}),
  allowForce: z.boolean().default(false),
  /** a variant name or "reject"; defaults to the control (the first variant) */
  fallback: z.string().min(1).optional(),
  limits: z
    .strictObject({
      maxBodyBytes: z.number().int().positive().optional(),
      maxHeaderBytes: z.number().int().positive().default(16 * 1024),
      headersTimeoutMs: timerMs.default(10_000),
      requestTimeoutMs: timerMs.default(300_000),
      idleTimeoutMs: timerMs.default(60_000),
      connectTimeoutMs: timerMs.default(2_000),
      responseTimeoutMs: timerMs.default(30_000),
      maxRetries: z.number().int().min(0).max(5).default(2),
      /** passive ejection: consecutive connect errors / 5xx before a replica is taken out */
      ejectAfterFailures: z.number().int().min(1).default(5),
      ejectionMs: timerMs.default(10_000),
      /** each ejection in a row lasts ejectionMs longer, up to this (default: 300,000 or ejectionMs if longer) */
      maxEjectionMs: timerMs.optional(),
      /** SIGTERM: how long in-flight requests (streams, long uploads) may take to finish before they are cut */
      drainTimeoutMs: timerMs.default(30_000),
    })
    .prefault({}),
  variants: z.array(variantSchema).min(1, "at least one variant"),
  metrics: z.array(metricSchema).default([]),
  analysis: z
    .strictObject({
      alpha: z.number().gt(0).lt(1).default(0.05),
      srmThreshold: z.number().gt(0).lt(1).default(0.001),
      correction: z.enum(["holm", "bh", "none"]).default("holm"),
      /** mixing variance of the mSPRT normal mixture, in units of the metric's variance (see stats/sequential.ts) */
      tau2: z.number().positive().optional(),
    })
    .prefault({}),
  logLevel: z.enum(["debug", "info", "warn", "error", "silent"]).default("info"),
});

export type RawConfig = z.input<typeof configSchema>;
export type ParsedConfig = z.output<typeof configSchema>;
export type VariantConfig = z.output<typeof variantSchema>;
export type HealthConfig = z.output<typeof healthSchema>;
export type MetricConfig = z.output<typeof metricSchema>;
