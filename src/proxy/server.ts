import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect, type Socket } from "node:net";
import { randomBytes, randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { Config } from "../config/index.ts";
import { UpstreamError, upstreamStatus, type UpstreamFailure } from "../errors.ts";
import type { Logger } from "../log/index.ts";
import type { Strategy } from "../strategies/types.ts";
import type { Exposure } from "../store/types.ts";
import type { GatewayMetrics } from "../admin/metrics.ts";
import type { Balancer, Replica } from "./balancer.ts";
import { HOP_BY_HOP, connectionTokens, cookieValue, queryValue } from "./headers.ts";
import type { UpstreamConnection, UpstreamSink } from "./upstream.ts";
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
  /** requests between arrival and their exposure record (what a drain waits for) */
  counters: { inFlight: number };
}

/** The variant that serves in place of `variant` (the config's `fallback`), if it is another one and has a healthy replica. */
function fallbackFor(ctx: ProxyContext, variant: string): string | undefined {
  const fb = ctx.config.fallback;
  return fb !== "reject" && fb !== variant && ctx.balancer.hasHealthy(fb) ? fb : undefined;
}

/** Status recorded for a request whose client went away before the response ended (nginx's convention). */
const CLIENT_CLOSED = 499;

/**
 * One proxied request. A class rather than closures so that the hot path allocates one object per request, and
 * every upstream callback is a prototype method.
 */
class Exchange implements UpstreamSink {
  readonly ctx: ProxyContext;
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly unit: string;
  readonly assigned: string;
  served: string;
  readonly forced: boolean;
  readonly requestId: string;
  readonly startMs: number;
  readonly ts: number;
  readonly setCookie: string | undefined;
  head = "";
  replica: Replica | null = null;
  conn: UpstreamConnection | null = null;
  tried: Replica[] | null = null;
  attempts = 0;
  hasBody: boolean;
  chunkedBody: boolean;
  bodyStarted = false;
  upstreamDone = false;
  recorded = false;
  status = 0;
  waitingDrain = false;
  /** retries after stale pooled sockets (each drops that replica's idle pool, so a few suffice) */
  staleRetries = 0;

  constructor(ctx: ProxyContext, req: IncomingMessage, res: ServerResponse, unit: string, setCookie: string | undefined, assigned: string, forced: boolean, requestId: string, startMs: number) {
    this.ctx = ctx;
    this.req = req;
    this.res = res;
    this.unit = unit;
    this.setCookie = setCookie;
    this.assigned = assigned;
    this.served = assigned;
    this.forced = forced;
    this.requestId = requestId;
    this.startMs = startMs;
    this.ts = Date.now();
    const te = req.headers["transfer-encoding"];
    this.chunkedBody = te !== undefined;
    const cl = req.headers["content-length"];
    this.hasBody = this.chunkedBody || (cl !== undefined && cl !== "0");
  }

  start(): void {
    this.ctx.counters.inFlight++;
    watchClient(this);
    if (!this.ctx.balancer.hasHealthy(this.assigned) && !this.fallBack()) {
      return this.fail(new UpstreamError("no_replica", `no healthy replica of variant ${this.assigned}`));
    }
    this.head = this.buildHead();
    this.dispatch();
  }

  /** Switch to the fallback variant (logged via the exposure's served variant). False when there is none. */
  fallBack(): boolean {
    const fb = fallbackFor(this.ctx, this.served);
    if (fb === undefined) return false;
    this.served = fb;
    this.tried = null;
    return true;
  }

