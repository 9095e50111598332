import type { Server, Socket } from "node:net";
import { connect } from "node:net";
import { randomBytes, randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { Config } from "../config/index.ts";
import { UpstreamError, upstreamStatus, type UpstreamFailure } from "../errors.ts";
import type { Logger } from "../log/index.ts";
import type { LogThrottle } from "../log/throttle.ts";
import type { Strategy } from "../strategies/types.ts";
import { MAX_UNIT_CHARS, type Exposure } from "../store/types.ts";
import type { GatewayMetrics } from "../admin/metrics.ts";
import type { Balancer, Replica } from "./balancer.ts";
import { ClientServer, httpDate, reasonPhrase, type ClientConnection, type ClientExchange, type ClientRequest } from "./client.ts";
import { ABGATE_RESPONSE_HEADERS, HOP_BY_HOP, asciiSet, connectionTokens, cookieValue, onlyFrom, queryValue, trustedPeers } from "./headers.ts";
import { bareLfHeadEnd, hasBareCrOrLf, isPooledPiece, MAX_HEAD_BYTES, releaseBodyPiece, type UpstreamConnection, type UpstreamSink } from "./upstream.ts";
import type { LiveStats } from "./live.ts";

export const FORCE_HEADER = "x-abgate-force-variant";

export interface ProxyContext {
  config: Config;
  strategy: Strategy;
  balancer: Balancer;
  /** null when exposure logging is off */
  exposures: { push(e: Exposure): void } | null;
  live: LiveStats;
  metrics: GatewayMetrics;
  log: Logger;
  /** the per-request failure lines, a burst of each kind per second and then a count (see LogThrottle) */
  throttledLog: LogThrottle;
  /** requests between arrival and their exposure record (what a drain waits for) */
  counters: { inFlight: number };
  /** set when the drain's deadline cuts the connections still busy: their requests were cut by abgate, not the client */
  cutByDrain?: boolean;
}

/** The characters encodeURIComponent leaves as they are (ECMA-262 uriUnreserved). */
const URI_COMPONENT_CHARS = asciiSet("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()");

/**
 * The end of every head abgate forwards to a replica, a request's or a handshake's: what it tells the replica of the
 * request (its id, the variant serving it, its unit), and the blank line.
 */
function forwardedFields(requestId: string, variant: string, unit: string): string {
  // (most units need no escaping: encodeURIComponent would still make a copy of each)
  const encoded = onlyFrom(URI_COMPONENT_CHARS, unit) ? unit : encodeURIComponent(unit);
  return `x-abgate-request-id: ${requestId}\r\nx-abgate-variant: ${variant}\r\nx-abgate-unit: ${encoded}\r\n\r\n`;
}

/**
 * The variant that serves in place of `variant` (the config's `fallback`), if it is another one and has a healthy
 * replica. Never for a forced request: whoever forces a variant (QA, a test of the new model) asks for that one, and
 * a 200 from the control would pass their check against the wrong model; they get the 503, as Envoy's header
 * routing to a subset with no healthy host gives.
 */
function fallbackFor(ctx: ProxyContext, variant: string, forced: boolean): string | undefined {
  const fb = ctx.config.fallback;
  return !forced && fb !== "reject" && fb !== variant && ctx.balancer.hasHealthy(fb) ? fb : undefined;
}

/** Status recorded for a request whose client went away before the response ended (nginx's convention). */
const CLIENT_CLOSED = 499;
/** Status recorded for a request still running when the drain's deadline cut it: abgate stopped serving it. */
const CUT_BY_DRAIN = 503;

/** What one pass over a request's headers finds: the values abgate acts on, and the head to send upstream. */
interface ScannedRequest {
  /** request line and forwarded headers, without the x-abgate-* lines and the final blank line */
  baseHead: string;
  unitHeader: string | undefined;
  cookie: string | undefined;
  force: string | undefined;
  host: string | undefined;
  /** more than one Host line (RFC 9112 §3.2: answered 400) */
  duplicateHost: boolean;
  /** an absolute-form target's authority, already sent as the Host line */
  authority: string | undefined;
  contentLength: string | undefined;
  /** the client's Transfer-Encoding (llhttp only accepts it with chunked last), undefined when none */
  transferEncoding: string | undefined;
  expect: string | undefined;
}

/**
 * One pass over the raw header list. Hop-by-hop headers, `expect`, and the client's own x-forwarded-* and
 * x-abgate-* are not forwarded; x-forwarded-for is extended with the client's address.
 */
function scanRequest(req: ClientRequest, remoteAddress: string, unitHeaderName: string | undefined, trustedPeer = false): ScannedRequest {
  const h = req.headers;
  let target = req.url;
  /** the authority of an absolute-form target, which replaces Host (RFC 9112 §3.2.2) */
  let authority: string | undefined;
  if (target.charCodeAt(0) !== 47 /* / */ && target !== "*") {
    const absolute = originForm(req.method, target);
    if (absolute !== undefined) ({ target, authority } = absolute);
  }
  let head = `${req.method} ${target} HTTP/1.1\r\n`;
  let xff = "";
  let unitHeader: string | undefined;
  let cookie: string | undefined;
  let force: string | undefined;
  let host: string | undefined;
  let duplicateHost = false;
  let contentLength: string | undefined;
  let transferEncoding: string | undefined;
  let expect: string | undefined;
  let connection: string | undefined;
  /** a trusted peer's (forwardedHeaders.trustedIPs) last X-Forwarded-Proto and -Host, passed on if well-formed */
  let givenProto: string | undefined;
  let givenHost: string | undefined;
  for (let i = 0; i < h.length; i += 2) {
    const name = h[i];
    const value = h[i + 1];
    const lower = name.toLowerCase();
    switch (lower) {
      case "host":
        if (host === undefined) host = value;
        else duplicateHost = true;
        if (authority !== undefined) continue;
        break;
      case "content-length":
        contentLength = value;
        break;
      case "transfer-encoding":
        transferEncoding = transferEncoding === undefined ? value : `${transferEncoding}, ${value}`;
        continue;
      case "connection":
        connection = connection === undefined ? value : `${connection}, ${value}`;
        continue;
      case "expect":
        expect = value;
        continue;
      case "cookie":
        cookie = cookie === undefined ? value : `${cookie}; ${value}`;
        break;
      case "forwarded":
      case "x-real-ip":
        // RFC 7239's Forwarded and X-Real-IP say what X-Forwarded-* say (Rack 3 reads Forwarded first): a client's
        // own could make an application build https:// or another site's links. Passed on from a trusted peer only.
        if (!trustedPeer) continue;
        break;
      default:
        if (lower === unitHeaderName) {
          unitHeader ??= value;
          break;
        }
        if (lower.charCodeAt(0) === 120 /* x */ && (lower.startsWith("x-forwarded-") || lower.startsWith("x-abgate-"))) {
          if (lower === "x-forwarded-for") xff = xff ? `${xff}, ${value}` : value;
          else if (lower === FORCE_HEADER) force ??= value;
          // (the last value: the one the nearest trusted peer set or added; earlier ones may be the client's own)
          else if (trustedPeer && lower === "x-forwarded-proto") givenProto = lastListValue(value);
          else if (trustedPeer && lower === "x-forwarded-host") givenHost = lastListValue(value);
          continue;
        }
        if (HOP_BY_HOP.has(lower)) continue;
    }
    head += `${name}: ${value}\r\n`;
  }
  const listed = connectionTokens(connection);
  if (listed !== undefined) {
    // Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1). Rare, so the head is rebuilt only then.
    head = `${req.method} ${target} HTTP/1.1\r\n`;
    for (let i = 0; i < h.length; i += 2) {
      const lower = h[i].toLowerCase();
      if (listed.has(lower) || HOP_BY_HOP.has(lower) || lower === "expect" || lower.startsWith("x-forwarded-") || lower.startsWith("x-abgate-")) continue;
      if (!trustedPeer && (lower === "forwarded" || lower === "x-real-ip")) continue;
      if (lower === "host" && authority !== undefined) continue;
      head += `${h[i]}: ${h[i + 1]}\r\n`;
    }
  }
  // (`host` stays the client's Host line, whose absence on HTTP/1.1 is still a 400, RFC 9112 §3.2)
  if (authority !== undefined) head += `host: ${authority}\r\n`;
  // A client's own X-Forwarded-Proto and -Host are replaced: a client could otherwise make an application build
  // https:// or another site's links. A trusted peer's (a TLS terminator in front) are what the client used.
  const proto = givenProto !== undefined && /^[A-Za-z][A-Za-z0-9+.-]{0,15}$/.test(givenProto) ? givenProto.toLowerCase() : "http";
  head += `x-forwarded-for: ${xff ? `${xff}, ${remoteAddress}` : remoteAddress}\r\nx-forwarded-proto: ${proto}\r\n`;
  const forwardedHost = givenHost !== undefined && givenHost !== "" && onlyFrom(HOST_CHARS, givenHost) ? givenHost : (authority ?? host);
  if (forwardedHost !== undefined) head += `x-forwarded-host: ${forwardedHost}\r\n`;
  // The body is re-chunked on its way up, so the framing stays chunked; any coding before it (gzip, chunked)
  // still applies to the bytes and is passed on.
  if (transferEncoding !== undefined) head += `transfer-encoding: ${transferEncoding}\r\n`;
  return { baseHead: head, unitHeader, cookie, force, host, duplicateHost, authority, contentLength, transferEncoding, expect };
}

/**
 * An absolute-form request target (`GET http://example.com/p?q HTTP/1.1`, as clients talking to a forward proxy
 * send) as origin-form and its authority: replicas are origin servers, many of which do not take absolute-form, and
 * the authority, not the Host line, names the host (RFC 9112 §3.2.2; nginx does the same). Undefined for anything
 * that is not an http(s) URL, which is forwarded as it came.
 */
function originForm(method: string, target: string): { target: string; authority: string } | undefined {
  // By hand rather than with URL: the path goes on exactly as the client wrote it (URL would resolve "..", and
  // re-encode characters).
  // (userinfo runs to the last "@" before the path, as WHATWG URL reads it)
  const m = /^https?:\/\/(?:[^/?#]*@)?([^/?#@]+)([^#]*)/i.exec(target);
  if (m === null) return undefined;
  const rest = m[2]!;
  // RFC 9112 §3.2.4: an OPTIONS for the server itself, absolute-form with an empty path, is `*` in origin-form terms
  if (method === "OPTIONS" && rest === "") return { target: "*", authority: m[1]! };
  return { target: rest.startsWith("/") ? rest : `/${rest}`, authority: m[1]! };
}

/**
 * One piece of a chunked body (RFC 9112 §7.1), size line, data and `after` (the piece's CRLF, or with the last piece
 * the CRLF and the terminating zero chunk) corked into one write. Returns the socket's backpressure verdict.
 */
function writeChunk(socket: Socket, chunk: Buffer, after = "\r\n", written?: () => void): boolean {
  socket.cork();
  socket.write(`${chunk.length.toString(16)}\r\n`, "latin1");
  socket.write(chunk, written);
  const ok = socket.write(after, "latin1");
  socket.uncork();
  return ok;
}

/** A request abgate answers itself instead of proxying, decided before the exchange's turn comes. */
interface Refusal {
  status: number;
  code: string;
  message: string;
  /** end the connection afterwards (the request body will not be read) */
  close: boolean;
}

/**
 * One proxied request. A class rather than closures so that the hot path allocates one object per request, and
 * every callback from either side is a prototype method.
 */
class Exchange implements UpstreamSink, ClientExchange {
  readonly ctx: ProxyContext;
  readonly conn: ClientConnection;
  readonly request: ClientRequest;
  readonly unit: string;
  /** the forced variant from the start; else the strategy's choice, made when the exchange's turn comes (start) */
  assigned: string;
  served: string;
  readonly forced: boolean;
  readonly requestId: string;
  /** requestId is requestIdPrefix + requestSeq in base 36: the exposure passes both, so the batcher need not read it */
  readonly requestSeq: number;
  readonly requestIdPrefix: string;
  readonly startMs: number;
  readonly ts: number;
  readonly setCookie: string | undefined;
  readonly baseHead: string;
  readonly hasBody: boolean;
  readonly chunkedBody: boolean;
  readonly expectContinue: boolean;
  /** an HTTP/1.0 request without Host: the replica's address stands in, as HTTP/1.1 upstream requires one */
  readonly hostMissing: boolean;
  refusal: Refusal | null = null;
  head = "";
  replica: Replica | null = null;
  upstream: UpstreamConnection | null = null;
  tried: Replica[] | null = null;
  attempts = 0;
  /** a replica of the served variant got the request (it failed after connecting): no fallback then */
  delivered = false;
  /** request body bytes that arrived before an upstream connection could take them */
  pendingBody: Buffer[] | null = null;
  bodyBytes = 0;
  /** body pieces go straight to the upstream socket (from then on, a stale-socket retry would resend them) */
  bodyFlowing = false;
  requestComplete = false;
  /** a 100 Continue went to the client (it was told to send its body) */
  continueSent = false;
  upstreamDone = false;
  recorded = false;
  status = 0;
  /** the response head, held back to go out with the first body piece */
  responseHead = "";
  chunkedOut = false;
  waitingClientDrain = false;
  waitingUpstreamDrain = false;
  /** retries after stale pooled sockets (each drops that replica's idle pool, so a few suffice) */
  staleRetries = 0;

  constructor(ctx: ProxyContext, conn: ClientConnection, request: ClientRequest, scan: ScannedRequest, known: Set<string>, ids: RequestIds, startMs: number) {
    this.ctx = ctx;
    this.conn = conn;
    this.request = request;
    this.requestId = ids.next();
    this.requestSeq = ids.seq;
    this.requestIdPrefix = ids.prefix;
    this.startMs = startMs;
    this.ts = Date.now();
    this.baseHead = scan.baseHead;
    this.chunkedBody = scan.transferEncoding !== undefined;
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing: close after it.
    if (this.chunkedBody && request.httpMinor === 0) request.keepAlive = false;
    const cl = scan.contentLength;
    this.hasBody = this.chunkedBody || (cl !== undefined && cl !== "0");
    this.expectContinue = scan.expect !== undefined && request.httpMinor === 1;
    this.hostMissing = scan.host === undefined && scan.authority === undefined;
    const { config } = ctx;
    const unit = givenUnit(config, request, scan);
    if (unit !== undefined) {
      this.unit = unit;
    } else {
      this.unit = randomUUID();
      this.setCookie = unitCookie(config.unit.cookie, this.unit);
    }
    const force = forcedVariant(config, scan);
    this.refusal = headRefusal(request, scan, this.unit, force, known);
    if (this.refusal === null) {
      const maxBody = config.limits.maxBodyBytes;
      if (scan.expect !== undefined && scan.expect.toLowerCase() !== "100-continue") {
        this.refusal = { status: 417, code: "ABGATE_ERR_BAD_REQUEST", message: `unsupported expectation "${scan.expect}"`, close: true };
      } else if (maxBody !== undefined && cl !== undefined && Number(cl) > maxBody) {
        this.refusal = { status: 413, code: "ABGATE_ERR_BODY_TOO_LARGE", message: `request body of ${cl} bytes exceeds ${maxBody}`, close: true };
      }
    }
    this.forced = force !== undefined;
    this.assigned = force ?? "";
    this.served = this.assigned;
  }

  start(): void {
    const refusal = this.refusal;
    if (refusal !== null) {
      this.upstreamDone = true;
      // (never assigned, so never recorded: no variant sees it)
      this.recorded = true;
      return this.respondError(refusal.status, refusal.code, refusal.message, refusal.close);
    }
    // Assigned only now, when no refusal came first: not when the head arrived, since a request pipelined behind
    // another may be refused before its turn (a chunked body past maxBodyBytes). A refused request is not assigned
    // and no exposure records it, as no variant sees it; the strategy never sees its unit either: round-robin would
    // give its turn to nobody, the bandit would remember a unit that was never exposed (and a refused one may be
    // 500 characters or a NUL).
    if (!this.forced) this.assigned = this.served = this.ctx.strategy.assign(this.unit, this.setCookie !== undefined);
    this.ctx.counters.inFlight++;
    if (!this.ctx.balancer.hasHealthy(this.assigned) && !this.fallBack()) {
      return this.fail(new UpstreamError("no_replica", `no healthy replica of variant ${this.assigned}${this.forced ? " (forced: no fallback)" : ""}`));
    }
    // The client waits for this before sending its body; the replica is not asked (the header is not forwarded).
    if (this.expectContinue && this.hasBody && !this.requestComplete) {
      this.conn.write("HTTP/1.1 100 Continue\r\n\r\n");
      this.continueSent = true;
    }
    this.head = this.buildHead();
    this.dispatch();
  }

  /** Switch to the fallback variant (logged via the exposure's served variant). False when there is none. */
  fallBack(): boolean {
    const fb = fallbackFor(this.ctx, this.served, this.forced);
    if (fb === undefined) return false;
    this.served = fb;
    this.tried = null;
    return true;
  }

  buildHead(replica?: Replica): string {
    const host = this.hostMissing && replica !== undefined ? `host: ${replica.pool.address}\r\n` : "";
    return `${this.baseHead}${host}${forwardedFields(this.requestId, this.served, this.unit)}`;
  }

  dispatch(): void {
    const { balancer } = this.ctx;
    let replica = balancer.pick(this.served, this.tried ?? undefined);
    if (!replica) {
      // Every replica of the variant failed to connect: they are down, whatever health said. Nothing was sent,
      // so the fallback variant can take the request. Not once a replica of the variant got the request and dropped
      // it: the request ran (or crashed it) there, so it is that variant's failure to report, not the fallback's
      // to serve a second time, which hid input-specific crashes from the error rate.
      if (this.served === this.assigned && !this.delivered && this.fallBack()) {
        this.head = this.buildHead();
        replica = balancer.pick(this.served);
      }
      if (!replica && this.delivered) return this.fail(new UpstreamError("reset", `variant ${this.served}'s replicas closed the connection without answering`));
      if (!replica) return this.fail(new UpstreamError(this.tried ? "connect" : "no_replica", `no healthy replica of variant ${this.served} could take the request`));
    }
    this.attempts++;
    this.replica = replica;
    if (this.hostMissing) this.head = this.buildHead(replica);
    replica.outstanding++;
    const upstream = replica.pool.acquire();
    this.upstream = upstream;
    upstream.send(this.head, this, this.request.method === "HEAD", !this.hasBody);
    if (this.hasBody) {
      // The body is sent only once the connection is up: a connect failure can then be retried elsewhere.
      if (upstream.socket.connecting) upstream.socket.once("connect", () => this.startBody(upstream));
      else this.startBody(upstream);
    }
  }

  startBody(upstream: UpstreamConnection): void {
    if (this.upstream !== upstream || this.upstreamDone) return;
    this.bodyFlowing = true;
    const pending = this.pendingBody;
    this.pendingBody = null;
    if (pending !== null) for (const chunk of pending) this.writeBody(chunk);
    if (this.requestComplete) this.endBody();
    else if (!this.waitingUpstreamDrain) this.conn.resumeReading();
  }

  onBody(chunk: Buffer): void {
    // Answered already, or to be refused when its turn comes: the rest of the body is read and dropped.
    if (this.upstreamDone || this.refusal !== null) return;
    this.bodyBytes += chunk.length;
    const maxBody = this.ctx.config.limits.maxBodyBytes;
    if (maxBody !== undefined && this.bodyBytes > maxBody) {
      if (this.conn.current !== this) {
        // Pipelined behind a request not yet answered: its 413 must wait its turn (start() gives it), or the client
        // would pair it with the earlier request; and nothing is counted in flight for it yet. Not assigned yet
        // either, and now never: no variant sees it.
        this.pendingBody = null;
        this.refusal = { status: 413, code: "ABGATE_ERR_BODY_TOO_LARGE", message: `request body exceeds ${maxBody} bytes`, close: true };
        return;
      }
      this.upstream?.abort();
      this.upstreamDone = true;
      this.release();
      return this.respondError(413, "ABGATE_ERR_BODY_TOO_LARGE", `request body exceeds ${maxBody} bytes`, true);
    }
    if (!this.bodyFlowing) {
      (this.pendingBody ??= []).push(chunk);
      this.conn.pauseReading();
      return;
    }
    this.writeBody(chunk);
  }

  writeBody(chunk: Buffer): void {
    const upstream = this.upstream!;
    const socket = upstream.socket;
    const ok = this.chunkedBody ? writeChunk(socket, chunk) : socket.write(chunk);
    upstream.touch();
    if (!ok && !this.waitingUpstreamDrain) {
      this.waitingUpstreamDrain = true;
      this.conn.pauseReading();
      socket.once("drain", () => {
        this.waitingUpstreamDrain = false;
        if (this.upstream === upstream && !this.upstreamDone) this.conn.resumeReading();
      });
    }
  }

  onBodyEnd(): void {
    this.requestComplete = true;
    if (this.bodyFlowing && !this.upstreamDone) this.endBody();
  }

  endBody(): void {
    if (this.chunkedBody) this.upstream!.socket.write("0\r\n\r\n", "latin1");
    this.upstream!.requestEnded();
  }

  /** With Transfer-Encoding, llhttp judges the head after its callback (see ClientExchange.startAfterHead). */
  get startAfterHead(): boolean {
    return this.chunkedBody;
  }

  get http10Client(): boolean {
    return this.conn.httpMinor === 0;
  }

  onHead(status: number, statusText: string, fields: string, contentLength: number, dated: boolean): void {
    // A 5xx counts against the replica now; a success only once the body is whole (onEnd): a replica that cuts off
    // every body must not end its failure streak with each head.
    if (status >= 500) this.ctx.balancer.failed(this.replica!, `answered ${status}`);
    this.status = status;
    const conn = this.conn;
    let head = `HTTP/1.1 ${status} ${statusText || reasonPhrase(status)}\r\n${fields}`;
    if (!dated) head += `date: ${httpDate()}\r\n`;
    head += `x-abgate-variant: ${this.served}\r\nx-abgate-request-id: ${this.requestId}\r\n`;
    if (this.setCookie) head += `set-cookie: ${this.setCookie}\r\n`;
    const noBody = this.request.method === "HEAD" || status === 204 || status === 304 || status < 200;
    if (!noBody && contentLength < 0) {
      // The replica's body ends with its chunks or its connection: re-frame it for this client.
      if (conn.httpMinor === 1) {
        head += "transfer-encoding: chunked\r\n";
        this.chunkedOut = true;
      } else conn.closing = true;
    }
    if (conn.closing || !conn.keepAlive || conn.server.draining) {
      conn.closing = true;
      head += "connection: close\r\n\r\n";
    } else head += conn.httpMinor === 0 ? "connection: keep-alive\r\n\r\n" : "\r\n";
    this.responseHead = head;
  }

  onData(chunk: Buffer): boolean {
    const conn = this.conn;
    // (called once the socket is done with the piece's bytes, written or failed; then the upstream side reuses them)
    const written = isPooledPiece(chunk) ? () => releaseBodyPiece(chunk) : undefined;
    let ok: boolean;
    if (this.chunkedOut) {
      const socket = conn.socket;
      socket.cork();
      this.flushHead();
      ok = writeChunk(socket, chunk, "\r\n", written);
      socket.uncork();
    } else if (this.responseHead) {
      ok = conn.writeHead(this.responseHead, chunk, false, written);
      this.responseHead = "";
    } else ok = conn.write(chunk, written);
    if (!ok) {
      this.waitingClientDrain = true;
      conn.sendBlocked();
    }
    return ok;
  }

  flushHead(): void {
    if (this.responseHead) {
      this.conn.writeHead(this.responseHead);
      this.responseHead = "";
    }
  }

  onReadEnd(): void {
    this.flushHead();
  }

  onInterim(head: string): void {
    // (before the final head only; a pipelined request's replica is not asked before its turn, so this client's
    // answer in progress is this exchange's)
    if (!this.conn.responseStarted && this.responseHead === "") this.conn.write(head);
  }

  onClientDrain(): void {
    if (this.waitingClientDrain) {
      this.waitingClientDrain = false;
      this.upstream?.resume();
    }
  }

  onEnd(last?: Buffer): void {
    this.upstreamDone = true;
    this.release();
    if (this.status < 500) this.ctx.balancer.succeeded(this.replica!);
    const conn = this.conn;
    if (this.chunkedOut) {
      const socket = conn.socket;
      socket.cork();
      this.flushHead();
      if (last && last.length > 0) writeChunk(socket, Buffer.from(last), "\r\n0\r\n\r\n");
      else socket.write("0\r\n\r\n", "latin1");
      socket.uncork();
    } else if (this.responseHead) {
      conn.writeHead(this.responseHead, last, true);
      this.responseHead = "";
    } else if (last) conn.write(Buffer.from(last));
    this.record(this.status);
    conn.responseDone(this);
  }

  onError(err: UpstreamError, beforeResponse: boolean, connected: boolean): void {
    const replica = this.replica!;
    const upstream = this.upstream!;
    this.release();
    const stale = connected && beforeResponse && upstream.reused && err.failure === "reset";
    // An answer that is not HTTP, or is cut short, counts as the replica's failure as a 5xx does; one that only this
    // client cannot be sent (clientOnly) does not.
    // (A 5xx was counted at its head: once is enough when its body then fails too.)
    if (!stale && !err.clientOnly && this.status < 500) this.ctx.balancer.failed(replica, err.message);
    const answered = this.conn.responseStarted || this.responseHead !== "";
    if (stale && !this.bodyFlowing && !answered && this.staleRetries < 3 && IDEMPOTENT_METHODS.has(this.request.method)) {
      // A pooled keep-alive socket the replica had already closed: not the replica's fault and not a retry of the
      // request. Only for idempotent methods: the replica may have acted on the request before it dropped the
      // connection, which a POST must not risk twice (RFC 9110 §9.2.2; Go's Transport and nginx do the same). Its
      // idle siblings are just as stale (a restarted or killed replica), so drop them all and try once more on a
      // fresh connection; if the replica is really gone, that fails as a connect error.
      this.staleRetries++;
      this.attempts--;
      replica.pool.dropIdle();
      this.ctx.log.debug({ requestId: this.requestId, replica: replica.id, err: err.message }, "stale keep-alive connection; retrying on a fresh one");
      return this.dispatch();
    }
    // Connect failures, and, like nginx's default proxy_next_upstream and HAProxy's retry-on empty-response, a
    // connection the replica dropped before answering an idempotent request that has no body (nothing was sent
    // that could not be sent again): a replica killed under load loses no request. A request with a body is not
    // retried: its bytes were streamed, not kept.
    const retryable =
      !answered &&
      (err.failure === "connect" || (err.failure === "reset" && beforeResponse && !this.hasBody && IDEMPOTENT_METHODS.has(this.request.method)));
    if (retryable && this.attempts <= this.ctx.config.limits.maxRetries) {
      if (err.failure !== "connect") this.delivered = true;
      (this.tried ??= []).push(replica);
      this.ctx.log.debug({ requestId: this.requestId, replica: replica.id, err: err.message }, "retrying on another replica");
      return this.dispatch();
    }
    this.upstreamDone = true;
    this.fail(err);
  }

  release(): void {
    if (this.replica && this.upstream) {
      this.replica.outstanding--;
      this.upstream = null;
    }
  }

  fail(err: UpstreamError): void {
    this.upstreamDone = true;
    const status = upstreamStatus(err.failure);
    this.ctx.throttledLog.warn(`${err.code} ${this.served} ${this.replica?.id ?? ""}`, { requestId: this.requestId, variant: this.served, replica: this.replica?.id, code: err.code }, err.message);
    if (this.conn.responseStarted) {
      // Mid-body: the only honest signal left is to cut the client's connection. The exposure says the request
      // failed (the status the client would have had), not the 200 it began with, which hid truncated answers
      // from the error rate. A reset, not a FIN: a close-delimited body (HTTP/1.0, or a replica's own) would
      // otherwise end as if whole.
      this.record(status);
      this.conn.reset();
      return;
    }
    this.responseHead = "";
    this.respondError(status, err.code, err.message, false);
  }

  respondError(status: number, code: string, message: string, close: boolean): void {
    const conn = this.conn;
    this.upstreamDone = true;
    // Answered before its body while the client may still be waiting for 100 Continue: it may send the body or not
    // (RFC 9110 §10.1.1), so whatever comes next cannot be read as the next request: end the connection.
    if (this.expectContinue && this.hasBody && !this.requestComplete && !this.continueSent) close = true;
    if (conn.responseStarted || conn.socket.destroyed) {
      this.record(status);
      return conn.reset();
    }
    const assigned = this.refusal === null;
    const body = JSON.stringify(assigned ? { error: message, code, requestId: this.requestId, variant: this.served } : { error: message, code, requestId: this.requestId });
    let headers = `content-type: application/json\r\nx-abgate-request-id: ${this.requestId}\r\n`;
    if (assigned) headers += `x-abgate-variant: ${this.served}\r\n`;
    // The exposure is recorded under the unit abgate made up: the client keeps it for its retry, which would
    // otherwise count as one more new unit.
    if (assigned && this.setCookie) headers += `set-cookie: ${this.setCookie}\r\n`;
    conn.respondNow(status, headers, body, close);
    this.record(status);
    conn.responseDone(this);
  }

  onClientClose(): void {
    if (this.recorded) return;
    // The client left before the response ended: free the replica and do not reuse the half-read socket.
    if (this.upstream) {
      this.upstream.abort();
      this.release();
    }
    this.upstreamDone = true;
    // (cut at the drain's deadline: abgate ended it, so not the client's 499)
    this.record(this.ctx.cutByDrain === true ? CUT_BY_DRAIN : CLIENT_CLOSED);
  }

  refuse(status: number, reason: string): void {
    this.refusal = { status, code: "ABGATE_ERR_BAD_REQUEST", message: reason, close: true };
  }

  onClientFault(status: number, reason: string): void {
    if (this.upstreamDone) return this.conn.destroy();
    if (this.upstream) {
      this.upstream.abort();
      this.release();
    }
    this.respondError(status, status === 408 ? "ABGATE_ERR_REQUEST_TIMEOUT" : "ABGATE_ERR_BAD_REQUEST", reason, true);
  }

  record(status: number): void {
    if (this.recorded) return;
    this.recorded = true;
    this.ctx.counters.inFlight--;
    const latencyMs = Math.round((performance.now() - this.startMs) * 1000) / 1000;
    const { ctx } = this;
    ctx.metrics.request(this.served, status, latencyMs);
    ctx.live.record(this.served, latencyMs, status >= 500, this.assigned);
    ctx.exposures?.push({
      experiment: ctx.config.experiment,
      ts: this.ts,
      requestId: this.requestId,
      requestSeq: this.requestSeq,
      requestIdPrefix: this.requestIdPrefix,
      unit: this.unit,
      assigned: this.assigned,
      served: this.served,
      replica: this.replica?.id ?? "",
      status,
      latencyMs,
      forced: this.forced,
    });
  }
}

/** The unit a request names, in the config's order (header, query, cookie), or undefined when it names none. */
function givenUnit(config: ProxyContext["config"], request: ClientRequest, scan: ScannedRequest): string | undefined {
  const u = config.unit;
  let unit = headerText(scan.unitHeader);
  if (!unit && u.query) unit = ownString(queryValue(request.url, u.query));
  if (!unit) unit = ownString(headerText(cookieValue(scan.cookie, u.cookie)));
  return unit || undefined;
}

/**
 * A copy of `s` that does not keep a longer string alive: a value cut from the request target or the Cookie line
 * is, in V8, a slice that holds the whole line, and units are kept (the unit cache, the bandit's memory): a 30-character
 * unit from an 8 KB Cookie header kept 8 KB. Concatenation then slice makes V8 copy the characters.
 */
function ownString(s: string | undefined): string | undefined {
  return s === undefined ? undefined : (" " + s).slice(1);
}

/** The variant the request forces, when forcing is allowed and the header is not empty. */
function forcedVariant(config: ProxyContext["config"], scan: ScannedRequest): string | undefined {
  return (config.allowForce && scan.force) || undefined;
}

/**
 * Why a request is refused on its head alone, before any replica is asked, or null: an unknown forced variant, an
 * HTTP/1.1 request without Host or one with two, a unit no store could keep. Plain requests and WebSocket
 * handshakes get these same checks; each adds its own after them.
 */
function headRefusal(request: ClientRequest, scan: ScannedRequest, unit: string, force: string | undefined, known: Set<string>): Refusal | null {
  if (force !== undefined && !known.has(force)) {
    return { status: 400, code: "ABGATE_ERR_UNKNOWN_VARIANT", message: `unknown variant "${force}" in ${FORCE_HEADER}`, close: false };
  }
  if (request.httpMinor === 1 && scan.host === undefined) {
    return { status: 400, code: "ABGATE_ERR_BAD_REQUEST", message: "HTTP/1.1 request without a Host header", close: true };
  }
  const unitRefused = unitProblem(unit);
  if (unitRefused !== null) return { status: 400, code: "ABGATE_ERR_BAD_REQUEST", message: unitRefused, close: false };
  if (scan.duplicateHost) {
    return { status: 400, code: "ABGATE_ERR_BAD_REQUEST", message: "request with more than one Host header", close: true };
  }
  if (scan.host !== undefined && !onlyFrom(HOST_CHARS, scan.host)) {
    // RFC 9112 §3.2: a Host with an invalid value MUST get a 400. It would go on to the replica and into
    // x-forwarded-host, where an application building URLs from it would take "evil.example/" or "a b@c" as given.
    return { status: 400, code: "ABGATE_ERR_BAD_REQUEST", message: "invalid Host header", close: true };
  }
  if (scan.transferEncoding !== undefined && !chunkedLast(scan.transferEncoding)) {
    // RFC 9112 §6.1: the body's length cannot be known: 400 and close. llhttp finds it too, but only after the head
    // was handed over, and the exchange would already have sent it to a replica.
    return { status: 400, code: "ABGATE_ERR_BAD_REQUEST", message: `transfer-encoding "${scan.transferEncoding}" does not end with chunked`, close: true };
  }
  return null;
}

/** The last element of a comma-separated field value, trimmed. */
function lastListValue(value: string): string {
  return value.slice(value.lastIndexOf(",") + 1).trim();
}

/**
 * The characters a Host value may hold: RFC 3986's reg-name (unreserved, sub-delims, "%"), ":" and "[]" (a port, an
 * IP literal). Not its full grammar: a lookup per character, cheap on every request.
 */
const HOST_CHARS = asciiSet("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:[]");

/** Whether a Transfer-Encoding list's last coding is chunked (by token: "xchunked" is not; empty elements do not count). */
function chunkedLast(codings: string): boolean {
  const list = codings.split(",").map((c) => c.trim()).filter((c) => c !== "");
  return list.at(-1)?.toLowerCase() === "chunked";
}

/** Why a unit is refused (400), or null. The events API refuses such units too, so none could ever convert. */
function unitProblem(unit: string): string | null {
  if (unit.length > MAX_UNIT_CHARS) return `unit longer than ${MAX_UNIT_CHARS} characters`;
  // ?user=a%00b: no store is asked to keep a NUL (PostgreSQL cannot).
  if (unit.includes("\u0000")) return "unit contains NUL";
  return null;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A unit from a header or cookie, as text. Node's parser gives header values one character per byte, so a UTF-8
 * id ("zoë") would be stored, hashed and matched against events as other characters than the same id from the
 * query string or in an event's JSON; its bytes are decoded as UTF-8. Bytes that are not UTF-8 stay as they came.
 */
function headerText(value: string | undefined): string | undefined {
  if (value === undefined) return value;
  let ascii = true;
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 127) {
      ascii = false;
      break;
    }
  }
  if (ascii) return value;
  try {
    return utf8.decode(Buffer.from(value, "latin1"));
  } catch {
    return value;
  }
}

/** RFC 9110 §9.2.2: methods whose repetition has the effect of one request. */
const IDEMPOTENT_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]);

