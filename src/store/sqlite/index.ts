export { SqliteStore, type SqliteStoreOptions, type CloseCheckpointEvent } from "./sqlite-store.ts";
