import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { isIP, type Socket } from "node:net";
import { AbgateError, InvalidArgumentError, RequestError, shown, StoreError } from "../errors.ts";
import type { Logger } from "../log/index.ts";
import type { LogThrottle } from "../log/throttle.ts";
import type { AdminContext } from "./context.ts";
import type { GatewayMetrics } from "./metrics.ts";
import { eventsBodyProblem, MAX_EVENTS_PER_REQUEST, parseEventsInSlices } from "./events.ts";
import { createDashboardHandler, type DashboardHandler } from "../dashboard/routes.ts";

const MAX_JSON_BYTES = 16 * 1024 * 1024;
const BODY_TOO_LARGE = "ABGATE_ERR_BODY_TOO_LARGE";
/** How long a connection whose body we refused may keep sending (discarded) after our answer, like nginx's lingering_time. */
const LINGER_MS = 2_000;

export interface AdminServerContext extends AdminContext {
  metrics: GatewayMetrics;
  log: Logger;
  /** failed requests' lines, a burst of each kind per second and then a count (see LogThrottle) */
  throttledLog: LogThrottle;
  /** true when the request carries the configured ingest token (false when none is configured) */
  isIngestToken(authorization: string | undefined): boolean;
}

function sendJson(res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(text), "cache-control": "no-store", ...extra });
  res.end(text);
}

/** Strict: a byte sequence that is not UTF-8 throws instead of becoming U+FFFD. (A BOM is skipped, RFC 8259 §8.1 allows it.) */
const utf8 = new TextDecoder("utf-8", { fatal: true });

/** `check`: what makes a body refused before it is parsed (see eventsBodyProblem). */
function readJson(req: IncomingMessage, check?: (body: Buffer) => { status: number; message: string } | undefined): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const ct = req.headers["content-type"];
    if (ct && !/^application\/(.+\+)?json\b/i.test(ct)) {
      req.resume();
      return reject(new RequestError(`content-type must be application/json (got ${ct})`, 415, "ABGATE_ERR_MEDIA_TYPE"));
    }
    // RFC 9110 §15.5.16: a content coding the server does not decode is a 415. Read as JSON, a gzip body was a 400
    // "invalid JSON", which sends the client looking for a bug in its JSON.
    const coding = req.headers["content-encoding"];
    if (coding !== undefined && !/^\s*(identity\s*)?$/i.test(coding)) {
      req.resume();
      return reject(Object.assign(new RequestError(`content-encoding ${shown(coding)} is not accepted: send the body uncompressed`, 415, "ABGATE_ERR_MEDIA_TYPE"), { acceptEncoding: "identity" }));
    }
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > MAX_JSON_BYTES) {
      req.resume();
      return reject(new RequestError(`body of ${declared} bytes exceeds ${MAX_JSON_BYTES}`, 413, BODY_TOO_LARGE));
    }
    let chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on("data", (c: Buffer) => {
      if (tooLarge) return;
      size += c.length;
      if (size > MAX_JSON_BYTES) {
        // Not req.destroy(): that resets the connection before the 413 is written. The rest is read and dropped
        // until the answer is out, then the connection is closed (closeAfterAnswer).
        tooLarge = true;
        chunks = [];
        reject(new RequestError(`body exceeds ${MAX_JSON_BYTES} bytes`, 413, BODY_TOO_LARGE));
        return;
      }
      chunks.push(c);
    });
    // A client gone before its body ended is the client's doing (nginx's 499), not a failure of this server.
    req.on("error", (err) => reject(new RequestError("the client closed the connection before its body ended", 499, "ABGATE_ERR_CLIENT_CLOSED", { cause: err })));
    req.on("end", () => {
      if (tooLarge) return;
      const body = Buffer.concat(chunks);
      const problem = check?.(body);
      if (problem) return reject(new RequestError(problem.message, problem.status, "ABGATE_ERR_EVENT_INVALID"));
      let text: string;
      try {
        text = utf8.decode(body);
      } catch (err) {
        // Decoded leniently, each bad byte became U+FFFD: two units that differ only there would be stored as one.
        return reject(new RequestError("body is not valid UTF-8 (RFC 8259 §8.1: JSON is UTF-8)", 400, "ABGATE_ERR_BAD_JSON", { cause: err }));
      }
      if (!text.trim()) return reject(new RequestError("empty body: expected JSON", 400, "ABGATE_ERR_BAD_JSON"));
      try {
        resolve(JSON.parse(text));
      } catch (err) {
        reject(new RequestError(`invalid JSON: ${(err as Error).message}`, 400, "ABGATE_ERR_BAD_JSON", { cause: err }));
      }
    });
  });
}

