import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { setImmediate as tick } from "node:timers/promises";
import { ManualClock } from "../clock.ts";
import type { HealthConfig } from "../config/index.ts";
import type { Endpoint } from "../engines/types.ts";
import type { ProbeResult } from "./probe.ts";
import { HealthTracker, NEVER_HEALTHY_INTERVAL_MS, STARTING_INTERVAL_MS, type HealthChange } from "./tracker.ts";

const HEALTH: HealthConfig = { path: "/health", intervalMs: 1000, timeoutMs: 300, rise: 2, fall: 3 };

function ep(id: string, port = 9000): Endpoint {
  const [variant, replica] = id.split("-");
  return { id, variant, replica: Number(replica), host: "127.0.0.1", port };
}

/**
 * A probe whose answers the test sets per endpoint (`answers.set(id, true | false | "hang")`), counting calls.
 * A test double of a function: the real HTTP probe is tested against real servers in probe.test.ts.
 */
function scriptedProbe() {
  const answers = new Map<string, boolean | "hang">();
  const calls: string[] = [];
  const probe = (e: Endpoint, _path: string | null, _timeoutMs: number): Promise<boolean | ProbeResult> => {
    calls.push(e.id);
    const a = answers.get(e.id) ?? true;
    if (a === "hang") return new Promise(() => {});
    return Promise.resolve(a ? true : { ok: false, error: "status 500" });
  };
  return { answers, calls, probe };
}

function setup(options: { ejectAfterFailures?: number; ejectionMs?: number; maxEjectionMs?: number } = {}) {
  const clock = new ManualClock(1_000_000);
  const p = scriptedProbe();
  const changes: HealthChange[] = [];
  const tracker = new HealthTracker({
    clock,
    probe: p.probe,
    ejectAfterFailures: options.ejectAfterFailures ?? 3,
    ejectionMs: options.ejectionMs ?? 10_000,
    maxEjectionMs: options.maxEjectionMs,
  });
  tracker.onChange((c) => changes.push(c));
  /**
   * Advance the clock in steps of 100 ms, letting probe promises settle after each (a probe answers as soon as it is
   * asked; checks of a starting replica come every STARTING_INTERVAL_MS).
   */
  const advance = async (ms: number) => {
    for (let left = ms; left > 0; left -= 100) {
      clock.advance(Math.min(100, left));
      await tick();
      await tick();
    }
  };
  return { clock, tracker, changes, advance, ...p };
}

