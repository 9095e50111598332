import type { IncomingMessage, ServerResponse } from "node:http";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import type { AdminContext } from "../admin/context.ts";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import { StoreError } from "../errors.ts";
import { loadAssets, type AssetBundle } from "./assets.ts";
import { MINUTE_MS, toSeries } from "./series.ts";

const gzipAsync = promisify(gzip);

/** A week: what the page asks for by default, and what the store keeps per-minute buckets for. */
const DEFAULT_SERIES_WINDOW_MS = 7 * 24 * 60 * MINUTE_MS;

export interface DashboardOptions {
  /** drives the stream's timers; tests pass a ManualClock */
  clock?: Clock;
  /** how often the stream sends the experiment view and live stats (default 1000) */
  liveIntervalMs?: number;
  /** how often the stream sends the report, which runs the analysis (default 5000) */
  reportIntervalMs?: number;
  /** how often the stream sends a comment so that proxies and the browser keep the connection (default 15000) */
  heartbeatMs?: number;
  /** where to look for the built bundle (default: beside this module, then under src/ from dist/) */
  assetDirs?: string[];
}

/**
 * The dashboard's request handler. Resolves true when it answered the request, false when the request is not one
 * of its routes (the admin server then handles it). `close()` ends every open event stream: an SSE connection
 * never finishes by itself, so the admin server calls it before `server.close()` or that would wait forever.
 */
export type DashboardHandler = ((req: IncomingMessage, res: ServerResponse) => Promise<boolean>) & {
  close(): void;
  /** open event streams, for tests and /metrics */
  streams(): number;
};

/**
 * Serves the dashboard on the admin listener:
 * - `GET /` the page; `GET /assets/<file>` the built bundle (content-hashed names, immutable, ETag, gzip)
 * - `GET /v1/series?sinceMs=` per-minute columns from `store.minutes` for the charts
 * - `GET /v1/stream` server-sent events: `meta` once, `live` (experiment view + live stats) about every second,
 *   `report` about every five seconds, `failure` when one of those could not be computed, heartbeats
 * - `GET /v1/dashboard/session` whether the request's bearer token is the admin token, so the page can say at
 *   once that a token is wrong instead of on the first change
 * Reads need no token, as GET /v1/report and GET /v1/experiment; changes go through the admin server's routes.
 */
export function createDashboardHandler(ctx: AdminContext, options: DashboardOptions = {}): DashboardHandler {
  const clock = options.clock ?? systemClock;
  const hub = new StreamHub(ctx, clock, {
    liveIntervalMs: options.liveIntervalMs ?? 1000,
    reportIntervalMs: options.reportIntervalMs ?? 5000,
    heartbeatMs: options.heartbeatMs ?? 15_000,
  });
  let bundle: AssetBundle | null = null;
  const assets = (): AssetBundle | null => (bundle ??= loadAssets(options.assetDirs));

  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    const url = new URL(req.url ?? "/", "http://admin.invalid");
    const path = url.pathname;
    const route =
      path === "/" || path === "/index.html"
        ? "page"
        : path.startsWith("/assets/")
          ? "asset"
          : path === "/v1/series"
            ? "series"
            : path === "/v1/stream"
              ? "stream"
              : path === "/v1/dashboard/session"
                ? "session"
                : null;
    if (route === null) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      sendJson(res, 405, { error: `${req.method} is not allowed on ${path}`, code: "ABGATE_ERR_METHOD" }, { allow: "GET, HEAD" });
      return true;
    }
    switch (route) {
      case "page":
        servePage(req, res, ctx, assets());
        return true;
      case "asset":
        serveAsset(req, res, assets(), safeDecode(path.slice("/assets/".length)));
        return true;
      case "series":
        await serveSeries(req, res, ctx, url, clock);
        return true;
      case "stream":
        hub.join(req, res);
        return true;
      case "session":
        sendJson(res, 200, { admin: ctx.isAdmin(req.headers.authorization) }, { "cache-control": "no-store" });
        return true;
    }
  };
  return Object.assign(handler, { close: () => hub.close(), streams: () => hub.size() });
}

const SECURITY_HEADERS = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