/** Request ids: a per-process random prefix and a counter; unique, short, and cheap on the hot path. */
class RequestIds {
  /** "<8 random characters>-" */
  readonly prefix = `${randomBytes(6).toString("base64url")}-`;
  /** the number of the last id made */
  seq = 0;

  next(): string {
    return this.prefix + (++this.seq).toString(36);
  }
}

function unitCookie(name: string, id: string): string {
  return `${name}=${id}; Path=/; Max-Age=31536000; SameSite=Lax; HttpOnly`;
}

export interface ProxyServer {
  server: Server;
  /** requests being proxied now */
  inFlight(): number;
  /** stop accepting; idle keep-alive connections close now, busy ones after their current response */
  close(): void;
  closeIdleConnections(): void;
  closeAllConnections(): void;
  /** cut every upgraded (WebSocket) connection; they never end by themselves */
  closeTunnels(): void;
}

export function createProxyServer(ctx: ProxyContext): ProxyServer {
  const { config } = ctx;
  const limits = config.limits;
  const ids = new RequestIds();
  const unitHeaderName = config.unit.header?.toLowerCase();
  const tunnels = new Set<Socket>();
  const known = new Set(config.variants.map((v) => v.name));
  const trusted = trustedPeers(config.forwardedHeaders.trustedIPs);
  const clients = new ClientServer(
    { maxHeaderBytes: limits.maxHeaderBytes, headersTimeoutMs: limits.headersTimeoutMs, requestTimeoutMs: limits.requestTimeoutMs, idleTimeoutMs: limits.idleTimeoutMs },
    {
      request(conn, req) {
        const startMs = performance.now();
        // (once per connection: BlockList.check makes a SocketAddress each time, about 2 µs)
        const trustedPeer = trusted !== undefined && (conn.trustedPeer ??= trusted(conn.remoteAddress));
        const scan = scanRequest(req, conn.remoteAddress, unitHeaderName, trustedPeer);
        return new Exchange(ctx, conn, req, scan, known, ids, startMs);
      },
      upgrade(req, socket, head, remoteAddress) {
        proxyUpgrade(ctx, req, socket, head, remoteAddress, ids.next(), unitHeaderName, known, tunnels, trusted !== undefined && trusted(remoteAddress));
      },
      clientError(code, message) {
        ctx.log.debug({ code, err: message }, "client error");
      },
    },
  );
  return {
    server: clients.server,
    inFlight: () => ctx.counters.inFlight,
    close: () => clients.close(),
    closeIdleConnections: () => clients.closeIdleConnections(),
    closeAllConnections: () => {
      ctx.cutByDrain = true;
      clients.closeAllConnections();
    },
    closeTunnels: () => {
      for (const s of tunnels) s.destroy();
    },
  };
}

