import http from "node:http";
import { connect } from "node:net";
import type { Endpoint } from "../engines/types.ts";

/** The outcome of one active check; `error` says why it failed (shown in snapshots and logs). */
export interface ProbeResult {
  ok: boolean;
  error?: string;
}

/**
 * One active health check: an HTTP GET of `path`, or with `path` null a TCP connect. Resolves, never rejects. May
 * resolve a bare boolean (a simple test double) or a ProbeResult with the reason of a failure.
 */
export type Probe = (endpoint: Endpoint, path: string | null, timeoutMs: number) => Promise<boolean | ProbeResult>;

/** The tracker's default probe: httpCheck for a path, connectCheck without one. */
export function check(endpoint: Endpoint, path: string | null, timeoutMs: number): Promise<ProbeResult> {
  return path === null ? connectCheck(endpoint, timeoutMs) : httpCheck(endpoint, path, timeoutMs);
}

/**
 * Ok when the endpoint accepts a TCP connection within `timeoutMs` (HAProxy's plain `check`): for replicas whose
 * variant names no health path, it tells at least whether the process listens yet. Never throws.
 */
export function connectCheck(endpoint: Endpoint, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const socket = connect({ host: endpoint.host, port: endpoint.port });
    const settle = (result: ProbeResult): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => settle({ ok: false, error: `timeout after ${timeoutMs} ms` }), timeoutMs);
    timer.unref?.();
    socket.once("connect", () => settle({ ok: true }));
    socket.once("error", (err: NodeJS.ErrnoException) => settle({ ok: false, error: err.code ?? err.message }));
  });
}

/**
 * One HTTP GET of `path` on the endpoint: ok for a 2xx or 3xx status within `timeoutMs` (connect plus response
 * headers). A fresh connection each time (no keep-alive agent): a check must see whether the replica still
 * accepts connections, and a pooled socket would hide that. The body is not read. Never throws.
 */
export function httpCheck(endpoint: Endpoint, path: string, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (result: ProbeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      resolve(result);
    };
    const req = http.request({
      host: endpoint.host,
      port: endpoint.port,
      path,
      method: "GET",
      agent: false,
      headers: { "user-agent": "abgate-health", connection: "close" },
    });
    // a real timer on purpose: the tracker's scheduling runs on the injected clock, but a socket times out in
    // real time whatever clock the tracker is given
    const timer = setTimeout(() => settle({ ok: false, error: `timeout after ${timeoutMs} ms` }), timeoutMs);
    timer.unref?.();
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      res.resume();
      settle(status >= 200 && status < 400 ? { ok: true } : { ok: false, error: `status ${status}` });
    });
    req.on("error", (err: NodeJS.ErrnoException) => settle({ ok: false, error: err.code ?? err.message }));
    req.end();
  });
}

/** `httpCheck` reduced to a boolean: true for 2xx/3xx within the timeout. Never throws. */
export async function httpProbe(endpoint: Endpoint, path: string, timeoutMs: number): Promise<boolean> {
  return (await httpCheck(endpoint, path, timeoutMs)).ok;
}
