/**
 * Every error abgate raises on purpose, with a stable code (ABGATE_*) so that logs, tests and users can match on
 * it. Causes are kept in `cause` rather than flattened into the message.
 */
export class AbgateError extends Error {
  readonly code: string;
  constructor(message: string, code = "ABGATE_ERR", options?: { cause?: unknown }) {
    super(message, options);
    this.name = "AbgateError";
    this.code = code;
  }
}

/** Config file problems: the message names the key path and what was expected. Exit code 2. */
export class ConfigError extends AbgateError {
  readonly issues: { path: string; message: string }[];
  constructor(issues: { path: string; message: string }[], options?: { cause?: unknown }) {
    super(issues.map((i) => `${i.path || "(root)"}: ${i.message}`).join("\n"), "ABGATE_ERR_CONFIG", options);
    this.name = "ConfigError";
    this.issues = issues;
  }
}

/** Wrong arguments to a function or command. */
export class InvalidArgumentError extends AbgateError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "ABGATE_ERR_INVALID_ARG", options);
    this.name = "InvalidArgumentError";
  }
}

/** A request body that cannot be accepted; `status` is the HTTP status to answer with. */
export class RequestError extends AbgateError {
  readonly status: number;
  constructor(message: string, status = 400, code = "ABGATE_ERR_BAD_REQUEST", options?: { cause?: unknown }) {
    super(message, code, options);
    this.name = "RequestError";
    this.status = status;
  }
}

/** No Docker engine answered on the socket. */
export class EngineUnavailableError extends AbgateError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "ABGATE_ERR_ENGINE_UNAVAILABLE", options);
    this.name = "EngineUnavailableError";
  }
}

/** An image build failed; `output` holds the failing step's log. */
export class BuildError extends AbgateError {
  readonly output: string;
  constructor(message: string, output: string, options?: { cause?: unknown }) {
    super(message, "ABGATE_ERR_BUILD", options);
    this.name = "BuildError";
    this.output = output;
  }
}

/**
 * A variant's fixed `port:` (port + i for replica i) is taken: in use, or reserved for abgate's listeners or another
 * experiment's replicas. A fixed port is a promise to whoever reaches the replica there, so it is never moved.
 */
export class PortTakenError extends AbgateError {
  constructor(variantIndex: number, replica: string, port: number, why: string) {
    super(
      `variants[${variantIndex}].port: replica ${replica} needs port ${port}, which ${why}; free it, or leave port: out to let abgate choose`,
      "ABGATE_ERR_PORT_TAKEN",
    );
    this.name = "PortTakenError";
  }
}

export const STORE_ERROR_CODES = ["ABGATE_ERR_STORE", "ABGATE_ERR_STORE_OUTCOME_UNKNOWN", "ABGATE_ERR_STORE_INVALID_EXPOSURE"] as const;
export type StoreErrorCode = (typeof STORE_ERROR_CODES)[number];

export function isStoreErrorCode(code: unknown): code is StoreErrorCode {
  return (STORE_ERROR_CODES as readonly unknown[]).includes(code);
}

export class StoreError extends AbgateError {
  /**
   * `code`: ABGATE_ERR_STORE; ABGATE_ERR_STORE_OUTCOME_UNKNOWN when a write's COMMIT failed and may have committed;
   * ABGATE_ERR_STORE_INVALID_EXPOSURE when writeExposures refused its batch, before writing any of it, for a row no
   * store can take (exposureProblem says which)
   */
  constructor(message: string, options?: { cause?: unknown; code?: StoreErrorCode }) {
    super(message, options?.code ?? "ABGATE_ERR_STORE", options);
    this.name = "StoreError";
  }
}

/**
 * Why a proxied request failed upstream. Mapped to an HTTP status in exactly one place (`upstreamStatus`).
 * - connect: the replica refused or the connection failed before any byte was sent (retry-safe)
 * - reset: the connection broke after the request was (partly) sent
 * - timeout: the replica did not answer within the response timeout
 * - protocol: the replica answered something that is not HTTP/1.1
 * - no_replica: the variant has no healthy replica and fallback is `reject`
 */
export type UpstreamFailure = "connect" | "reset" | "timeout" | "protocol" | "no_replica";

export class UpstreamError extends AbgateError {
  readonly failure: UpstreamFailure;
  /** the replica's answer was fine, only this client cannot be sent it: not held against the replica's health */
  readonly clientOnly: boolean;
  constructor(failure: UpstreamFailure, message: string, options?: { cause?: unknown; clientOnly?: boolean }) {
    super(message, `ABGATE_ERR_UPSTREAM_${failure.toUpperCase()}`, options);
    this.name = "UpstreamError";
    this.failure = failure;
    this.clientOnly = options?.clientOnly ?? false;
  }
}

/** The one place where upstream failures become HTTP statuses (as fastify-reply-from and HAProxy do). */
export function upstreamStatus(failure: UpstreamFailure): 502 | 503 | 504 {
  switch (failure) {
    case "timeout":
      return 504;
    case "no_replica":
      return 503;
    case "connect":
    case "reset":
    case "protocol":
      return 502;
  }
}

/** Exit codes of the CLI: 0 ok, 1 failure, 2 usage or config error. */
export function exitCodeFor(err: unknown): 1 | 2 {
  if (err instanceof ConfigError || err instanceof InvalidArgumentError) return 2;
  return 1;
}

/**
 * A value from a request, as an error message shows it: a string quoted and cut at 60 characters, anything else by
 * its kind. (JSON.stringify of it overflowed the stack on 20,000 nested arrays, a 500, and echoed any size.)
 */
export function shown(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(cut(value));
  if (value === null || typeof value === "number" || typeof value === "boolean") return String(value);
  if (value === undefined) return "nothing";
  return Array.isArray(value) ? "an array" : `a${typeof value === "object" ? "n object" : ` ${typeof value}`}`;
}

/** Text from a request cut at 60 characters for an error message, with an ellipsis when cut. */
export function cut(text: string): string {
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}