describe("HealthTracker: active checks", () => {
  test("first-check fast path: a new endpoint is unknown, checked at once, healthy after one good check", async () => {
    const { tracker, calls, changes } = setup();
    tracker.setEndpoints([ep("control-0")], { control: HEALTH });
    assert.equal(tracker.state("control-0"), "unknown");
    assert.equal(tracker.isHealthy("control-0"), false);
    assert.deepEqual(calls, ["control-0"]);
    await tick();
    assert.equal(tracker.state("control-0"), "healthy");
    assert.equal(tracker.isHealthy("control-0"), true);
    assert.deepEqual(changes, [
      { id: "control-0", variant: "control", from: null, to: "unknown" },
      { id: "control-0", variant: "control", from: "unknown", to: "healthy" },
    ]);
  });

  test("never healthy yet: failed checks leave it unknown (no traffic) until `fall` of them; called unhealthy, it is still up at its first pass; once it was healthy, `rise` good ones are needed", async () => {
    const { tracker, answers, advance, changes, calls } = setup();
    const slow = { ...HEALTH, intervalMs: 10_000 };
    answers.set("control-0", false);
    tracker.setEndpoints([ep("control-0")], { control: slow });
    await tick();
    assert.equal(tracker.state("control-0"), "unknown", "a replica still starting is not called down");
    assert.equal(tracker.isHealthy("control-0"), false);
    await advance(19_000);
    assert.equal(tracker.state("control-0"), "unknown");
    await advance(1000);
    assert.equal(tracker.state("control-0"), "unhealthy", "fall=3 failures as far apart as checks at intervalMs");
    assert.deepEqual(changes.map((c) => c.to), ["unknown", "unhealthy"]);
    // Still starting (never passed): checked every NEVER_HEALTHY_INTERVAL_MS, and up at its first pass.
    const before = calls.length;
    await advance(3 * NEVER_HEALTHY_INTERVAL_MS);
    assert.equal(calls.length, before + 3);
    answers.set("control-0", true);
    await advance(NEVER_HEALTHY_INTERVAL_MS);
    assert.equal(tracker.state("control-0"), "healthy", "its first pass");
    // Healthy once: from now on the usual rules, at intervalMs.
    answers.set("control-0", false);
    await advance(30_000);
    assert.equal(tracker.state("control-0"), "unhealthy");
    answers.set("control-0", true);
    await advance(10_000);
    assert.equal(tracker.state("control-0"), "unhealthy", "one success of rise=2");
    answers.set("control-0", false);
    await advance(10_000);
    answers.set("control-0", true);
    await advance(10_000);
    assert.equal(tracker.state("control-0"), "unhealthy", "the streak was broken");
    await advance(10_000);
    assert.equal(tracker.state("control-0"), "healthy");
  });

  test("a replica that fails its first checks while it starts is healthy at its first good one", async () => {
    const { tracker, answers, advance, changes } = setup();
    answers.set("control-0", false);
    tracker.setEndpoints([ep("control-0")], { control: HEALTH });
    await tick();
    await advance(1000);
    answers.set("control-0", true);
    await advance(1000);
    assert.equal(tracker.state("control-0"), "healthy");
    assert.deepEqual(changes.map((c) => c.to), ["unknown", "healthy"], "never reported unhealthy");
  });

  test("a starting replica is checked every STARTING_INTERVAL_MS, not intervalMs, and called unhealthy no sooner", async () => {
    const { tracker, answers, advance, calls, clock } = setup();
    const slow = { ...HEALTH, intervalMs: 10_000 };
    answers.set("control-0", false);
    tracker.setEndpoints([ep("control-0")], { control: slow });
    await tick();
    await advance(1000);
    assert.equal(calls.length, 1 + 1000 / STARTING_INTERVAL_MS);
    // It listens now: healthy at the next check, not 10 s after the first.
    answers.set("control-0", true);
    await advance(STARTING_INTERVAL_MS);
    assert.equal(tracker.state("control-0"), "healthy");
    // Healthy: back to intervalMs.
    const before = calls.length;
    await advance(10_000);
    assert.equal(calls.length, before + 1);

    // One that never listens: unknown until its failures span fall = 3 checks at intervalMs (20 s).
    answers.set("control-1", false);
    tracker.setEndpoints([ep("control-0"), ep("control-1", 9001)], { control: slow });
    const added = clock.now();
    await tick();
    await advance(20_000 - STARTING_INTERVAL_MS);
    assert.equal(tracker.state("control-1"), "unknown");
    await advance(STARTING_INTERVAL_MS);
    assert.equal(tracker.state("control-1"), "unhealthy");
    assert.equal(clock.now() - added, 20_000);
  });

  test("a starting replica whose checks time out is called unhealthy no sooner than checks at intervalMs would, and up at once when ready", async () => {
    const { tracker, answers, advance, clock } = setup();
    const health = { ...HEALTH, intervalMs: 2000, timeoutMs: 1000, fall: 3 };
    answers.set("control-0", "hang");
    const t0 = clock.now();
    tracker.setEndpoints([ep("control-0")], { control: health });
    // At intervalMs: checks 0-1000, 3000-4000, 6000-7000, the third failure at 7 s.
    await advance(7000);
    assert.equal(tracker.state("control-0"), "unknown");
    await advance(2000);
    assert.equal(tracker.state("control-0"), "unhealthy");

    // One that answers once it is ready at 5 s: never called down, healthy at the first check after.
    answers.set("control-1", "hang");
    tracker.setEndpoints([ep("control-0"), ep("control-1", 9001)], { control: health });
    const added = clock.now();
    await advance(5000);
    answers.set("control-1", true);
    await advance(1000);
    assert.equal(tracker.state("control-1"), "healthy");
    assert.ok(clock.now() - added <= 6000);
    assert.ok(t0 < added);
  });

  test("fall: `fall` failed checks in a row make a healthy endpoint unhealthy; a success resets the count", async () => {
    const { tracker, answers, advance } = setup();
    tracker.setEndpoints([ep("control-0")], { control: HEALTH });
    await tick();
    answers.set("control-0", false);
    await advance(1000);
    await advance(1000);
    assert.equal(tracker.state("control-0"), "healthy");
    assert.equal(tracker.snapshot()[0].consecutiveFailures, 2);
    answers.set("control-0", true);
    await advance(1000);
    answers.set("control-0", false);
    await advance(1000);
    await advance(1000);
    assert.equal(tracker.state("control-0"), "healthy");
    await advance(1000);
    assert.equal(tracker.state("control-0"), "unhealthy");
    const snap = tracker.snapshot()[0];
    assert.equal(snap.consecutiveFailures, 3);
    assert.equal(snap.lastError, "status 500");
    assert.equal(snap.lastCheckMs, 1_000_000 + 6000);
  });

  test("checks run every intervalMs after the previous one finished, exactly", async () => {
    const { tracker, calls, advance } = setup();
    tracker.setEndpoints([ep("control-0")], { control: HEALTH });
    await tick();
    await advance(999);
    assert.equal(calls.length, 1);
    await advance(1);
    assert.equal(calls.length, 2);
    // one step per check: the next check is scheduled when the previous probe's promise settles, after `advance`
    for (let i = 0; i < 5; i++) await advance(1000);
    assert.equal(calls.length, 7);
  });

  test("a check that does not answer within timeoutMs (clock time) fails", async () => {
    const { tracker, answers, advance } = setup();
    answers.set("control-0", "hang");
    tracker.setEndpoints([ep("control-0")], { control: HEALTH });
    await advance(299);
    assert.equal(tracker.snapshot()[0].consecutiveFailures, 0);
    await advance(1);
    assert.equal(tracker.snapshot()[0].consecutiveFailures, 1);
    assert.equal(tracker.snapshot()[0].lastError, "timeout after 300 ms");
    // Starting, it is checked every 200 ms, but only failures as far apart as checks at intervalMs count toward
    // fall: those of the checks from 1500 to 1800 and from 3000 to 3300.
    await advance(2999);
    assert.equal(tracker.state("control-0"), "unknown");
    await advance(1);
    assert.equal(tracker.state("control-0"), "unhealthy", "fall=3 timeouts");
  });

  test("an endpoint whose variant has no health config is healthy at once and never probed", async () => {
    const { tracker, calls, clock, advance } = setup();
    tracker.setEndpoints([ep("control-0")], {});
    assert.equal(tracker.isHealthy("control-0"), true);
    await advance(60_000);
    assert.deepEqual(calls, []);
    assert.equal(clock.pendingTimers(), 0);
  });

  test("a probe that throws or rejects counts as a failed check, never an unhandled error", async () => {
    const clock = new ManualClock();
    let mode = "throw";
    const tracker = new HealthTracker({
      clock,
      ejectAfterFailures: 3,
      ejectionMs: 1000,
      probe: () => {
        if (mode === "throw") throw new Error("boom");
        return Promise.reject(new Error("rejected"));
      },
    });
    tracker.setEndpoints([ep("a-0")], { a: { ...HEALTH, fall: 1 } });
    await tick();
    assert.equal(tracker.state("a-0"), "unhealthy");
    assert.equal(tracker.snapshot()[0].lastError, "boom");
    mode = "reject";
    clock.advance(1000);
    await tick();
    assert.equal(tracker.snapshot()[0].lastError, "rejected");
    tracker.stop();
  });
});

