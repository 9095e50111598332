export { PostgresStore, type PostgresStoreOptions, toPgPlaceholders } from "./postgres-store.ts";
