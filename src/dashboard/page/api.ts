import type { SeriesBody } from "./types.ts";

/**
 * The admin token lives in sessionStorage: it survives reloads of this tab, dies with the tab, and is never sent
 * unless the page puts it in an Authorization header itself (a cookie would ride along on every request,
 * including forged cross-site ones).
 */
const TOKEN_KEY = "abgate.adminToken";

export function loadToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function saveToken(token: string | null): void {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token then lasts as long as the page's memory, which is still usable.
  }
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function call(method: string, path: string, token: string | null, body?: unknown): Promise<unknown> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store" });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const err = json as { error?: unknown; message?: unknown } | null;
    const detail = typeof err?.error === "string" ? err.error : typeof err?.message === "string" ? err.message : text.slice(0, 200) || res.statusText;
    throw new ApiError(`${method} ${path}: ${res.status} ${detail}`, res.status);
  }
  return json;
}

export async function checkToken(token: string): Promise<boolean> {
  const body = (await call("GET", "/v1/dashboard/session", token)) as { admin?: boolean };
  return body.admin === true;
}

/** `carried`: also the totals before sinceMs (a first fetch, whose cumulative rates start from them). */
export function fetchSeries(sinceMs: number, carried = false): Promise<SeriesBody> {
  return call("GET", `/v1/series?sinceMs=${Math.max(0, Math.floor(sinceMs))}${carried ? "&carried=1" : ""}`, null) as Promise<SeriesBody>;
}

export function putWeights(token: string, weights: Record<string, number>): Promise<unknown> {
  return call("PUT", "/v1/weights", token, weights);
}

export function promote(token: string, variant: string): Promise<unknown> {
  return call("POST", "/v1/promote", token, { variant });
}

export function rollback(token: string): Promise<unknown> {
  return call("POST", "/v1/rollback", token, {});
}
