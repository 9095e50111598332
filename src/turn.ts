/**
 * Turns of the event loop for long jobs cut into slices (the SQLite store's writes, a few hundred µs each), and what
 * must run before such a slice.
 *
 * A slice resumes from an immediate queued in the turn before, so it runs ahead of whatever the current turn's reads
 * queued for its end; the proxy's deferred writes (src/proxy/direct-write.ts) would then wait behind the slice. Jobs
 * registered here run first, so those writes leave when the reads that made them are done, slice or not.
 */
const beforeSlice: (() => void)[] = [];

/** Runs `job` at the start of every slice's turn (it must be quick and must not throw). */
export function runBeforeEachSlice(job: () => void): void {
  beforeSlice.push(job);
}

/** Resolves in the next turn's check phase, after the jobs of `runBeforeEachSlice`. */
export function nextTurn(): Promise<void> {
  return new Promise<void>((resolve) =>
    setImmediate(() => {
      for (let i = 0; i < beforeSlice.length; i++) beforeSlice[i]!();
      resolve();
    }),
  );
}
