import { InvalidArgumentError } from "../errors.ts";
import { PostgresStore, type PostgresStoreOptions } from "./postgres/index.ts";
import { SqliteStore, type SqliteStoreOptions } from "./sqlite/index.ts";
import type { Store } from "./types.ts";

export type * from "./types.ts";
export { SqliteStore, type SqliteStoreOptions } from "./sqlite/index.ts";
export { PostgresStore, type PostgresStoreOptions } from "./postgres/index.ts";
export { ExposureBatcher, type ExposureBatcherOptions, type BatcherStats } from "./batcher.ts";
export { latestSchemaVersion } from "./migrations.ts";

/**
 * Opens (but does not initialise: call `init()`) the store a config's `store:` names:
 * `sqlite:<path>` (relative to the working directory; `sqlite::memory:` for a throwaway database) or
 * `postgres://user@host:port/db` (`postgresql://` too). `readOnly: true` only reads an existing store: no migration,
 * no checkpoint, writes refused (see SqliteStoreOptions and PostgresStoreOptions).
 */
export function openStore(url: string, options: SqliteStoreOptions & PostgresStoreOptions = {}): Store {
  if (url.startsWith("sqlite:")) {
    const path = url.slice("sqlite:".length);
    if (path === "") throw new InvalidArgumentError(`store "${url}": expected sqlite:<path>, e.g. sqlite:./abgate.db`);
    return new SqliteStore(path, options);
  }
  if (url.startsWith("postgres://") || url.startsWith("postgresql://")) return new PostgresStore(url, options);
  throw new InvalidArgumentError(`store "${url}": expected sqlite:<path> or postgres://user@host:port/db`);
}