/** WebSocket (and other Upgrade) requests: one dedicated upstream connection, bytes piped both ways. */
function proxyUpgrade(ctx: ProxyContext, req: ClientRequest, client: Socket, headBytes: Buffer, remoteAddress: string, requestId: string, unitHeaderName: string | undefined, known: Set<string>, tunnels: Set<Socket>, trustedPeer: boolean): void {
  const startMs = performance.now();
  const ts = Date.now();
  const scan = scanRequest(req, remoteAddress, unitHeaderName, trustedPeer);
  const u = ctx.config.unit;
  const given = givenUnit(ctx.config, req, scan);
  const unit = given ?? randomUUID();
  const force = forcedVariant(ctx.config, scan);
  const forced = force !== undefined;
  // A made-up unit goes back with every answer to an assigned handshake, the replica's or abgate's own.
  const cookie = given !== undefined ? "" : `set-cookie: ${unitCookie(u.cookie, unit)}\r\n`;
  // Counted from the start, so that a stop cuts it whatever it is doing: a refused handshake's socket too.
  tunnels.add(client);
  client.once("close", () => tunnels.delete(client));
  const refuse = (status: number, code: string, why: string) => {
    ctx.log.debug({ requestId, err: why }, "upgrade refused");
    const body = JSON.stringify({ error: why, code, requestId });
    lingeringEnd(client, `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\ndate: ${httpDate()}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-abgate-request-id: ${requestId}\r\n\r\n${body}`);
  };
  // The checks a plain request gets, and one of its own: the handshake has no body (one would have been read by the
  // parser and lost, while its Content-Length went on to a replica left waiting).
  const refusal = headRefusal(req, scan, unit, force, known);
  if (refusal !== null) return refuse(refusal.status, refusal.code, refusal.message);
  if (scan.transferEncoding !== undefined || (scan.contentLength !== undefined && scan.contentLength !== "0")) {
    return refuse(400, "ABGATE_ERR_BAD_REQUEST", "an upgrade request must not have a body");
  }
  const assigned = forced ? force : ctx.strategy.assign(unit, given === undefined);
  let served = ctx.balancer.hasHealthy(assigned) ? assigned : (fallbackFor(ctx, assigned, forced) ?? assigned);
  let replica = ctx.balancer.pick(served);
  // In flight from here until its answer (or failure) is recorded, as a plain request is: a stop drains it, and a
  // stop that cuts it still records it. (A tunnel, once switched, is not: it may last for hours.)
  ctx.counters.inFlight++;
  let recorded = false;
  const record = (status: number) => {
    if (recorded) return;
    recorded = true;
    ctx.counters.inFlight--;
    const latencyMs = performance.now() - startMs;
    ctx.metrics.request(served, status, latencyMs);
    ctx.live.record(served, latencyMs, status >= 500, assigned);
    ctx.exposures?.push({ experiment: ctx.config.experiment, ts, requestId, unit, assigned, served, replica: replica?.id ?? "", status, latencyMs, forced });
  };
  /** the connection to the replica that has the handshake now */
  let upstream: Socket | undefined;
  /** the replica's answer began (from then on the tunnel, or the refusal, is passed on as it comes) */
  let answered = false;
  /** the exchange was answered by abgate and recorded: a failure, or the client gone */
  let settled = false;
  // A client that leaves before the answer (a tab closed mid-handshake) is its own doing, recorded as a plain
  // request's would be (499), not a failure of the replica: that ejected healthy replicas.
  const clientLeft = () => {
    if (answered || settled) return;
    settled = true;
    record(ctx.cutByDrain === true ? CUT_BY_DRAIN : CLIENT_CLOSED);
  };
  client.on("error", () => {
    // (before a replica is asked there is nothing to record: the upgrade was refused, or its 503 recorded)
    if (upstream !== undefined) clientLeft();
    upstream?.destroy();
  });
  const reject = (failure: UpstreamFailure, msg: string) => {
    // Once: a timeout and an error of the same connection are one failure, one answer and one exposure.
    if (settled) return;
    settled = true;
    const status = upstreamStatus(failure);
    ctx.throttledLog.warn(`upgrade ${failure} ${served}`, { requestId, variant: served, failure }, msg);
    lingeringEnd(client, `HTTP/1.1 ${status} ${reasonPhrase(status)}\r\ndate: ${httpDate()}\r\nconnection: close\r\ncontent-length: 0\r\n${cookie}x-abgate-variant: ${served}\r\nx-abgate-request-id: ${requestId}\r\n\r\n`);
    record(status);
  };
  if (!replica) return reject("no_replica", `no healthy replica of variant ${served} for upgrade`);
  const { connectTimeoutMs, responseTimeoutMs, maxRetries } = ctx.config.limits;
  // The forwarded head is a plain request's (hop-by-hop headers dropped, x-forwarded-* set), with back the two
  // headers that are the point of the request.
  const upgradeTo = headerValue(req.headers, "upgrade") ?? "websocket";
  const headFor = (variant: string) => `${scan.baseHead}connection: upgrade\r\nupgrade: ${upgradeTo}\r\n${forwardedFields(requestId, variant, unit)}`;
  let head = headFor(served);
  /** replicas of the serving variant whose connection failed before the handshake was sent */
  const tried: Replica[] = [];
  let attempts = 0;
  /**
   * The next replica for a handshake whose connection failed before it was sent (refused, or not made within
   * connectTimeoutMs), as for a plain request (within limits.maxRetries): another of the variant's, or once it has
   * none left, the fallback variant's. Undefined when there is none.
   */
  const nextReplica = (failed: Replica): Replica | undefined => {
    tried.push(failed);
    if (attempts > maxRetries) return undefined;
    const next = ctx.balancer.pick(served, tried);
    if (next !== undefined || served !== assigned) return next;
    const fb = fallbackFor(ctx, served, forced);
    if (fb === undefined) return undefined;
    served = fb;
    head = headFor(fb);
    tried.length = 0;
    return ctx.balancer.pick(fb);
  };

  const attempt = (target: Replica): void => {
    attempts++;
    const socket = connect({ host: target.endpoint.host, port: target.endpoint.port, noDelay: true });
    upstream = socket;
    let connected = false;
    // The handshake and then the tunnel count as one outstanding request on the replica for as long as the upstream
    // connection lives, so that power of two choices spreads long-lived WebSockets by how many each replica holds
    // (HAProxy's leastconn does the same for tunnels).
    target.outstanding++;
    const done = () => target.outstanding--;
    socket.once("close", done);
    /** This attempt failed: once, against the replica's health and with the client's answer. */
    const failAttempt = (failure: UpstreamFailure, msg: string) => {
      if (settled) return;
      ctx.balancer.failed(target, msg);
      reject(failure, msg);
    };
    /** Not connected, so nothing was sent: the next replica takes the handshake, if there is one. */
    const retried = (why: string): boolean => {
      const next = nextReplica(target);
      if (next === undefined) return false;
      socket.removeAllListeners();
      socket.on("error", () => {});
      socket.destroy();
      done();
      ctx.log.debug({ requestId, replica: target.id, err: why }, "retrying the upgrade on another replica");
      replica = next;
      attempt(next);
      return true;
    };
    const timedOut = () => {
      if (settled) return void socket.destroy();
      if (!connected) {
        // As a plain request's connect timeout: a connect failure (502), retried elsewhere.
        const why = `no connection to ${target.id} within ${connectTimeoutMs} ms`;
        ctx.balancer.failed(target, why);
        if (retried(why)) return;
        socket.destroy();
        return reject("connect", `upgrade failed: ${why}`);
      }
      socket.destroy();
      failAttempt("timeout", `upgrade to ${target.id} timed out`);
    };
    socket.setTimeout(connectTimeoutMs, timedOut);
    // Connected: the replica has responseTimeoutMs to answer the handshake, as it has for any request. (Without a
    // callback: each one given is another 'timeout' listener.)
    socket.once("connect", () => {
      connected = true;
      socket.setTimeout(responseTimeoutMs);
    });
    socket.write(head, "latin1");
    // The answer's head may come in several reads, and after interim 1xx heads (100, 103), which are dropped.
    let pending: Buffer | null = null;
    /** a refusal of known length was passed on whole */
    let refusalDone = false;
    const refuseAnswer = (what: string) => {
      socket.removeListener("data", onData);
      socket.destroy();
      failAttempt("protocol", `${target.id} answered an upgrade request with ${what}`);
    };
    const onData = (chunk: Buffer) => {
      let first = pending === null ? chunk : Buffer.concat([pending, chunk]);
      pending = null;
      let head: string;
      let rest: Buffer;
      for (;;) {
        const statusLine = /^HTTP\/1\.[01] ([1-5]\d\d)[ \r\n]/.exec(first.toString("latin1", 0, 13));
        if (statusLine === null && first.length >= 13) return refuseAnswer("something other than an HTTP status line");
        const at = statusLine === null ? null : headEnd(first);
        if (at === null) {
          if (first.length > MAX_HEAD_BYTES) return refuseAnswer(`a head over ${MAX_HEAD_BYTES} bytes`);
          pending = first;
          return;
        }
        const code = Number(statusLine![1]);
        if (code >= 200 || code === 101) {
          // (lines ending in a lone LF are read as the upstream parser reads them, and passed on with CRLFs; what it
          // refuses, a lone CR, a NUL or a folded line, is refused here too)
          head = first.toString("latin1", 0, at.end).replace(/\r?\n/g, "\r\n");
          rest = first.subarray(at.consumed);
          if (hasBareCrOrLf(head) || head.includes("\0") || /\r\n[ \t]/.test(head)) return refuseAnswer("a malformed head");
          break;
        }
        first = first.subarray(at.consumed);
        if (first.length === 0) return;
      }
      socket.removeListener("data", onData);
      answered = true;
      const status = Number(head.slice(9, 12));
      ctx.balancer.answered(target, status);
      // Mark the answer with our headers, after the status line, in place of the replica's own. A refusal (a 401, a
      // 404, a plain 200) also says the connection ends with it: the client's later requests could not be framed on
      // it (below).
      const close = status === 101 ? "" : "connection: close\r\n";
      const [statusLine, ...fields] = head.split("\r\n");
      const dropped = status === 101 ? ABGATE_RESPONSE_HEADERS : refusalDroppedFields(fields);
      const kept = fields.filter((line) => !dropped.has(fieldName(line)));
      // RFC 9110 §6.6.1, as for a plain request's answer: a final answer without a Date gets abgate's (not a 101).
      if (status !== 101 && !kept.some((line) => /^date[ \t]*:/i.test(line))) kept.unshift(`date: ${httpDate()}`);
      client.write(`${statusLine}\r\n${close}${cookie}x-abgate-variant: ${served}\r\nx-abgate-request-id: ${requestId}\r\n${kept.map((l) => `${l}\r\n`).join("")}\r\n`, "latin1");
      record(status);
      if (status !== 101) {
        // Not switched: the replica's answer is passed on, but nothing more from the client goes to that connection,
        // which abgate does not frame: a tunnel opened on a refusal would carry the client's next requests to the
        // replica unassigned, unrecorded and with forged x-forwarded-* headers. The client's bytes held back since the
        // handshake (headBytes) are dropped for the same reason. The connection ends with the answer (RFC 9112 §9.6:
        // it said close): at its end when its length is known (no body, or a Content-Length), else when the replica
        // closes, or after the idle timeout if the replica keeps its side open.
        socket.removeAllListeners("timeout");
        socket.setTimeout(ctx.config.limits.idleTimeoutMs, () => socket.destroy());
        client.resume();
        const length = refusalBodyLength(req.method, status, kept);
        if (length === undefined) {
          if (rest.length > 0) client.write(rest);
          socket.pipe(client);
          return;
        }
        let left = length;
        const pass = (piece: Buffer): void => {
          const n = Math.min(left, piece.length);
          left -= n;
          if (n > 0 && !client.write(n === piece.length ? piece : piece.subarray(0, n))) {
            socket.pause();
            client.once("drain", () => socket.resume());
          }
          if (left === 0) {
            socket.removeListener("data", pass);
            // The answer is whole: the replica's connection goes, and the client's ends once its bytes are out (not
            // cut by that close, below).
            refusalDone = true;
            socket.destroy();
            client.destroySoon();
          }
        };
        socket.on("data", pass);
        pass(rest);
        return;
      }
      if (rest.length > 0) client.write(rest);
      socket.setTimeout(0);
      // Switched: what the client sent after its handshake belongs to the new protocol, and goes first.
      if (headBytes.length) socket.write(headBytes);
      socket.pipe(client);
      client.pipe(socket);
    };
    socket.on("data", onData);
    socket.on("error", (err) => {
      if (answered) return client.destroy();
      ctx.balancer.failed(target, err.message);
      if (settled) return;
      // Not connected: nothing was sent, so another replica may take the handshake (the SPEC's rule for requests).
      if (!connected && retried(err.message)) return;
      reject(connected ? "reset" : "connect", `upgrade to ${target.id} failed: ${err.message}`);
    });
    // A replica that closes before its answer's head is complete failed the handshake: a 502 and an exposure, as a
    // plain request gets, not a client cut off without a status. (Once rejected, the client's 502 is on its way: it
    // ends by itself.)
    const closedUnanswered = (): boolean => {
      if (answered) return false;
      failAttempt("reset", `${target.id} closed the connection without answering the upgrade`);
      return true;
    };
    socket.on("close", () => {
      if (!closedUnanswered() && !refusalDone) client.destroy();
    });
    socket.on("end", () => {
      if (closedUnanswered()) socket.destroy();
      else teardown();
    });
  };

  client.on("close", () => {
    clientLeft();
    upstream?.destroy();
  });
  // Either side ending its half ends the tunnel (WebSocket closes by its own handshake first); half-open
  // tunnels would otherwise linger forever.
  const teardown = () => {
    client.destroySoon();
    upstream?.destroySoon();
  };
  client.on("end", () => {
    // (before the teardown, which ends the upstream side: its close must not read as the replica's failure)
    clientLeft();
    teardown();
  });
  attempt(replica);
}