describe("HealthTracker: passive ejection", () => {
  test("an ejection is reported for as long as it was decided, even when the clock moves while it is decided", () => {
    // A real clock may tick between the decision and the report: the gateway's log line once said "1999 ms" for a
    // 2,000 ms ejection. Here every read of the clock moves it by 1 ms.
    const clock = new (class extends ManualClock {
      override now(): number {
        const t = super.now();
        this.advance(1);
        return t;
      }
    })(1_000_000);
    const changes: HealthChange[] = [];
    const tracker = new HealthTracker({ clock, probe: scriptedProbe().probe, ejectAfterFailures: 2, ejectionMs: 1000 });
    tracker.onChange((c) => changes.push(c));
    tracker.setEndpoints([ep("control-0")], {});
    tracker.reportFailure("control-0", "answered 500");
    tracker.reportFailure("control-0", "answered 500");
    assert.deepEqual(
      changes.filter((c) => c.to === "ejected").map((c) => c.ejectionMs),
      [1000],
    );
    tracker.stop();
  });

  test("ejectAfterFailures consecutive failures eject for ejectionMs, then the endpoint returns", async () => {
    const { tracker, changes, advance, clock } = setup({ ejectAfterFailures: 3, ejectionMs: 10_000 });
    tracker.setEndpoints([ep("control-0")], {});
    tracker.reportFailure("control-0");
    tracker.reportFailure("control-0");
    tracker.reportSuccess("control-0");
    tracker.reportFailure("control-0");
    tracker.reportFailure("control-0");
    assert.equal(tracker.state("control-0"), "healthy", "the streak was broken by a success");
    tracker.reportFailure("control-0", "ECONNREFUSED");
    assert.equal(tracker.state("control-0"), "ejected");
    assert.equal(tracker.isHealthy("control-0"), false);
    assert.equal(tracker.snapshot()[0].ejectedUntilMs, 1_000_000 + 10_000);
    assert.equal(tracker.snapshot()[0].lastError, "ECONNREFUSED");
    tracker.reportFailure("control-0");
    await advance(9_999);
    assert.equal(tracker.state("control-0"), "ejected");
    await advance(1);
    assert.equal(tracker.state("control-0"), "healthy");
    assert.equal(tracker.snapshot()[0].passiveFailures, 0);
    assert.equal(clock.pendingTimers(), 0);
    assert.deepEqual(
      changes.map((c) => `${c.from}->${c.to}`),
      ["null->healthy", "healthy->ejected", "ejected->healthy"],
    );
  });

  test("after ejection an endpoint returns to its active state (unhealthy if its checks failed meanwhile)", async () => {
    const { tracker, answers, advance } = setup({ ejectAfterFailures: 1, ejectionMs: 5000 });
    tracker.setEndpoints([ep("control-0")], { control: { ...HEALTH, fall: 1 } });
    await tick();
    tracker.reportFailure("control-0");
    assert.equal(tracker.state("control-0"), "ejected");
    answers.set("control-0", false);
    await advance(1000);
    assert.equal(tracker.state("control-0"), "ejected");
    await advance(4000);
    assert.equal(tracker.state("control-0"), "unhealthy");
  });

  test("ejected again soon after it came back, an endpoint stays out ejectionMs longer each time, up to maxEjectionMs; each ejectionMs back takes one off", async () => {
    const { tracker, changes, advance, clock } = setup({ ejectAfterFailures: 2, ejectionMs: 1000, maxEjectionMs: 3500 });
    tracker.setEndpoints([ep("control-0")], {});
    const ejectAndReturn = async (): Promise<number> => {
      const start = clock.now();
      tracker.reportFailure("control-0", "answered 500");
      tracker.reportFailure("control-0", "answered 500");
      assert.equal(tracker.state("control-0"), "ejected");
      while (tracker.state("control-0") === "ejected") await advance(100);
      return clock.now() - start;
    };
    // at once after each return: 1, 2, 3 times ejectionMs, then the 3,500 ms bound
    assert.deepEqual([await ejectAndReturn(), await ejectAndReturn(), await ejectAndReturn(), await ejectAndReturn(), await ejectAndReturn()], [1000, 2000, 3000, 3500, 3500]);
    const ejections = changes.filter((c) => c.to === "ejected");
    assert.deepEqual(
      ejections.map((c) => [c.ejectionMs, c.ejections, c.lastError]),
      [
        [1000, 1, "answered 500"],
        [2000, 2, "answered 500"],
        [3000, 3, "answered 500"],
        [3500, 4, "answered 500"],
        [3500, 4, "answered 500"],
      ],
    );
    // Back for 2.5 ejectionMs: two off the count of 4 (the bound's), so the next lasts 3 × ejectionMs.
    await advance(2500);
    assert.equal(await ejectAndReturn(), 3000);
    // Back for long: the first ejection's length again.
    await advance(60_000);
    assert.equal(await ejectAndReturn(), 1000);
    assert.equal(clock.pendingTimers(), 0);
    tracker.stop();
  });

  test("maxEjectionMs defaults to 300,000 ms (Envoy's max_ejection_time), or ejectionMs when that is longer; below ejectionMs it is refused", async () => {
    const { tracker, changes, clock } = setup({ ejectAfterFailures: 1, ejectionMs: 200_000 });
    tracker.setEndpoints([ep("control-0")], {});
    tracker.reportFailure("control-0");
    assert.equal(changes.at(-1)!.ejectionMs, 200_000);
    clock.advance(200_000);
    await tick();
    assert.equal(tracker.state("control-0"), "healthy");
    tracker.reportFailure("control-0");
    assert.equal(changes.at(-1)!.ejectionMs, 300_000, "the second, 400,000 by the count, is bounded by the default");
    tracker.stop();
    const long = setup({ ejectAfterFailures: 1, ejectionMs: 400_000 });
    long.tracker.setEndpoints([ep("control-0")], {});
    long.tracker.reportFailure("control-0");
    assert.equal(long.changes.at(-1)!.ejectionMs, 400_000);
    long.tracker.stop();
    assert.throws(() => setup({ ejectionMs: 1000, maxEjectionMs: 999 }), /maxEjectionMs must be at least ejectionMs \(1000\), got 999/);
  });

  test("reports for unknown ids are ignored", () => {
    const { tracker } = setup();
    tracker.reportFailure("nope");
    tracker.reportSuccess("nope");
    assert.equal(tracker.isHealthy("nope"), false);
    assert.equal(tracker.state("nope"), "unknown");
  });
});