/**
 * A connection whose body is left unread cannot carry another request, so the answer says `connection: close`.
 * Node then ends it with socket.destroySoon(), which destroys the socket once our FIN is out: the kernel answers
 * the bytes the client is still sending with a reset, which can reach the client before it has read the answer
 * (it sees ECONNRESET, not the 413). So, as nginx's lingering close does, shut only our side, keep discarding what
 * arrives, and destroy when the client closes too or after LINGER_MS.
 */
function closeAfterAnswer(req: IncomingMessage): Record<string, string> {
  const socket = req.socket;
  socket.destroySoon = function (this: Socket) {
    if (this.writable) this.end();
    const whenSent = (): void => void (this.writableFinished ? this.destroy() : this.once("finish", () => this.destroy()));
    if (this.readableEnded) return whenSent();
    const timer = setTimeout(() => this.destroy(), LINGER_MS);
    this.once("close", () => clearTimeout(timer));
    this.once("end", whenSent);
  };
  req.resume();
  return { connection: "close" };
}

/**
 * The site a browser says sent this request, when it is not this listener's own: a page elsewhere posting here
 * (cross-site request forgery). Events need no token unless `ingestToken` is set, and a body sent with no
 * content type is a "simple" request that a browser sends cross-origin without asking first, so any page the
 * operator opened could post outcomes. The rule is Go's CrossOriginProtection (net/http, 1.25):
 * - a request with an Authorization header is not a simple request (a browser asks first, and this listener allows
 *   no other origin), so it is not checked: the dashboard's own changes carry the token, behind a proxy too;
 * - Sec-Fetch-Site, when the browser sends it, decides: same-origin or none pass, cross-site and same-site (another
 *   port of the host) do not;
 * - else an Origin must name this listener's host (as the Host header does, case aside, default port aside);
 * - no Origin: not a browser's cross-origin request (curl, SDKs, services), which passes.
 */
function crossSiteOrigin(req: IncomingMessage): string | undefined {
  if (req.headers.authorization !== undefined) return undefined;
  const site = req.headers["sec-fetch-site"];
  const origin = req.headers.origin;
  if (site !== undefined) return site === "same-origin" || site === "none" ? undefined : (origin ?? site);
  if (origin === undefined) return undefined;
  try {
    const host = req.headers.host;
    const from = new URL(origin);
    // (read with the origin's scheme, so that its default port is dropped from both, and both are lower case)
    if (host !== undefined && from.host === new URL(`${from.protocol}//${host}`).host) return undefined;
  } catch {
    // "null" (a sandboxed frame, a file: page) or garbage: not this listener
  }
  return origin;
}

/**
 * Whether the Host header names this listener, against DNS rebinding: a page on attacker.example whose name then
 * resolves to 127.0.0.1 is same-origin to the browser, so it could read the report and, with no ingest token, post
 * events (the Origin checks above pass). Such a request carries its own name in Host. Allowed: no Host (HTTP/1.0),
 * IP addresses, localhost and its subdomains, the listen host, and `admin.allowedHosts` (a name a reverse proxy
 * forwards; ".example.com" for subdomains, "*" for any), as Vite's and webpack-dev-server's allowedHosts do.
 */
