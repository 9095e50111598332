import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pino } from "pino";
import { ManualClock } from "../clock.ts";
import { LogThrottle } from "./throttle.ts";

/** A real pino logger whose lines are kept, parsed. */
function capture(level: "debug" | "info" | "warn" | "error" = "info") {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level, base: {} }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

describe("LogThrottle", () => {
  it("logs a burst of each kind per window, then one line counting the rest, with the last one's fields", () => {
    const clock = new ManualClock(0);
    const { log, lines } = capture();
    const t = new LogThrottle(log, { clock, burst: 3, intervalMs: 1000 });
    for (let i = 0; i < 10; i++) {
      clock.advance(10);
      t.warn("connect v0", { requestId: `r${i}`, variant: "v0" }, "cannot connect");
    }
    assert.deepEqual(
      lines.map((l) => l.requestId),
      ["r0", "r1", "r2"],
    );
    // The summary comes at the window's end (it started at the first line, t = 10), not with a later line.
    clock.advance(1009 - clock.now());
    assert.equal(lines.length, 3);
    clock.advance(1);
    assert.equal(lines.length, 4);
    assert.equal(lines[3]!.suppressed, 7);
    assert.equal(lines[3]!.requestId, "r9");
    assert.equal(lines[3]!.level, 40);
    assert.match(String(lines[3]!.msg), /^cannot connect \(and 7 more like it within 1 s/);
    assert.equal(clock.pendingTimers(), 0);
    // A new window: in full again.
    t.warn("connect v0", { requestId: "r10" }, "cannot connect");
    assert.equal(lines.at(-1)!.requestId, "r10");
    assert.equal(lines.at(-1)!.suppressed, undefined);
  });

  it("counts each kind on its own, at its own level", () => {
    const clock = new ManualClock(0);
    const { log, lines } = capture();
    const t = new LogThrottle(log, { clock, burst: 1, intervalMs: 500 });
    for (let i = 0; i < 5; i++) {
      t.warn("a", { i }, "A");
      t.info("b", { i }, "B");
      t.error("c", { i }, "C");
    }
    assert.deepEqual(
      lines.map((l) => l.msg),
      ["A", "B", "C"],
    );
    clock.advance(500);
    const summaries = lines.slice(3).map((l) => [l.level, l.suppressed, l.i]);
    assert.deepEqual(summaries, [
      [40, 4, 4],
      [30, 4, 4],
      [50, 4, 4],
    ]);
  });

  it("a window with nothing suppressed ends without a line", () => {
    const clock = new ManualClock(0);
    const { log, lines } = capture();
    const t = new LogThrottle(log, { clock, burst: 2, intervalMs: 1000 });
    t.warn("k", {}, "x");
    t.warn("k", {}, "x");
    clock.advance(5000);
    assert.equal(lines.length, 2);
    assert.equal(clock.pendingTimers(), 0);
  });

  it("flush() logs the counts still due, leaves no timer, and lets every later line through", () => {
    const clock = new ManualClock(0);
    const { log, lines } = capture();
    const t = new LogThrottle(log, { clock, burst: 1, intervalMs: 1000 });
    t.warn("k", { n: 1 }, "x");
    t.warn("k", { n: 2 }, "x");
    t.warn("k", { n: 3 }, "x");
    t.flush();
    assert.deepEqual(
      lines.map((l) => [l.n, l.suppressed]),
      [
        [1, undefined],
        [3, 2],
      ],
    );
    assert.equal(clock.pendingTimers(), 0);
    clock.advance(2000);
    assert.equal(lines.length, 2);
    // After it (the gateway stopping), lines are logged as they come: no window could end in time.
    t.warn("k", { n: 4 }, "x");
    t.warn("k", { n: 5 }, "x");
    assert.deepEqual(
      lines.slice(2).map((l) => l.n),
      [4, 5],
    );
    assert.equal(clock.pendingTimers(), 0);
  });

  it("at level debug logs every line; below the line's level, none, and keeps no window", () => {
    const clock = new ManualClock(0);
    const debug = capture("debug");
    const all = new LogThrottle(debug.log, { clock, burst: 1 });
    for (let i = 0; i < 5; i++) all.warn("k", { i }, "x");
    assert.equal(debug.lines.length, 5);
    assert.equal(clock.pendingTimers(), 0);

    const quiet = capture("error");
    const none = new LogThrottle(quiet.log, { clock, burst: 1 });
    for (let i = 0; i < 5; i++) none.warn("k", { i }, "x");
    assert.equal(quiet.lines.length, 0);
    assert.equal(clock.pendingTimers(), 0);
  });
});
