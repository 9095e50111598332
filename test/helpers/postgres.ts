import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const script = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "scripts", "pg-cluster.sh");

/** True when Debian's PostgreSQL server binaries are installed. */
export function postgresInstalled(): boolean {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return false;
  return readdirSync(root).some((v) => existsSync(join(root, v, "bin", "initdb")));
}

export interface PostgresCluster {
  /** postgres://postgres@127.0.0.1:PORT/postgres */
  url: string;
  /** the same server, another database */
  urlFor(database: string): string;
  /** kill the server without a checkpoint and start it again (it replays its WAL) */
  crashRestart(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a private cluster (scripts/pg-cluster.sh) in a fresh temp dir; `stop()` shuts it down and deletes it. */
export async function startPostgres(): Promise<PostgresCluster> {
  const dir = mkdtempSync(join(tmpdir(), "abgate-pg-"));
  const { stdout } = await run("bash", [script, "start", dir], { timeout: 60_000 });
  const url = stdout.trim().split("\n").pop()!;
  return {
    url,
    urlFor: (database) => url.replace(/\/[^/]*$/, `/${database}`),
    crashRestart: async () => {
      await run("bash", [script, "crash-restart", dir], { timeout: 90_000 });
    },
    stop: async () => {
      await run("bash", [script, "stop", dir], { timeout: 60_000 });
    },
  };
}

/**
 * Whether a missing PostgreSQL must fail the run (CI sets ABGATE_REQUIRE_POSTGRES=1) rather than skip with a
 * message.
 */
export const postgresRequired = process.env.ABGATE_REQUIRE_POSTGRES === "1";
