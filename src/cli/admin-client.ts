import type { Config } from "../config/index.ts";
import { AbgateError } from "../errors.ts";

export interface AdminTarget {
  adminUrl: string;
  token?: string;
}

export function adminTarget(config: Config | undefined, opts: { admin?: string; token?: string }): AdminTarget {
  const host = config?.admin.listen.host ?? "127.0.0.1";
  const adminUrl = opts.admin ?? `http://${host.includes(":") ? `[${host}]` : host}:${config?.admin.listen.port ?? 8081}`;
  return { adminUrl, token: opts.token ?? process.env.ABGATE_ADMIN_TOKEN ?? config?.admin.token };
}

/** One call to a running abgate's admin API; errors carry the server's message. */
export async function adminCall(target: AdminTarget, method: string, path: string, body?: unknown): Promise<unknown> {
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
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const msg = (json as { error?: string })?.error ?? text;
    const hint = res.status === 401 ? " (pass --token or set ABGATE_ADMIN_TOKEN)" : "";
    throw new AbgateError(`${method} ${path}: ${res.status} ${msg}${hint}`, "ABGATE_ERR_ADMIN_CALL");
  }
  return json;
}
