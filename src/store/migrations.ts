import { StoreError } from "../errors.ts";

/**
 * Versioned schema migrations, one numbered list for both dialects. A migration is applied at most once: its
 * version is recorded in `schema_migrations` in the same transaction as its statements, so a crash halfway leaves
 * the version unrecorded and the statements rolled back, and the next `init()` tries again.
 *
 * Never edit a migration that has shipped; add a new one with the next number.
 *
 * Layout, and why:
 * - `exposures` and `events` are the raw, append-only record. `exposures` has no secondary index: it is written on
 *   the proxy's hot path and never scanned by the report, which reads the rollups below instead.
 * - `units` holds each unit's first non-forced exposure (time and assigned variant) and whether it was ever
 *   assigned another variant. It is maintained on write (see rollup.ts) so intention-to-treat attribution costs one
 *   row per unit instead of a scan of every exposure.
 * - `minute_stats` (per experiment, minute and assigned variant) and `latency_hist` (log-spaced latency buckets)
 *   are maintained on write as well; the report and the dashboard sum a few thousand rows instead of millions.
 * - `events` is indexed by (experiment, event, unit, ts, value) so the window join against `units` walks events
 *   in unit order from a covering index, and by (experiment, event, ts) for "conversions since" on the dashboard.
 * - `units` is indexed by (experiment, first_ts, first_variant), covering "new units per minute" for the dashboard.
 */
export interface Migration {
  version: number;
  name: string;
  sqlite: string[];
  postgres: string[];
}

/** The columns of version 1's exposures table, which the `exposures` view of later versions keeps. */
const EXPOSURE_COLUMNS = "id, experiment, ts, request_id, unit, assigned, served, replica, status, latency_ms, forced";

/** The rows of the JSON chunks (version 2) in `chunks`, a JSON text per row of exposure_chunks c. */
function jsonChunkRows(chunks: string): string {
  return `SELECT c.id * 65536 + j.key + (SELECT coalesce(max(id), 0) FROM exposure_rows),
           c.experiment, c.base_ts + (j.value ->> 0), j.value ->> 1, j.value ->> 2,
           c.triples ->> ((j.value ->> 3) * 3), c.triples ->> ((j.value ->> 3) * 3 + 1), c.triples ->> ((j.value ->> 3) * 3 + 2),
           j.value ->> 4, CASE typeof(j.value ->> 5) WHEN 'integer' THEN (j.value ->> 5) / 1000.0 ELSE j.value ->> 5 END,
           j.value ->> 6
    FROM exposure_chunks c, json_each(${chunks}) j`;
}

/** Bytes of a binary chunk's header (its row count) and of each row's fixed part: see ExposureBlockInsert. */
export const BLOCK_HEADER_BYTES = 2;
export const BLOCK_ROW_BYTES = 16;
/** Most rows in a binary chunk: the view counts rows up to it. */
export const BLOCK_MAX_ROWS = 256;