  buildHead(): string {
    const req = this.req;
    const raw = req.rawHeaders;
    const extra = connectionTokens(req.headers.connection);
    let xff = "";
    let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i];
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || lower === "expect") continue;
      if (lower.charCodeAt(0) === 120 /* x */ && (lower.startsWith("x-forwarded-") || lower.startsWith("x-abgate-"))) {
        if (lower === "x-forwarded-for") xff = xff ? `${xff}, ${raw[i + 1]}` : raw[i + 1];
        continue;
      }
      if (extra !== undefined && extra.has(lower)) continue;
      head += `${name}: ${raw[i + 1]}\r\n`;
    }
    const addr = req.socket.remoteAddress ?? "";
    head += `x-forwarded-for: ${xff ? `${xff}, ${addr}` : addr}\r\nx-forwarded-proto: http\r\n`;
    if (req.headers.host) head += `x-forwarded-host: ${req.headers.host}\r\n`;
    head += `x-abgate-request-id: ${this.requestId}\r\nx-abgate-variant: ${this.served}\r\nx-abgate-unit: ${encodeURIComponent(this.unit)}\r\n`;
    if (this.chunkedBody) head += "transfer-encoding: chunked\r\n";
    return head + "\r\n";
  }

  dispatch(): void {
    const { balancer } = this.ctx;
    let replica = balancer.pick(this.served, this.tried ?? undefined);
    if (!replica) {
      // Every replica of the variant failed to connect: they are down, whatever health said. Nothing was sent,
      // so the fallback variant can take the request.
      if (this.served === this.assigned && this.fallBack()) {
        this.head = this.buildHead();
        replica = balancer.pick(this.served);
      }
      if (!replica) return this.fail(new UpstreamError(this.tried ? "connect" : "no_replica", `no healthy replica of variant ${this.served} could take the request`));
    }
    this.attempts++;
    this.replica = replica;
    replica.outstanding++;
    const conn = replica.pool.acquire();
    this.conn = conn;
    conn.send(this.head, this, this.req.method === "HEAD", !this.hasBody);
    if (this.hasBody) {
      // The body is read only once the connection is up: a connect failure can then be retried elsewhere.
      if (conn.socket.connecting) conn.socket.once("connect", () => this.startBody(conn));
      else this.startBody(conn);
    }
  }

  startBody(conn: UpstreamConnection): void {
    if (this.conn !== conn || this.upstreamDone) return;
    this.bodyStarted = true;
    const req = this.req;
    const socket = conn.socket;
    const maxBody = this.ctx.config.limits.maxBodyBytes;
    let bytes = 0;
    req.on("data", (chunk: Buffer) => {
      if (this.conn !== conn || this.upstreamDone) return;
      bytes += chunk.length;
      if (maxBody !== undefined && bytes > maxBody) {
        conn.abort();
        this.upstreamDone = true;
        this.release();
        return this.respondError(413, "ABGATE_ERR_BODY_TOO_LARGE", `request body exceeds ${maxBody} bytes`, true);
      }
      let ok: boolean;
      if (this.chunkedBody) {
        socket.write(`${chunk.length.toString(16)}\r\n`, "latin1");
        socket.write(chunk);
        ok = socket.write("\r\n", "latin1");
      } else ok = socket.write(chunk);
      conn.touch();
      if (!ok) {
        req.pause();
        socket.once("drain", () => req.resume());
      }
    });
    req.on("end", () => {
      if (this.conn !== conn || this.upstreamDone) return;
      if (this.chunkedBody) socket.write("0\r\n\r\n", "latin1");
      conn.requestEnded();
    });
  }

  onHead(status: number, statusText: string, headers: string[], _contentLength: number): void {
    const replica = this.replica!;
    if (status >= 500) {
      replica.failing++;
      this.ctx.balancer.health.reportFailure(replica.id);
    } else if (replica.failing > 0) {
      replica.failing = 0;
      this.ctx.balancer.health.reportSuccess(replica.id);
    }
    this.status = status;
    headers.push("x-abgate-variant", this.served, "x-abgate-request-id", this.requestId);
    if (this.setCookie) headers.push("set-cookie", this.setCookie);
    const res = this.res;
    if (res.destroyed) return;
    try {
      res.writeHead(status, statusText || undefined, headers);
    } catch (err) {
      // A header the client side refuses (invalid characters): the replica's answer cannot be relayed.
      this.conn?.abort();
      this.onError(new UpstreamError("protocol", `invalid response header from ${replica.id}: ${(err as Error).message}`, { cause: err }), false, true);
    }
  }

  onData(chunk: Buffer): boolean {
    const ok = this.res.write(chunk);
    if (!ok && !this.waitingDrain) {
      this.waitingDrain = true;
      this.res.once("drain", () => {
        this.waitingDrain = false;
        this.conn?.resume();
      });
    }
    return ok;
  }

  onEnd(last?: Buffer): void {
    this.upstreamDone = true;
    this.release();
    this.res.end(last);
    this.record(this.status);
  }

  onError(err: UpstreamError, beforeResponse: boolean, connected: boolean): void {
    const replica = this.replica!;
    const conn = this.conn!;
    this.release();
    const stale = connected && beforeResponse && conn.reused && err.failure === "reset";
    if (!stale && err.failure !== "protocol") {
      replica.failing++;
      this.ctx.balancer.health.reportFailure(replica.id);
    }
    if (stale && !this.bodyStarted && !this.res.headersSent && this.staleRetries < 3) {
      // A pooled keep-alive socket the replica had already closed: not the replica's fault and not a retry of the
      // request. Its idle siblings are just as stale (a restarted or killed replica), so drop them all and try
      // once more on a fresh connection; if the replica is really gone, that fails as a connect error.
      this.staleRetries++;
      this.attempts--;
      replica.pool.dropIdle();
      this.ctx.log.debug({ requestId: this.requestId, replica: replica.id, err: err.message }, "stale keep-alive connection; retrying on a fresh one");
      return this.dispatch();
    }
    const retryable = err.failure === "connect" && !this.res.headersSent;
    if (retryable && this.attempts <= this.ctx.config.limits.maxRetries) {
      (this.tried ??= []).push(replica);
      this.ctx.log.debug({ requestId: this.requestId, replica: replica.id, err: err.message }, "retrying on another replica");
      return this.dispatch();
    }
    this.upstreamDone = true;
    this.fail(err);
  }

  release(): void {
    if (this.replica && this.conn) {
      this.replica.outstanding--;
      this.conn = null;
    }
  }

  fail(err: UpstreamError): void {
    this.upstreamDone = true;
    const status = upstreamStatus(err.failure);
    this.ctx.log.warn({ requestId: this.requestId, variant: this.served, replica: this.replica?.id, code: err.code }, err.message);
    if (this.res.headersSent) {
      // Mid-body: the only honest signal left is to cut the client's connection.
      this.record(this.status || status);
      this.res.destroy(err);
      return;
    }
    this.respondError(status, err.code, err.message, false);
  }

  respondError(status: number, code: string, message: string, close: boolean): void {
    const res = this.res;
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return this.record(status);
    }
    const body = JSON.stringify({ error: message, code, requestId: this.requestId, variant: this.served });
    const headers: string[] = ["content-type", "application/json", "content-length", String(Buffer.byteLength(body)), "x-abgate-variant", this.served, "x-abgate-request-id", this.requestId];
    if (close) headers.push("connection", "close");
    res.writeHead(status, headers);
    res.end(body);
    this.record(status);
  }

  onClientClose(): void {
    if (this.recorded) return;
    // The client left before the response ended: free the replica and do not reuse the half-read socket.
    if (this.conn) {
      this.conn.abort();
      this.release();
    }
    this.upstreamDone = true;
    this.record(CLIENT_CLOSED);
  }

  record(status: number): void {
    if (this.recorded) return;
    this.recorded = true;
    this.ctx.counters.inFlight--;
    (this.req.socket as WatchedSocket)[ACTIVE]?.delete(this);
    const latencyMs = Math.round((performance.now() - this.startMs) * 1000) / 1000;
    const { ctx } = this;
    ctx.metrics.request(this.served, status, latencyMs);
    ctx.live.record(this.served, latencyMs, status >= 500);
    ctx.exposures?.push({
      experiment: ctx.config.experiment,
      ts: this.ts,
      requestId: this.requestId,
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

const ACTIVE = Symbol("abgate.activeExchanges");
type WatchedSocket = Socket & { [ACTIVE]?: Set<Exchange> };

/**
 * Notice clients that leave mid-exchange with one 'close' listener per connection rather than one per request:
 * keep-alive connections carry many requests, and a listener per response is measurable on the hot path.
 */
function watchClient(ex: Exchange): void {
  const socket = ex.req.socket as WatchedSocket;
  let active = socket[ACTIVE];
  if (!active) {
    active = socket[ACTIVE] = new Set();
    const set = active;
    socket.once("close", () => {
      for (const e of set) e.onClientClose();
      set.clear();
    });
  }
  active.add(ex);
}

/** Request ids: a per-process random prefix and a counter; unique, short, and cheap on the hot path. */
function requestIds(): () => string {
  const prefix = randomBytes(6).toString("base64url");
  let seq = 0;
  return () => `${prefix}-${(++seq).toString(36)}`;
}

function unitCookie(name: string, id: string): string {
  return `${name}=${id}; Path=/; Max-Age=31536000; SameSite=Lax; HttpOnly`;
}

export interface ProxyServer {
  server: Server;
  /** requests being proxied now */
  inFlight(): number;
  /** cut every upgraded (WebSocket) connection; they never end by themselves */
  closeTunnels(): void;
}

/** The request's unit (header, query, then cookie), or a new id with the cookie that carries it from now on. */
function resolveUnit(ctx: ProxyContext, req: IncomingMessage): { unit: string; setCookie: string | undefined } {
  const u = ctx.config.unit;
  let unit: string | undefined;
  if (u.header) {
    const h = req.headers[u.header];
    unit = Array.isArray(h) ? h[0] : h;
  }
  if (!unit && u.query) unit = queryValue(req.url ?? "", u.query);
  if (!unit) unit = cookieValue(req.headers.cookie, u.cookie);
  if (unit) return { unit, setCookie: undefined };
  const id = randomUUID();
  return { unit: id, setCookie: unitCookie(u.cookie, id) };
}

export function createProxyServer(ctx: ProxyContext): ProxyServer {
  const { config } = ctx;
  const limits = config.limits;
  const nextId = requestIds();
  const known = new Set(config.variants.map((v) => v.name));
  const server = createServer(
    {
      maxHeaderSize: limits.maxHeaderBytes,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.idleTimeoutMs,
      connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
      noDelay: true,
    },
    (req, res) => {
      const startMs = performance.now();
      const requestId = nextId();
      const { unit, setCookie } = resolveUnit(ctx, req);
      let assigned: string;
      let forced = false;
      const force = config.allowForce ? req.headers[FORCE_HEADER] : undefined;
      if (typeof force === "string" && force !== "") {
        if (!known.has(force)) {
          const body = JSON.stringify({ error: `unknown variant "${force}" in ${FORCE_HEADER}`, code: "ABGATE_ERR_UNKNOWN_VARIANT", requestId });
          res.writeHead(400, ["content-type", "application/json", "content-length", String(Buffer.byteLength(body)), "x-abgate-request-id", requestId]);
          res.end(body);
          return;
        }
        assigned = force;
        forced = true;
      } else {
        assigned = ctx.strategy.assign(unit);
      }
      const ex = new Exchange(ctx, req, res, unit, setCookie, assigned, forced, requestId, startMs);
      const cl = req.headers["content-length"];
      if (limits.maxBodyBytes !== undefined && cl !== undefined && Number(cl) > limits.maxBodyBytes) {
        ctx.counters.inFlight++;
        ex.respondError(413, "ABGATE_ERR_BODY_TOO_LARGE", `request body of ${cl} bytes exceeds ${limits.maxBodyBytes}`, true);
        return;
      }
      ex.start();
    },
  );

  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => {
    const code = err.code;
    ctx.log.debug({ code, err: err.message }, "client error");
    if (!socket.writable || (socket as Socket & { _httpMessage?: unknown })._httpMessage) return socket.destroy();
    const status = code === "HPE_HEADER_OVERFLOW" ? 431 : code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : code === "ECONNRESET" ? 0 : 400;
    if (status === 0) return socket.destroy();
    const reason = status === 431 ? "Request Header Fields Too Large" : status === 408 ? "Request Timeout" : "Bad Request";
    socket.end(`HTTP/1.1 ${status} ${reason}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
  });

  const tunnels = new Set<Socket>();
  server.on("upgrade", (req: IncomingMessage, socket: Socket, headBytes: Buffer) => proxyUpgrade(ctx, req, socket, headBytes, nextId(), known, tunnels));

  return {
    server,
    inFlight: () => ctx.counters.inFlight,
    closeTunnels: () => {
      for (const s of tunnels) s.destroy();
    },
  };
}

/** WebSocket (and other Upgrade) requests: one dedicated upstream connection, bytes piped both ways. */
function proxyUpgrade(ctx: ProxyContext, req: IncomingMessage, client: Socket, headBytes: Buffer, requestId: string, known: Set<string>, tunnels: Set<Socket>): void {
  const startMs = performance.now();
  const ts = Date.now();
  const { unit } = resolveUnit(ctx, req);
  const force = ctx.config.allowForce ? req.headers[FORCE_HEADER] : undefined;
  const forced = typeof force === "string" && known.has(force);
  const assigned = forced ? (force as string) : ctx.strategy.assign(unit);
  const served = ctx.balancer.hasHealthy(assigned) ? assigned : (fallbackFor(ctx, assigned) ?? assigned);
  const replica = ctx.balancer.pick(served);
  const record = (status: number) => {
    const latencyMs = performance.now() - startMs;
    ctx.metrics.request(served, status, latencyMs);
    ctx.exposures?.push({ experiment: ctx.config.experiment, ts, requestId, unit, assigned, served, replica: replica?.id ?? "", status, latencyMs, forced });
  };
  const reject = (failure: UpstreamFailure, msg: string) => {
    const status = upstreamStatus(failure);
    ctx.log.warn({ requestId, variant: served, failure }, msg);
    client.end(`HTTP/1.1 ${status} ${status === 503 ? "Service Unavailable" : status === 504 ? "Gateway Timeout" : "Bad Gateway"}\r\nconnection: close\r\ncontent-length: 0\r\nx-abgate-variant: ${served}\r\nx-abgate-request-id: ${requestId}\r\n\r\n`);
    record(status);
  };
  if (!replica) return reject("no_replica", `no healthy replica of variant ${served} for upgrade`);
  const upstream = connect({ host: replica.endpoint.host, port: replica.endpoint.port, noDelay: true });
  upstream.setTimeout(ctx.config.limits.connectTimeoutMs, () => {
    upstream.destroy();
    reject("timeout", `upgrade to ${replica.id} timed out`);
  });
  let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const lower = raw[i].toLowerCase();
    if (lower.startsWith("x-forwarded-") || lower.startsWith("x-abgate-")) continue;
    head += `${raw[i]}: ${raw[i + 1]}\r\n`;
  }
  head += `x-forwarded-for: ${req.socket.remoteAddress ?? ""}\r\nx-forwarded-proto: http\r\nx-abgate-request-id: ${requestId}\r\nx-abgate-variant: ${served}\r\n\r\n`;
  upstream.write(head, "latin1");
  if (headBytes.length) upstream.write(headBytes);
  let answered = false;
  upstream.once("data", (first: Buffer) => {
    answered = true;
    upstream.setTimeout(0);
    const status = Number(first.toString("latin1", 9, 12)) || 502;
    // Mark the switch with our headers: insert them after the status line.
    const eol = first.indexOf("\r\n");
    if (eol > 0) {
      client.write(first.subarray(0, eol + 2));
      client.write(`x-abgate-variant: ${served}\r\nx-abgate-request-id: ${requestId}\r\n`, "latin1");
      client.write(first.subarray(eol + 2));
    } else client.write(first);
    upstream.pipe(client);
    client.pipe(upstream);
    record(status);
  });
  upstream.on("error", (err) => {
    if (!answered) {
      ctx.balancer.health.reportFailure(replica.id);
      reject("connect", `upgrade to ${replica.id} failed: ${err.message}`);
    } else client.destroy();
  });
  client.on("error", () => upstream.destroy());
  upstream.on("close", () => client.destroy());
  client.on("close", () => upstream.destroy());
  // Either side ending its half ends the tunnel (WebSocket closes by its own handshake first); half-open
  // tunnels would otherwise linger forever.
  const teardown = () => {
    client.destroySoon();
    upstream.destroySoon();
  };
  client.on("end", teardown);
  upstream.on("end", teardown);
  tunnels.add(client);
  client.once("close", () => tunnels.delete(client));
}