export function hostAllowed(hostHeader: string | undefined, listenHost: string, allowed: readonly string[]): boolean {
  if (hostHeader === undefined || hostHeader === "") return true;
  // Only a loopback listener is checked unless names are given: one on 0.0.0.0 or a LAN address is meant to be
  // reached by whatever name leads there (a compose service, a cluster DNS name), and events from app servers by name
  // were refused. A page that rebinds a name to the operator's machine reaches its loopback listeners.
  if (allowed.length === 0 && !isLoopback(listenHost)) return true;
  let name: string;
  try {
    // (a trailing dot is the same name, fully qualified)
    name = new URL(`http://${hostHeader}`).hostname.toLowerCase().replace(/\.$/, "");
  } catch {
    return false;
  }
  const bare = name.startsWith("[") ? name.slice(1, -1) : name;
  if (isIP(bare) !== 0 || name === "localhost" || name.endsWith(".localhost")) return true;
  if (name === listenHost.toLowerCase()) return true;
  return allowed.some((a) => {
    const entry = a.toLowerCase().replace(/\.$/, "");
    return entry === "*" || entry === name || (entry.startsWith(".") && (name.endsWith(entry) || name === entry.slice(1)));
  });
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || h.startsWith("127.") || h.endsWith(".localhost");
}

/**
 * Node keeps the first of several Authorization headers and drops the rest; a proxy in front may keep the last.
 * Which credentials such a request carries is ambiguous, so it has none: a 400 (as Go's and nginx's auth modules do).
 */
function ambiguousAuthorization(req: IncomingMessage): RequestError | undefined {
  return (req.headersDistinct.authorization?.length ?? 0) > 1 ? new RequestError("more than one Authorization header: send one", 400, "ABGATE_ERR_BAD_REQUEST") : undefined;
}

function numberMap(body: unknown): Map<string, number> {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new RequestError('expected an object of weights, e.g. {"control": 20, "treatment": 80}', 400, "ABGATE_ERR_WEIGHTS_INVALID");
  }
  // A Map, not a plain object: `out["__proto__"] = 5` sets the prototype instead of a key, so the change would be
  // answered 200 and do nothing. Object.fromEntries of it makes "__proto__" an own key, which the strategies'
  // mergeWeights then refuses as an unknown variant like any other.
  const out = new Map<string, number>();
  for (const [k, v] of Object.entries(body)) {
    if (typeof v !== "number" || !Number.isFinite(v)) throw new RequestError(`${shown(k)}: weight must be a finite number`, 400, "ABGATE_ERR_WEIGHTS_INVALID");
    out.set(k, v);
  }
  return out;
}

export interface AdminServer {
  server: Server;
  dashboard: DashboardHandler;
  /**
   * Requests received and not yet answered (their response not closed). Stopping waits for these: a POST /v1/events
   * cut off after its write started may still be stored, and a client that retries it would store it twice.
   */
  inFlight(): number;
}

/**
 * The admin listener: reads are open, changes need the admin bearer token (401 otherwise), events need the
 * ingest token when one is configured. The dashboard's routes are mounted first.
 */