export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: "initial schema: raw exposures and events, unit/minute/latency rollups, state",
    sqlite: [
      `CREATE TABLE exposures (
        id INTEGER PRIMARY KEY,
        experiment TEXT NOT NULL,
        ts INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        unit TEXT NOT NULL,
        assigned TEXT NOT NULL,
        served TEXT NOT NULL,
        replica TEXT NOT NULL,
        status INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        forced INTEGER NOT NULL
      )`,
      `CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        experiment TEXT NOT NULL,
        unit TEXT NOT NULL,
        event TEXT NOT NULL CHECK (event <> ''),
        value REAL,
        ts INTEGER NOT NULL,
        request_id TEXT
      )`,
      `CREATE INDEX events_by_unit ON events (experiment, event, unit, ts, value)`,
      `CREATE INDEX events_by_ts ON events (experiment, event, ts)`,
      `CREATE TABLE units (
        experiment TEXT NOT NULL,
        unit TEXT NOT NULL,
        first_ts INTEGER NOT NULL,
        first_variant TEXT NOT NULL,
        multi INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (experiment, unit)
      ) WITHOUT ROWID`,
      `CREATE INDEX units_by_first_ts ON units (experiment, first_ts, first_variant)`,
      `CREATE TABLE minute_stats (
        experiment TEXT NOT NULL,
        minute INTEGER NOT NULL,
        variant TEXT NOT NULL,
        requests INTEGER NOT NULL,
        fallback INTEGER NOT NULL,
        forced INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        latency_n INTEGER NOT NULL,
        latency_sum REAL NOT NULL,
        latency_sum_sq REAL NOT NULL,
        min_ts INTEGER,
        max_ts INTEGER,
        PRIMARY KEY (experiment, minute, variant)
      ) WITHOUT ROWID`,
      `CREATE TABLE latency_hist (
        experiment TEXT NOT NULL,
        variant TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (experiment, variant, bucket)
      ) WITHOUT ROWID`,
      `CREATE TABLE counters (
        experiment TEXT PRIMARY KEY,
        exposures INTEGER NOT NULL,
        events INTEGER NOT NULL
      ) WITHOUT ROWID`,
      `CREATE TABLE state (
        experiment TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (experiment, key)
      ) WITHOUT ROWID`,
    ],
    postgres: [
      `CREATE TABLE exposures (
        id BIGSERIAL PRIMARY KEY,
        experiment TEXT NOT NULL,
        ts BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        unit TEXT NOT NULL,
        assigned TEXT NOT NULL,
        served TEXT NOT NULL,
        replica TEXT NOT NULL,
        status INTEGER NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        forced SMALLINT NOT NULL
      )`,
      `CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        experiment TEXT NOT NULL,
        unit TEXT NOT NULL,
        event TEXT NOT NULL CHECK (event <> ''),
        value DOUBLE PRECISION,
        ts BIGINT NOT NULL,
        request_id TEXT
      )`,
      `CREATE INDEX events_by_unit ON events (experiment, event, unit, ts) INCLUDE (value)`,
      `CREATE INDEX events_by_ts ON events (experiment, event, ts)`,
      `CREATE TABLE units (
        experiment TEXT NOT NULL,
        unit TEXT NOT NULL,
        first_ts BIGINT NOT NULL,
        first_variant TEXT NOT NULL,
        multi SMALLINT NOT NULL DEFAULT 0,
        PRIMARY KEY (experiment, unit)
      )`,
      `CREATE INDEX units_by_first_ts ON units (experiment, first_ts, first_variant)`,
      `CREATE TABLE minute_stats (
        experiment TEXT NOT NULL,
        minute BIGINT NOT NULL,
        variant TEXT NOT NULL,
        requests BIGINT NOT NULL,
        fallback BIGINT NOT NULL,
        forced BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        latency_n BIGINT NOT NULL,
        latency_sum DOUBLE PRECISION NOT NULL,
        latency_sum_sq DOUBLE PRECISION NOT NULL,
        min_ts BIGINT,
        max_ts BIGINT,
        PRIMARY KEY (experiment, minute, variant)
      )`,
      `CREATE TABLE latency_hist (
        experiment TEXT NOT NULL,
        variant TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        count BIGINT NOT NULL,
        PRIMARY KEY (experiment, variant, bucket)
      )`,
      `CREATE TABLE counters (
        experiment TEXT PRIMARY KEY,
        exposures BIGINT NOT NULL,
        events BIGINT NOT NULL
      )`,
      `CREATE TABLE state (
        experiment TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (experiment, key)
      )`,
    ],
  },
  {
    version: 2,
    name: "SQLite: raw exposures packed as JSON chunks, read through an `exposures` view",
    // Why: see ExposureChunkInsert in sqlite/sqlite-store.ts. Rows written before stay in `exposure_rows`; the view
    // shows both, with the same columns, types and order as the table it replaces. PostgreSQL keeps a row each.
    sqlite: [
      `ALTER TABLE exposures RENAME TO exposure_rows`,
      `CREATE TABLE exposure_chunks (
        id INTEGER PRIMARY KEY,
        experiment TEXT NOT NULL,
        base_ts INTEGER NOT NULL,
        triples TEXT NOT NULL,
        rows TEXT NOT NULL
      )`,
      `CREATE VIEW exposures (${EXPOSURE_COLUMNS}) AS
        SELECT ${EXPOSURE_COLUMNS} FROM exposure_rows
        UNION ALL
        ${jsonChunkRows("c.rows")}`,
    ],
    postgres: [],
  },
  {
    version: 3,
    name: "SQLite: raw exposures also as binary chunks, which the `exposures` view unpacks too",
    // Why: see ExposureBlockInsert in sqlite/sqlite-store.ts. The chunks go in the same table, their `rows` a BLOB
    // where the JSON chunks' is TEXT; the view shows both, with the same ids, columns and types.
    sqlite: [`DROP VIEW exposures`, exposuresView()],
    postgres: [],
  },
];

