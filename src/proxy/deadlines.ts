/**
 * Expires what a sweeper found past its deadline in the check phase of this turn of the event loop, after the turn's
 * socket reads, through `expireIfStillLate`, which is given the time then and acts only on what is still late.
 *
 * Why: Node runs timers before it reads sockets. After the loop was held up (a GC, a busy core), a sweeper's timer
 * finds deadlines passed whose bytes came in time and are only waiting to be read: a replica's answer (failed as a
 * 504, counted against the replica), the rest of a client's head (a 408), the next request on an idle connection.
 * nginx likewise handles ready events before expired timers.
 */
export function expireAfterReads<T>(late: readonly T[] | null, expireIfStillLate: (item: T, nowMs: number) => void): void {
  if (late === null) return;
  setImmediate(() => {
    const nowMs = Date.now();
    for (const item of late) expireIfStillLate(item, nowMs);
  });
}