describe("HealthTracker: endpoint changes, waiting, stopping", () => {
  test("removed endpoints stop their loops and timers; results in flight are ignored", async () => {
    const { tracker, answers, clock, changes, advance } = setup({ ejectAfterFailures: 1 });
    answers.set("b-0", "hang");
    tracker.setEndpoints([ep("a-0"), ep("b-0"), ep("c-0")], { a: HEALTH, b: HEALTH });
    await tick();
    tracker.reportFailure("c-0");
    assert.ok(clock.pendingTimers() >= 3);
    tracker.setEndpoints([], {});
    assert.equal(clock.pendingTimers(), 0);
    assert.equal(tracker.isHealthy("a-0"), false);
    assert.deepEqual(tracker.snapshot(), []);
    assert.deepEqual(
      changes.filter((c) => c.to === null).map((c) => c.id),
      ["a-0", "b-0", "c-0"],
    );
    await advance(100_000);
    assert.equal(clock.pendingTimers(), 0);
  });

  test("an endpoint whose address changed is a new endpoint (unknown, checked at once)", async () => {
    const { tracker, calls } = setup();
    tracker.setEndpoints([ep("a-0", 9000)], { a: HEALTH });
    await tick();
    assert.equal(tracker.state("a-0"), "healthy");
    tracker.setEndpoints([ep("a-0", 9001)], { a: HEALTH });
    assert.equal(tracker.state("a-0"), "unknown");
    assert.equal(calls.length, 2);
    await tick();
    assert.equal(tracker.state("a-0"), "healthy");
  });

  test("an unchanged endpoint list changes nothing (no extra checks)", async () => {
    const { tracker, calls, clock } = setup();
    tracker.setEndpoints([ep("a-0")], { a: HEALTH });
    await tick();
    tracker.setEndpoints([ep("a-0")], { a: { ...HEALTH } });
    assert.equal(calls.length, 1);
    assert.equal(clock.pendingTimers(), 1);
  });

  test("dropping a variant's health config stops its checks and makes it healthy", async () => {
    const { tracker, answers, clock } = setup();
    answers.set("a-0", false);
    tracker.setEndpoints([ep("a-0")], { a: { ...HEALTH, fall: 1 } });
    await tick();
    assert.equal(tracker.state("a-0"), "unhealthy");
    tracker.setEndpoints([ep("a-0")], {});
    assert.equal(tracker.state("a-0"), "healthy");
    assert.equal(clock.pendingTimers(), 0);
  });

  test("waitHealthy resolves when all ids are healthy (including ids that appear later)", async () => {
    const { tracker, answers, advance } = setup();
    answers.set("a-0", false);
    tracker.setEndpoints([ep("a-0")], { a: HEALTH, b: HEALTH });
    await tick();
    let done = false;
    const wait = tracker.waitHealthy(["a-0", "b-0"], 60_000).then(() => (done = true));
    answers.set("a-0", true);
    await advance(1000);
    await advance(1000);
    assert.equal(tracker.state("a-0"), "healthy");
    assert.equal(done, false);
    tracker.setEndpoints([ep("a-0"), ep("b-0")], { a: HEALTH, b: HEALTH });
    await tick();
    await wait;
    assert.equal(done, true);
    await tracker.waitHealthy([], 1);
  });

  test("waitHealthy rejects after timeoutMs of clock time, naming what is not healthy and why", async () => {
    const { tracker, answers, clock } = setup();
    answers.set("a-0", false);
    tracker.setEndpoints([ep("a-0"), ep("b-0")], { a: HEALTH });
    await tick();
    // (named by id, numbers as numbers, whatever the order asked in: the order replicas registered varies)
    const rejected = assert.rejects(tracker.waitHealthy(["c-10", "c-2", "a-0", "b-0"], 30_000), (err: Error & { code?: string }) => {
      assert.equal(err.code, "ABGATE_ERR_HEALTH_TIMEOUT");
      assert.match(err.message, /not healthy after 30000 ms: a-0 \(unhealthy: status 500\), c-2 \(not running: it exited, or never started\), c-10 \(not running/);
      return true;
    });
    for (let i = 0; i < 30; i++) {
      clock.advance(1000);
      await tick();
    }
    await rejected;
  });

  test("stop cancels every timer, rejects waiters and ignores later results", async () => {
    const { tracker, answers, clock, changes } = setup({ ejectAfterFailures: 1 });
    answers.set("b-0", "hang");
    tracker.setEndpoints([ep("a-0"), ep("b-0")], { a: HEALTH, b: HEALTH });
    tracker.reportFailure("a-0");
    const wait = tracker.waitHealthy(["b-0"], 60_000);
    tracker.stop();
    await assert.rejects(wait, /stopped/);
    assert.equal(clock.pendingTimers(), 0);
    const n = changes.length;
    await tick();
    assert.equal(changes.length, n, "the first check's result arrived after stop and was ignored");
    tracker.setEndpoints([ep("c-0")], { c: HEALTH });
    assert.equal(clock.pendingTimers(), 0);
  });
});
