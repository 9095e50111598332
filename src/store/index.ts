import { InvalidArgumentError } from "../errors.ts";
import { PostgresStore, type PostgresStoreOptions } from "./postgres/index.ts";
import { SqliteStore, type SqliteStoreOptions } from "./sqlite/index.ts";
import { SqliteThreadStore, type SqliteWriter, writerOnThread } from "./sqlite/writer-thread.ts";
import type { Store } from "./types.ts";

export type * from "./types.ts";
export { SqliteStore, type SqliteStoreOptions } from "./sqlite/index.ts";
export { SqliteThreadStore, type SqliteWriter } from "./sqlite/writer-thread.ts";
export { PostgresStore, type PostgresStoreOptions } from "./postgres/index.ts";
export { ExposureBatcher, type ExposureBatcherOptions, type BatcherStats } from "./batcher.ts";
export { latestSchemaVersion } from "./migrations.ts";

/**
 * Opens (but does not initialise: call `init()`) the store a config's `store:` names:
 * `sqlite:<path>` (relative to the working directory; `sqlite::memory:` for a throwaway database) or
 * `postgres://user@host:port/db` (`postgresql://` too). `readOnly: true` only reads an existing store: no migration,
 * no checkpoint, writes refused (see SqliteStoreOptions and PostgresStoreOptions). `sqliteWriter` says where a
 * writable SQLite file is written (default inline: on the caller's thread; see SqliteWriter).
 */
export function openStore(url: string, options: SqliteStoreOptions & PostgresStoreOptions & { sqliteWriter?: SqliteWriter } = {}): Store {
  if (url.startsWith("sqlite:")) {
    const path = url.slice("sqlite:".length);
    if (path === "") throw new InvalidArgumentError(`store "${url}": expected sqlite:<path>, e.g. sqlite:./abgate.db`);
    const { sqliteWriter, ...sqliteOptions } = options;
    if (!sqliteOptions.readOnly && path !== ":memory:" && writerOnThread(sqliteWriter)) return new SqliteThreadStore(path, sqliteOptions);
    return new SqliteStore(path, sqliteOptions);
  }
  if (url.startsWith("postgres://") || url.startsWith("postgresql://")) return new PostgresStore(url, options);
  throw new InvalidArgumentError(`store "${url}": expected sqlite:<path> or postgres://user@host:port/db`);
}
