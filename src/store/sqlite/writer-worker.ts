/**
 * The SQLite writer thread (see SqliteThreadStore): a SqliteStore on this thread, answering the proxy's thread.
 */
import { parentPort, workerData } from "node:worker_threads";
import { StoreError } from "../../errors.ts";
import { ExposureBlock, type ExposureBlockParts } from "../exposure-block.ts";
import { SqliteStore } from "./sqlite-store.ts";
import { packPairs, type PackedExposures, type ThreadStoreOptions, toWire, unpackExposures, type WriterReply, type WriterRequest } from "./writer-thread.ts";

const port = parentPort!;
const { path, options } = workerData as { path: string; options: ThreadStoreOptions };
const reply = (m: WriterReply) => port.postMessage(m);

let store: SqliteStore | null = null;

function opened(): SqliteStore {
  if (store === null) throw new StoreError(`SQLite store ${path} is not open`);
  return store;
}

const ops: Record<string, (...args: never[]) => unknown> = {
  async init() {
    store = new SqliteStore(path, {
      ...options,
      // Nothing else runs on this thread: a batch need not be cut into slices to let requests through.
      writeSliceMs: 20,
      checkpointBetweenWrites: true,
      onCloseCheckpoint: (event) => reply({ closeCheckpoint: event }),
    });
    await store.init();
    return { migratedFrom: store.migratedFrom ?? null, fileId: store.fileId };
  },
  exposuresPacked: (packed: PackedExposures) => opened().writeExposures(unpackExposures(packed)),
  exposureBlock: (parts: ExposureBlockParts) => opened().writeExposureBlock(ExposureBlock.fromParts(parts)),
  writeExposures: (rows: Parameters<SqliteStore["writeExposures"]>[0]) => opened().writeExposures(rows),
  writeEvents: (rows: Parameters<SqliteStore["writeEvents"]>[0]) => opened().writeEvents(rows),
  getState: (experiment: string, key: string) => opened().getState(experiment, key),
  setState: (experiment: string, key: string, value: string) => opened().setState(experiment, key, value),
  recentUnits: async (experiment: string, limit: number) => packPairs(await opened().recentUnits(experiment, limit)),
  close: () => store?.close(),
};

port.on("message", ({ id, op, args }: WriterRequest) => {
  const fn = ops[op];
  // A call that throws before it returns a promise is answered as one that rejects.
  new Promise<unknown>((resolve) => {
    if (fn === undefined) throw new StoreError(`the SQLite writer thread has no operation ${op}`);
    resolve((fn as (...a: unknown[]) => unknown)(...args));
  }).then(
    (result) => reply({ id, result: result ?? null }),
    (err: unknown) => reply({ id, error: toWire(err) }),
  );
});