/** How long a refused handshake's client may go on sending before its connection is cut (nginx's lingering_timeout). */
const LINGER_IDLE_MS = 5_000;
/** ...and at most in all (nginx's lingering_time). */
const LINGER_MAX_MS = 30_000;

/**
 * Answer and end a connection whose client may still be sending (a handshake refused with its body on the way): its
 * bytes are read and dropped, so that its FIN is seen and the socket closes, and it is cut after LINGER_IDLE_MS of
 * silence or LINGER_MAX_MS in all. Not read, such a socket never closed: a file descriptor for good, and a stop that
 * waited for it forever. Not cut at once either: unread bytes make the kernel reset the connection, which can lose the
 * answer before the client reads it.
 */
function lingeringEnd(client: Socket, answer: string): void {
  client.end(answer, "utf8");
  client.resume();
  client.setTimeout(LINGER_IDLE_MS, () => client.destroy());
  const cap = setTimeout(() => client.destroy(), LINGER_MAX_MS);
  cap.unref();
  client.once("close", () => clearTimeout(cap));
}

/** Where a response head ends: at its CRLFCRLF, or, with lines ending in a lone LF, at its blank line. */
function headEnd(data: Buffer): { end: number; consumed: number } | null {
  const end = data.indexOf("\r\n\r\n");
  const lf = bareLfHeadEnd(data);
  if (lf !== null && (end === -1 || lf.end < end)) return lf;
  return end === -1 ? null : { end, consumed: end + 4 };
}

