import { mkdtempSync, rmSync } from "node:fs";
import Database from "better-sqlite3";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { validateConfig, type Config } from "../../src/config/index.ts";
import { startGateway, type Gateway, type GatewayOptions } from "../../src/gateway.ts";
import { silentLogger } from "../../src/log/index.ts";

export const TOKEN = "test-admin-token";

/** What `sql` selects from a (stopped) test gateway's SQLite store, such as rows of its `exposures` view. */
export function selectFromStore(gw: { config: Config }, sql: string): unknown[] {
  const db = new Database(gw.config.store.slice("sqlite:".length), { readonly: true });
  try {
    return db.prepare(sql).all();
  } finally {
    db.close();
  }
}

/** A config for tests: loopback, port 0 everywhere, a SQLite file in a fresh temp dir. */
export function testConfig(overrides: Record<string, unknown>): { config: Config; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), "abgate-test-"));
  const raw = {
    experiment: "test",
    listen: "127.0.0.1:0",
    admin: { listen: "127.0.0.1:0", token: TOKEN },
    store: `sqlite:${join(dir, "abgate.db")}`,
    engine: "static",
    logLevel: "silent",
    metrics: [{ name: "watched", kind: "conversion", event: "watched" }],
    ...overrides,
  };
  return { config: validateConfig(raw, dir), dir };
}

export async function testGateway(overrides: Record<string, unknown>, options: GatewayOptions = {}): Promise<Gateway & { config: Config; dir: string; close(): Promise<void> }> {
  const { config, dir } = testConfig(overrides);
  const gw = await startGateway(config, { log: silentLogger, ...options });
  return {
    ...gw,
    config,
    dir,
    async close(this: Gateway) {
      // `this`, not the closure: a test may swap in a restarted gateway's fields
      await this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function admin(gw: { adminUrl: string }, method: string, path: string, body?: unknown, token: string | null = TOKEN): Promise<Response> {
  return fetch(gw.adminUrl + path, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
}