function servePage(req: IncomingMessage, res: ServerResponse, ctx: AdminContext, bundle: AssetBundle | null): void {
  if (!bundle) {
    const body = `<!doctype html><meta charset="utf-8"><title>abgate dashboard not built</title>
<p>The dashboard bundle is missing. Build it with <code>node scripts/build-dashboard.mjs</code> (npm install runs it).</p>`;
    res.writeHead(503, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store", ...SECURITY_HEADERS });
    res.end(req.method === "HEAD" ? undefined : body);
    return;
  }
  const title = `abgate · ${escapeHtml(ctx.config.experiment)}`;
  const body = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/${escapeHtml(bundle.manifest.css)}">
<script type="module" src="/assets/${escapeHtml(bundle.manifest.js)}"></script>
</head>
<body>
<div id="app"><p class="boot">Loading the dashboard of ${escapeHtml(ctx.config.experiment)}…</p></div>
<noscript>The dashboard needs JavaScript. The same data is at <a href="/v1/report">/v1/report</a> and <a href="/v1/experiment">/v1/experiment</a>.</noscript>
</body>
</html>
`;
  res.writeHead(200, {
    "content-type": "text/html; charset=utf-8",
    // The page names content-hashed assets, so it must be revalidated while they can be cached for ever.
    "cache-control": "no-cache",
    "content-security-policy":
      "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ...SECURITY_HEADERS,
  });
  res.end(req.method === "HEAD" ? undefined : body);
}

function serveAsset(req: IncomingMessage, res: ServerResponse, bundle: AssetBundle | null, name: string): void {
  const asset = bundle?.files.get(name);
  if (!asset) {
    sendJson(res, 404, { error: `no asset ${name}`, code: "ABGATE_ERR_NOT_FOUND" });
    return;
  }
  const headers: Record<string, string> = {
    "content-type": asset.contentType,
    "cache-control": "public, max-age=31536000, immutable",
    etag: asset.etag,
    vary: "accept-encoding",
    ...SECURITY_HEADERS,
  };
  if (etagMatches(req.headers["if-none-match"], asset.etag)) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  const body = acceptsGzip(req) ? ((headers["content-encoding"] = "gzip"), asset.gzip) : asset.body;
  headers["content-length"] = String(body.length);
  res.writeHead(200, headers);
  res.end(req.method === "HEAD" ? undefined : body);
}

async function serveSeries(req: IncomingMessage, res: ServerResponse, ctx: AdminContext, url: URL, clock: Clock): Promise<void> {
  const raw = url.searchParams.get("sinceMs");
  let sinceMs = clock.now() - DEFAULT_SERIES_WINDOW_MS;
  if (raw !== null) {
    sinceMs = Number(raw);
    if (raw.trim() === "" || !Number.isSafeInteger(sinceMs) || sinceMs < 0) {
      sendJson(res, 400, { error: `sinceMs must be a non-negative integer (ms since the epoch), got ${JSON.stringify(raw)}`, code: "ABGATE_ERR_BAD_REQUEST" });
      return;
    }
  }
  const { experiment, metrics, variants } = ctx.config;
  let buckets;
  // `carried=1` (a page's first fetch): also what came before sinceMs, which its cumulative rates start from
  let carried;
  try {
    buckets = await ctx.store.minutes(experiment, metrics, sinceMs);
    if (url.searchParams.get("carried") === "1") carried = await ctx.store.totalsBefore(experiment, metrics, sinceMs);
  } catch (err) {
    // A store that cannot answer now is a 503, as for the report and events; anything else is abgate's own fault.
    sendJson(res, err instanceof StoreError ? 503 : 500, { error: `could not read the per-minute series: ${(err as Error).message}`, code: "ABGATE_ERR_STORE" });
    return;
  }
  const body = toSeries(experiment, variants.map((v) => v.name), metrics, buckets, { nowMs: clock.now() });
  if (carried !== undefined) body.carried = carried;
  const json = Buffer.from(JSON.stringify(body));
  const headers: Record<string, string> = {
    "content-type": "application/json; charset=utf-8",
    "cache-control": "no-store",
    vary: "accept-encoding",
  };
  // A week of minutes is a few hundred kB of digits, which gzip shrinks about tenfold.
  const out = json.length > 1024 && acceptsGzip(req) ? ((headers["content-encoding"] = "gzip"), await gzipAsync(json)) : json;
  headers["content-length"] = String(out.length);
  res.writeHead(200, headers);
  res.end(req.method === "HEAD" ? undefined : out);
}

interface HubTimings {
  liveIntervalMs: number;
  reportIntervalMs: number;
  heartbeatMs: number;
}

/**
 * One set of timers for all open streams: the view and the report are computed once per tick and the same bytes
 * go to every client, so ten open tabs cost one analysis every five seconds, not ten. Timers run only while
 * some stream is open.
 */
class StreamHub {
  #clients = new Set<ServerResponse>();
  #timers: TimerHandle[] = [];
  #lastLive: string | null = null;
  #lastReport: string | null = null;
  #liveBusy = false;
  #reportBusy = false;

  constructor(
    private readonly ctx: AdminContext,
    private readonly clock: Clock,
    private readonly timings: HubTimings,
  ) {}

  size(): number {
    return this.#clients.size;
  }

  join(req: IncomingMessage, res: ServerResponse): void {
    req.socket.setTimeout(0);
    req.socket.setNoDelay(true);
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      connection: "keep-alive",
      // nginx and similar buffer responses unless told otherwise, which would batch the live events.
      "x-accel-buffering": "no",
    });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    const { config } = this.ctx;
    res.write(`retry: 2000\n\n`);
    res.write(
      frame("meta", {
        experiment: config.experiment,
        control: config.variants[0]?.name,
        variants: config.variants.map((v) => v.name),
        metrics: config.metrics.map((m) => ({ name: m.name, kind: m.kind })),
        alpha: config.analysis.alpha,
        liveIntervalMs: this.timings.liveIntervalMs,
        reportIntervalMs: this.timings.reportIntervalMs,
      }),
    );
    if (this.#lastLive) res.write(this.#lastLive);
    if (this.#lastReport) res.write(this.#lastReport);
    this.#clients.add(res);
    const leave = () => {
      this.#clients.delete(res);
      if (this.#clients.size === 0) this.#stop();
    };
    res.on("close", leave);
    req.on("close", leave);
    if (this.#timers.length === 0) this.#start();
  }

  close(): void {
    this.#stop();
    for (const res of this.#clients) res.end();
    this.#clients.clear();
  }

  #start(): void {
    const every = (ms: number, fn: () => void, slot: number) => {
      const tick = () => {
        this.#timers[slot] = this.clock.setTimeout(tick, ms);
        fn();
      };
      this.#timers[slot] = this.clock.setTimeout(tick, ms);
    };
    every(this.timings.liveIntervalMs, () => void this.#sendLive(), 0);
    every(this.timings.reportIntervalMs, () => void this.#sendReport(), 1);
    every(this.timings.heartbeatMs, () => this.#broadcast(`: heartbeat ${this.clock.now()}\n\n`), 2);
    // A new page should not wait a full interval for its first numbers.
    void this.#sendLive();
    if (!this.#lastReport) void this.#sendReport();
  }

  #stop(): void {
    for (const t of this.#timers) t.cancel();
    this.#timers = [];
  }

  async #sendLive(): Promise<void> {
    // A slow experimentView must not pile up calls behind it; the next tick sends fresher numbers anyway.
    if (this.#liveBusy) return;
    this.#liveBusy = true;
    try {
      const experiment = await this.ctx.experimentView();
      const live = this.ctx.liveStats();
      this.#lastLive = frame("live", { ts: this.clock.now(), experiment, live });
      this.#broadcast(this.#lastLive);
    } catch (err) {
      this.#broadcast(frame("failure", { source: "live", message: (err as Error).message }));
    } finally {
      this.#liveBusy = false;
    }
  }

  async #sendReport(): Promise<void> {
    if (this.#reportBusy) return;
    this.#reportBusy = true;
    try {
      const report = await this.ctx.report();
      this.#lastReport = frame("report", report);
      this.#broadcast(this.#lastReport);
    } catch (err) {
      this.#broadcast(frame("failure", { source: "report", message: (err as Error).message }));
    } finally {
      this.#reportBusy = false;
    }
  }

  #broadcast(text: string): void {
    for (const res of this.#clients) {
      // Events are snapshots: a client that cannot keep up misses some rather than buffering without bound.
      if (res.writableNeedDrain || res.destroyed) continue;
      res.write(text);
    }
  }
}

/** One server-sent event; JSON.stringify never emits a raw newline, so the data fits on one `data:` line. */
function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const json = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "content-length": String(Buffer.byteLength(json)), ...headers });
  res.end(json);
}

function acceptsGzip(req: IncomingMessage): boolean {
  const header = req.headers["accept-encoding"];
  if (typeof header !== "string") return false;
  return header.split(",").some((part) => {
    const [coding, ...params] = part.trim().toLowerCase().split(";");
    if (coding !== "gzip" && coding !== "*") return false;
    const q = params.map((p) => p.trim()).find((p) => p.startsWith("q="));
    return q === undefined || Number(q.slice(2)) > 0;
  });
}

function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((t) => t.trim().replace(/^W\//, "") === etag);
}

/** A malformed escape (`%E0`) names no asset; it must not become a 500. */
function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