/** A head line's field name, lower-cased. */
function fieldName(line: string): string {
  return line.slice(0, line.indexOf(":")).trim().toLowerCase();
}

/** A head line's field value, without the whitespace around it. */
function fieldValue(line: string): string {
  return line.slice(line.indexOf(":") + 1).trim();
}

/**
 * The fields of a replica's refusal of a handshake that are not passed on: abgate's own, and the hop-by-hop ones
 * (RFC 9110 §7.6.1), with those its Connection names, since the client's connection is abgate's and ends with the
 * answer: a replica's `Connection: keep-alive` and `Keep-Alive` beside abgate's `connection: close` contradicted it.
 * Transfer-Encoding stays: the body goes on as the replica framed it.
 */
function refusalDroppedFields(fields: readonly string[]): Set<string> {
  const dropped = new Set([...ABGATE_RESPONSE_HEADERS, ...HOP_BY_HOP]);
  dropped.delete("transfer-encoding");
  for (const line of fields) {
    if (fieldName(line) !== "connection") continue;
    for (const name of connectionTokens(fieldValue(line)) ?? []) dropped.add(name);
  }
  return dropped;
}

/**
 * How many body bytes follow a refusal's head (RFC 9112 §6.3): none for a HEAD handshake, a 1xx, 204 or 304; its
 * Content-Length when that is its only framing; undefined when the body ends only with the connection (chunked, or
 * close-delimited), which is then passed on until the replica closes.
 */
function refusalBodyLength(method: string, status: number, fields: readonly string[]): number | undefined {
  if (method === "HEAD" || status < 200 || status === 204 || status === 304) return 0;
  let length: number | undefined;
  for (const line of fields) {
    const name = fieldName(line);
    if (name === "transfer-encoding") return undefined;
    if (name !== "content-length") continue;
    const value = fieldValue(line);
    if (!/^\d{1,15}$/.test(value) || (length !== undefined && length !== Number(value))) return undefined;
    length = Number(value);
  }
  return length;
}

/** The first value of a header in a raw [name, value, ...] list, by lower-case name. */
function headerValue(raw: string[], lowerName: string): string | undefined {
  for (let i = 0; i < raw.length; i += 2) if (raw[i].toLowerCase() === lowerName) return raw[i + 1];
  return undefined;
}