export function createAdminServer(ctx: AdminServerContext): AdminServer {
  const dashboard = createDashboardHandler(ctx);
  const knownEvents = new Set(ctx.config.metrics.flatMap((m) => ("event" in m ? [m.event] : [])));
  const variants = ctx.config.variants.map((v) => v.name);

  /** Why `path` refuses a request with this Authorization header (401), or undefined: one rule for the routes and for Expect: 100-continue. */
  const tokenRefusal = (path: string, authorization: string | undefined): RequestError | undefined => {
    if (path === "/v1/events") {
      const mayIngest = !ctx.config.admin.ingestToken || ctx.isIngestToken(authorization) || ctx.isAdmin(authorization);
      return mayIngest ? undefined : new RequestError("posting events needs the ingest token: authorization: Bearer <token>", 401, "ABGATE_ERR_UNAUTHORIZED");
    }
    if (path !== "/v1/weights" && path !== "/v1/promote" && path !== "/v1/rollback") return undefined;
    if (ctx.isAdmin(authorization)) return undefined;
    // The ingest token is a credential, only not one for this (RFC 6750 §3.1, insufficient_scope): a 401 would say
    // it was not recognised, and a client would be right to ask for a new one.
    if (ctx.isIngestToken(authorization)) return new RequestError("the ingest token may only post events; this change needs the admin token", 403, "ABGATE_ERR_FORBIDDEN");
    return new RequestError("this change needs the admin token: authorization: Bearer <token>", 401, "ABGATE_ERR_UNAUTHORIZED");
  };
  const requireToken = (path: string, req: IncomingMessage) => {
    const refusal = tokenRefusal(path, req.headers.authorization);
    if (refusal) throw refusal;
  };

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? "/";
    const path = url.split("?", 1)[0];
    const method = req.method ?? "GET";
    const ambiguous = ambiguousAuthorization(req);
    if (ambiguous !== undefined) throw ambiguous;
    // (a request with a token is no rebinding page's: such a page cannot know it)
    const authorization = req.headers.authorization;
    const authenticated = authorization !== undefined && (ctx.isAdmin(authorization) || ctx.isIngestToken(authorization));
    if (!authenticated && !hostAllowed(req.headers.host, ctx.config.admin.listen.host, ctx.config.admin.allowedHosts)) {
      throw new RequestError(
        `Host ${shown(req.headers.host ?? "")} is not a name of this listener (IP addresses, localhost, ${ctx.config.admin.listen.host}, or admin.allowedHosts): refused, as a page on another name could read or post here (DNS rebinding)`,
        403,
        "ABGATE_ERR_HOST",
      );
    }
    if (await dashboard(req, res)) return;
    if (method !== "GET" && method !== "HEAD") {
      const foreign = crossSiteOrigin(req);
      if (foreign !== undefined) {
        throw new RequestError(`a change from a page of another site (${shown(foreign)}) is refused: browsers may not post to this listener for other sites`, 403, "ABGATE_ERR_CROSS_SITE");
      }
    }
    const allow = (methods: string) => {
      // HEAD wherever GET is (Node sends a HEAD answer's headers without its body), as the dashboard's routes do.
      const allowed = methods.split(",").flatMap((m) => (m === "GET" ? ["GET", "HEAD"] : [m]));
      if (!allowed.includes(method)) {
        // RFC 9110 §15.5.6: a 405 names the allowed methods in Allow.
        throw Object.assign(new RequestError(`${method} is not allowed on ${path} (allowed: ${allowed.join(", ")})`, 405, "ABGATE_ERR_METHOD"), { allow: allowed.join(", ") });
      }
    };
    switch (path) {
      case "/v1/experiment":
        allow("GET");
        return sendJson(res, 200, await ctx.experimentView());
      case "/v1/report":
        allow("GET");
        return sendJson(res, 200, await ctx.report());
      case "/metrics":
        allow("GET");
        res.writeHead(200, { "content-type": ctx.metrics.registry.contentType });
        res.end(await ctx.metrics.text());
        return;
      case "/healthz":
        allow("GET");
        return sendJson(res, 200, { ok: true });
      case "/v1/weights": {
        allow("PUT,POST");
        requireToken(path, req);
        const weights = Object.fromEntries(numberMap(await readJson(req)));
        await ctx.setWeights(weights);
        ctx.log.info({ weights }, "weights changed");
        // A map, as the request and promote's and rollback's answers are.
        return sendJson(res, 200, { weights: Object.fromEntries((await ctx.experimentView()).variants.map((v) => [v.name, v.weight])) });
      }
      case "/v1/promote": {
        allow("POST");
        requireToken(path, req);
        const body = (await readJson(req)) as { variant?: unknown };
        const target = body && typeof body === "object" ? body.variant : undefined;
        if (typeof target !== "string" || !variants.includes(target)) {
          throw new RequestError(`variant: one of ${variants.join(", ")} (got ${shown(target)})`, 400, "ABGATE_ERR_UNKNOWN_VARIANT");
        }
        await ctx.setWeights(Object.fromEntries(variants.map((v) => [v, v === target ? 100 : 0])));
        ctx.log.info({ variant: target }, "variant promoted: all traffic to it");
        return sendJson(res, 200, { promoted: target, weights: Object.fromEntries(variants.map((v) => [v, v === target ? 100 : 0])) });
      }
      case "/v1/rollback": {
        allow("POST");
        requireToken(path, req);
        if (req.headers["content-length"] && req.headers["content-length"] !== "0") await readJson(req).catch(() => undefined);
        const control = ctx.config.control;
        await ctx.setWeights(Object.fromEntries(variants.map((v) => [v, v === control ? 100 : 0])));
        ctx.log.info({ variant: control }, "rolled back: all traffic to the control");
        return sendJson(res, 200, { rolledBackTo: control, weights: Object.fromEntries(variants.map((v) => [v, v === control ? 100 : 0])) });
      }
      case "/v1/events": {
        allow("POST");
        requireToken(path, req);
        const body = await readJson(req, (bytes) => eventsBodyProblem(bytes, MAX_EVENTS_PER_REQUEST));
        const events = await parseEventsInSlices(body, ctx.config.experiment, knownEvents, Date.now());
        await ctx.store.writeEvents(events);
        const counts = new Map<string, number>();
        for (const e of events) counts.set(e.event, (counts.get(e.event) ?? 0) + 1);
        ctx.metrics.eventsIngested(counts);
        return sendJson(res, 200, { accepted: events.length });
      }
      default:
        throw new RequestError(`no route ${method} ${path}`, 404, "ABGATE_ERR_NOT_FOUND");
    }
  }

  let inFlight = 0;
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 120_000, keepAliveTimeout: 5_000 }, (req, res) => handle(req, res));
  // Expect: 100-continue: Node says "continue" to every such request unless told otherwise, so a client without the
  // token sent its whole body (up to 16 MiB) to be refused. A request that will be refused for its token is answered
  // at once, without the 100, and its connection closed (the client may send the body anyway, RFC 9110 §10.1.1).
  server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => {
    const refused = ambiguousAuthorization(req) !== undefined || tokenRefusal((req.url ?? "/").split("?", 1)[0]!, req.headers.authorization) !== undefined;
    if (refused) res.shouldKeepAlive = false;
    else res.writeContinue();
    handle(req, res);
  });

  function handle(req: IncomingMessage, res: ServerResponse): void {
    // 'close' comes once per response: after it is sent, or when its connection is gone.
    inFlight++;
    res.once("close", () => inFlight--);
    route(req, res).catch((err: unknown) => {
      let status = 500;
      let code = "ABGATE_ERR_INTERNAL";
      if (err instanceof RequestError) {
        status = err.status;
        code = err.code;
      } else if (err instanceof InvalidArgumentError) {
        status = 400;
        code = err.code;
      } else if (err instanceof AbgateError) {
        code = err.code;
        // The database is down or refused the write: a condition of the service, not of the request, which the
        // client can retry (POST /v1/events is all or nothing, so nothing of it was stored), unless the code is
        // ABGATE_ERR_STORE_OUTCOME_UNKNOWN: the COMMIT's answer was lost and its outcome could not be learnt, so the
        // events may be stored. That is a 500 without Retry-After: a client that resent on the 503 stored them twice.
        if (err instanceof StoreError) status = err.code === "ABGATE_ERR_STORE_OUTCOME_UNKNOWN" ? 500 : 503;
      }
      const message = err instanceof Error ? err.message : String(err);
      // Keyed by what failed, not by the path: a path is the client's to vary.
      if (status >= 500) ctx.throttledLog.error(`${status} ${code}`, { err, path: req.url }, "admin request failed");
      else ctx.throttledLog.info(`${status} ${code}`, { status, code, path: req.url, method: req.method }, message);
      if (res.headersSent) return void res.destroy();
      const extra: Record<string, string> = status === 401 ? { "www-authenticate": 'Bearer realm="abgate"' } : status === 503 ? { "retry-after": "5" } : {};
      const allowHeader = (err as { allow?: unknown } | null | undefined)?.allow;
      if (status === 405 && typeof allowHeader === "string") extra.allow = allowHeader;
      const acceptEncoding = (err as { acceptEncoding?: unknown } | null | undefined)?.acceptEncoding;
      if (status === 415 && typeof acceptEncoding === "string") extra["accept-encoding"] = acceptEncoding;
      if (code === BODY_TOO_LARGE) Object.assign(extra, closeAfterAnswer(req));
      sendJson(res, status, { error: message, code }, extra);
    });
  }
  return { server, dashboard, inFlight: () => inFlight };
}