/**
 * The `exposures` view of schema version 3: the rows of version 1's table, of JSON chunks (version 2) and of binary
 * chunks. SQL has no function that reads a number out of a BLOB, so a byte is read as its position in a BLOB of all
 * 256 byte values (`instr` compares BLOBs byte by byte), and the binary chunk's numbers are big-endian.
 */
function exposuresView(): string {
  const byteAt = (p: string) => `(instr(b.v, substr(c.rows, ${p}, 1)) - 1)`;
  const uint = (p: string, bytes: number) =>
    Array.from({ length: bytes }, (_, i) => `${byteAt(`${p} + ${i}`)} * ${2 ** (8 * (bytes - 1 - i))}`).join(" + ");
  const row = `(${BLOCK_HEADER_BYTES + 1} + k.n * ${BLOCK_ROW_BYTES})`;
  const rowCount = `(${uint("1", BLOCK_HEADER_BYTES)})`;
  const text = `(${BLOCK_HEADER_BYTES + 1} + ${rowCount} * ${BLOCK_ROW_BYTES} + ${uint(`${row} + 12`, 2)})`;
  const requestIdBytes = byteAt(`${row} + 11`);
  const flags = byteAt(`${row} + 10`);
  const triple = `(${flags} % 128) * 3`;
  const allBytes = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0")).join("");
  return `CREATE VIEW exposures (${EXPOSURE_COLUMNS}) AS
    WITH RECURSIVE k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n < ${BLOCK_MAX_ROWS - 1}), b(v) AS (SELECT X'${allBytes}')
    SELECT ${EXPOSURE_COLUMNS} FROM exposure_rows
    UNION ALL
    ${jsonChunkRows("CASE WHEN typeof(c.rows) = 'text' THEN c.rows ELSE '[]' END")}
    UNION ALL
    SELECT c.id * 65536 + k.n + (SELECT coalesce(max(id), 0) FROM exposure_rows),
           c.experiment, c.base_ts + ${uint(row, 4)} - 2147483648,
           CAST(substr(c.rows, ${text}, ${requestIdBytes}) AS TEXT),
           CAST(substr(c.rows, ${text} + ${requestIdBytes}, ${byteAt(`${row} + 14`)}) AS TEXT),
           c.triples ->> (${triple}), c.triples ->> (${triple} + 1), c.triples ->> (${triple} + 2),
           ${uint(`${row} + 8`, 2)}, (${uint(`${row} + 4`, 4)}) / 1000.0, ${flags} / 128
    FROM exposure_chunks c JOIN b JOIN k ON typeof(c.rows) = 'blob' AND k.n < ${rowCount}`;
}

/** The schema version this build of abgate writes. */
export const latestSchemaVersion = migrations[migrations.length - 1]!.version;

/**
 * Rails, golang-migrate and Ecto name their table of migrations `schema_migrations` too; abgate's has these columns.
 * Given the columns of a `schema_migrations` table, whether it is another tool's (then the store is not abgate's).
 */
export function foreignMigrationsTable(columns: readonly string[]): boolean {
  return !["name", "applied_at"].every((c) => columns.includes(c));
}

export function notAbgateStore(where: string): StoreError {
  return new StoreError(`${where} is not an abgate store: its schema_migrations table is another tool's (no name and applied_at columns); abgate leaves it alone. Point store: at a new file or database`);
}

/**
 * For a store opened read-only, which cannot migrate: refuses a schema that is not exactly this abgate's, given
 * the versions recorded in `schema_migrations` (none: no such table). `where` names the store in messages.
 */
export function checkSchemaReadOnly(where: string, applied: ReadonlySet<number>): void {
  const newest = Math.max(0, ...applied);
  if (newest > latestSchemaVersion) {
    throw new StoreError(`${where} has schema version ${newest}, newer than this abgate understands (${latestSchemaVersion}); upgrade abgate`);
  }
  if (migrations.every((m) => applied.has(m.version))) return;
  if (applied.size === 0) {
    throw new StoreError(`${where} has no abgate schema: it is not an abgate store, or one never opened by abgate up or serve, which create the schema when they start`);
  }
  throw new StoreError(
    `${where} has schema version ${newest}, older than this abgate's (${latestSchemaVersion}): it needs migrating, which a read-only open does not do. ` +
      `Open it writable once: abgate report --writable, or abgate up or serve, which migrate it when they start`,
  );
}
