import assert from "node:assert/strict";
import { request } from "node:http";
import { describe, test, type TestContext } from "node:test";
import type { Endpoint, Engine, EngineKind } from "./types.ts";

/**
 * The variants every setup configures. The second one's name sorts before the control's, so that the order checked
 * is EndpointSet's (by variant name, then replica), not the config's.
 */
export const CONFORMANCE_VARIANTS = [
  { name: "control", replicas: 2 },
  { name: "challenger", replicas: 1 },
] as const;

/** Every replica of CONFORMANCE_VARIANTS, in the order `endpoints()` lists them. */
const EXPECTED = [
  { id: "challenger-0", variant: "challenger", replica: 0 },
  { id: "control-0", variant: "control", replica: 0 },
  { id: "control-1", variant: "control", replica: 1 },
];

/**
 * What every replica a setup runs must be: an HTTP server on 127.0.0.1:$PORT that answers `GET /` with 200 and a
 * JSON object with `"variant": $VARIANT, "port": $PORT` (other fields are not looked at), so that the suite can tell
 * which replica answered. A setup passes `VARIANT` through the variant's `env:`. (Docker's TEST_SERVER in
 * docker/testing.ts answers so too.)
 */
export const REPLICA_SERVER = `
const port = Number(process.env.PORT);
const server = require("node:http").createServer((req, res) => {
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ variant: process.env.VARIANT, port }));
});
server.listen(port, process.env.HOST || "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
`;

export interface EngineFixture {
  /** an engine for CONFORMANCE_VARIANTS, not started */
  engine: Engine;
  /** Kill a replica from outside abgate, as a crash would (SIGKILL its pid, `docker kill`). restartsReplicas only. */
  kill?(endpoint: Endpoint): Promise<void>;
  /** Remove one replica from outside abgate (`docker rm -f`, `docker service rm`). reportsRemoval only. */
  remove?(endpoint: Endpoint): Promise<void>;
  /** Remove every replica from outside abgate, as `abgate down` does. reportsRemoval only. */
  removeAll?(): Promise<void>;
  /** Release what the setup made besides the engine (backends, folders). The suite stops the engine itself. */
  dispose?(): Promise<void>;
}

/**
 * Makes a fresh engine for the variants given (each test gets its own), or returns undefined when the test was
 * skipped (no Docker engine: see requireDocker).
 */
export type EngineSetup = (t: TestContext, variants: typeof CONFORMANCE_VARIANTS) => Promise<EngineFixture | undefined>;

export interface EngineCapabilities {
  kind: EngineKind;
  /** it starts the replicas, so that they stop with it (process, docker, swarm); else it only finds them (static) */
  startsReplicas: boolean;
  /** a replica killed from outside is restarted (process and docker by the engine, swarm by the swarm) */
  restartsReplicas: boolean;
  /** replicas can be removed from outside, and the removal of every one is told through onRemoved (docker, swarm); the others have no onRemoved */
  reportsRemoval: boolean;
  /** the longest any wait may take: a replica starting to answer, leaving the list, coming back */
  timeoutMs: number;
  /**
   * How long the suite listens for a stray notification after stop() and after a removal: longer than the restart
   * delay the setup gives the engine, so that a restart that was pending would have come by then.
   */
  quietMs: number;
}

type Json = { status: number; body: unknown };

/**
 * One `GET /` to 127.0.0.1:port on a connection of its own (no keep-alive: a pooled connection would outlive the
 * replica). Only ever the loopback: the suite checks that endpoints say 127.0.0.1 before it sends anything.
 */
function get(port: number, timeoutMs = 2_000): Promise<Json> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: "/", agent: false, headers: { connection: "close" }, timeout: timeoutMs }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("error", reject);
      res.on("end", () => {
        try {
          resolve({ status: res.statusCode!, body: JSON.parse(text) });
        } catch {
          resolve({ status: res.statusCode!, body: text });
        }
      });
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `fn` every 25 ms until it gives a value other than undefined or false; fails naming `what` after `timeoutMs`. */
async function eventually<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last: ${(last as Error).message})` : ""}`);
    await delay(25);
  }
}

const ids = (list: readonly { id: string }[]): string[] => list.map((e) => e.id);
const has = (list: readonly Endpoint[], id: string): boolean => list.some((e) => e.id === id);

/**
 * What a listener heard, each list with what `endpoints()` said while the listener ran (the contract: the full
 * list, as it is now).
 */
function listen(engine: Engine): { heard: Endpoint[][]; current: Endpoint[][]; off: () => void } {
  const heard: Endpoint[][] = [];
  const current: Endpoint[][] = [];
  const off = engine.onChange((list) => {
    heard.push([...list]);
    current.push([...engine.endpoints()]);
  });
  return { heard, current, off };
}

/** Each notification is a real change from the one before it (the first from `from`) and is the full list of then. */
function assertRealChanges(heard: Endpoint[][], current: Endpoint[][], from: Endpoint[]): void {
  heard.forEach((list, i) => {
    assert.notDeepEqual(list, heard[i - 1] ?? from, `notification ${i + 1} (${ids(list).join(", ") || "none"}) repeats the list before it`);
    assert.deepEqual(list, current[i], `notification ${i + 1} is not the list endpoints() gave at that moment`);
  });
}

/** The replica at `e` answers as replica `e` (polled: a started replica may take a moment to listen). */
async function assertAnswers(e: Endpoint, timeoutMs: number): Promise<void> {
  const res = await eventually(`${e.id} to answer on 127.0.0.1:${e.port}`, () => get(e.port), timeoutMs);
  assert.equal(res.status, 200, `${e.id}: status`);
  const body = (typeof res.body === "object" && res.body !== null ? res.body : {}) as { variant?: unknown; port?: unknown };
  assert.deepEqual({ variant: body.variant, port: body.port }, { variant: e.variant, port: e.port }, `${e.id} answered as another replica: ${JSON.stringify(res.body)}`);
}

/** Nothing answers on `e`'s port now (asked once: stop() resolves only when its replicas are gone). */
async function assertSilent(e: Endpoint): Promise<void> {
  await assert.rejects(get(e.port, 1_000), `${e.id} still answers on 127.0.0.1:${e.port} after stop()`);
}

/**
 * The contract every Engine meets (as hono's routers share common.case.test.ts, and strategies and stores here
 * theirs), on a config of CONFORMANCE_VARIANTS whose replicas are real HTTP servers. Each engine's own tests call
 * this with a setup and what the engine can do; the tests a capability rules out are not registered, and the
 * capabilities say why. Every test gets a fresh engine, stopped (and its fixture disposed) after it.
 */
export function engineConformance(name: string, setup: EngineSetup, capabilities: EngineCapabilities): void {
  const { timeoutMs, quietMs } = capabilities;

  /** A fresh fixture, stopped and disposed after the test; undefined when the setup skipped the test. */
  async function begin(t: TestContext): Promise<EngineFixture | undefined> {
    const fixture = await setup(t, CONFORMANCE_VARIANTS);
    if (fixture === undefined) return undefined;
    t.after(async () => {
      try {
        // Outside abgate first where a setup can: swarm takes ~6 s to remove the task containers itself, its `abgate
        // down` ~1 s (it removes them too), and only the stop test is about stop(). Then stop() has nothing left to do.
        await fixture.removeAll?.();
        await fixture.engine.stop();
      } finally {
        await fixture.dispose?.();
      }
    });
    return fixture;
  }

  /** Start the engine and wait until every replica answers. */
  async function started(engine: Engine): Promise<Endpoint[]> {
    await engine.start();
    const list = engine.endpoints();
    assert.deepEqual(ids(list), ids(EXPECTED), "every replica is listed once start() resolved");
    for (const e of list) assert.equal(e.host, "127.0.0.1", `${e.id}: loopback only`);
    for (const e of list) await assertAnswers(e, timeoutMs);
    return list;
  }

  describe(`${name}: Engine conformance`, () => {
    test("before start(): kind as configured, no endpoints, onRemoved only where replicas can be removed from outside, and stop() resolves", async (t) => {
      const fixture = await begin(t);
      if (fixture === undefined) return;
      const { engine } = fixture;
      assert.equal(engine.kind, capabilities.kind);
      assert.deepEqual(engine.endpoints(), []);
      // types.ts: engines whose replicas only abgate can remove (process, static) have none
      assert.equal(typeof engine.onRemoved, capabilities.reportsRemoval ? "function" : "undefined");
      const { heard } = listen(engine);
      await engine.stop();
      assert.deepEqual(heard, [], "a stop with nothing started changes nothing");
      assert.deepEqual(engine.endpoints(), []);
    });

    test("start() resolves with every replica listed once, in EndpointSet's order, on 127.0.0.1 and distinct ports; each answers HTTP as itself; onChange told it", async (t) => {
      const fixture = await begin(t);
      if (fixture === undefined) return;
      const { engine } = fixture;
      const { heard, current } = listen(engine);
      const dropped = listen(engine);
      dropped.off();
      dropped.off(); // (twice: harmless)
      const progress: string[] = [];
      await engine.start((line) => progress.push(line));
      const list = engine.endpoints();
      assert.deepEqual(
        list.map(({ id, variant, replica }) => ({ id, variant, replica })),
        EXPECTED,
        "one endpoint per configured replica, id <variant>-<i>, sorted by variant then replica",
      );
      for (const e of list) {
        assert.equal(e.host, "127.0.0.1", `${e.id}: loopback only`);
        assert.ok(Number.isInteger(e.port) && e.port > 0 && e.port < 65536, `${e.id}: port ${e.port}`);
      }
      assert.equal(new Set(list.map((e) => e.port)).size, list.length, `distinct ports: ${list.map((e) => e.port).join(", ")}`);
      for (const e of list) await assertAnswers(e, timeoutMs);
      // Start-up is told as changes too: a listener that subscribed before start() ends with the full list.
      assert.ok(heard.length > 0, "a listener subscribed before start() is told the endpoints");
      assertRealChanges(heard, current, []);
      assert.deepEqual(heard.at(-1), list);
      assert.deepEqual(dropped.heard, [], "a listener that unsubscribed is told nothing");
      for (const e of list) assert.ok(progress.some((line) => line.includes(e.id)), `a progress line names ${e.id}:\n${progress.join("\n")}`);
    });

    if (capabilities.restartsReplicas) {
      test("a replica killed from outside leaves the list and comes back on its port, each told once through onChange, the others untouched; so do all killed at once", async (t) => {
        const fixture = await begin(t);
        if (fixture === undefined) return;
        const { engine, kill } = fixture;
        assert.ok(kill, "a setup for an engine that restarts replicas provides kill()");
        const before = await started(engine);
        const victim = before.find((e) => e.id === "control-1")!;
        const others = before.filter((e) => e !== victim);
        const { heard, current } = listen(engine);
        const dropped = listen(engine);
        dropped.off();
        await kill(victim);
        // (the number of notifications up to the one without the victim)
        const out = await eventually(`${victim.id} to leave the list`, () => {
          const i = heard.findIndex((list) => !has(list, victim.id));
          return i >= 0 ? i + 1 : undefined;
        }, timeoutMs);
        await eventually(`${victim.id} to come back`, () => heard.slice(out).some((list) => has(list, victim.id)), timeoutMs);
        assertRealChanges(heard, current, before);
        assert.deepEqual(heard[out - 1], others, `${victim.id} leaves first, alone`);
        for (const [i, list] of heard.entries()) {
          assert.deepEqual(list.filter((e) => e.id !== victim.id), others, `notification ${i + 1} changed another replica: ${JSON.stringify(list)}`);
        }
        assert.deepEqual(heard.at(-1), before, `${victim.id} is back on its port`);
        // (and still twice a moment later: a flap right after the return would show only now)
        await delay(quietMs);
        assert.equal(heard.length, 2, `told once that it left and once that it came back: ${heard.map((list) => ids(list).join(",")).join(" | ")}`);
        assert.deepEqual(engine.endpoints(), before);
        assert.deepEqual(dropped.heard, [], "an unsubscribed listener hears neither change");
        await assertAnswers(victim, timeoutMs);
        if (engine.lastExit !== undefined) {
          assert.match(engine.lastExit(victim.id) ?? "", /\S/, `lastExit(${victim.id}) tells how its run ended`);
          assert.equal(engine.lastExit(others[0]!.id), undefined, "lastExit of a replica that never ended");
          assert.equal(engine.lastExit("nobody-0"), undefined, "lastExit of an id the engine does not have");
        }

        // Every replica at once: a crash of all is not a removal (onRemoved says nothing), and all come back.
        const reasons: string[] = [];
        engine.onRemoved?.((why) => reasons.push(why));
        const mark = heard.length;
        await Promise.all(before.map((e) => kill(e)));
        for (const e of before) await eventually(`${e.id} to leave the list`, () => heard.slice(mark).some((list) => !has(list, e.id)), timeoutMs);
        await eventually("every replica back", () => heard.length > mark && JSON.stringify(heard.at(-1)) === JSON.stringify(before), timeoutMs);
        assertRealChanges(heard, current, before);
        assert.deepEqual(engine.endpoints(), before, "each on its port");
        for (const e of before) await assertAnswers(e, timeoutMs);
        assert.deepEqual(reasons, [], "onRemoved told of replicas that only died");
      });
    }

    test(
      capabilities.startsReplicas
        ? "stop() resolves once its replicas no longer answer, also a second one called meanwhile; endpoints() is then empty; no listener is told anything after it"
        : "stop() resolves and only stops watching: its endpoints still answer; a second stop() is harmless; no listener is told anything after it",
      async (t) => {
        const fixture = await begin(t);
        if (fixture === undefined) return;
        const { engine, kill } = fixture;
        const before = await started(engine);
        const { heard } = listen(engine);
        if (capabilities.restartsReplicas) {
          // A replica between its death and its restart when stop() comes: the restart must not happen after it.
          assert.ok(kill, "a setup for an engine that restarts replicas provides kill()");
          const victim = before.find((e) => e.id === "control-0")!;
          await kill(victim);
          // (told, not polled: with a short backoff it may be back before a poll would see it gone)
          await eventually(`${victim.id} to leave the list`, () => heard.some((list) => !has(list, victim.id)), timeoutMs);
        }
        const first = engine.stop();
        // (a second Ctrl-C while the first stop runs: it too resolves only once the replicas are stopped)
        await engine.stop();
        const assertStopped = async (which: string) => {
          if (capabilities.startsReplicas) {
            assert.deepEqual(engine.endpoints(), [], `no endpoint is left once ${which} stop() resolved`);
            for (const e of before) await assertSilent(e);
          } else {
            for (const e of before) await assertAnswers(e, timeoutMs);
          }
        };
        await assertStopped("the second");
        await first;
        await assertStopped("the first");
        const told = heard.length;
        if (capabilities.startsReplicas && told > 0) assert.deepEqual(heard.at(-1), [], "a listener told of the stop is told the empty list");
        await engine.stop();
        const late = listen(engine);
        // The one kind of fixed wait in the suite: a notification that must not come has no event to wait for.
        await delay(quietMs);
        assert.equal(heard.length, told, `told after stop(): ${JSON.stringify(heard.slice(told))}`);
        assert.deepEqual(late.heard, [], "a listener subscribed after stop() is told nothing");
        await assertStopped("a third");
      },
    );

    if (capabilities.reportsRemoval) {
      test("replicas removed from outside are not brought back; once every one is (abgate down), onRemoved is told once, a later listener at once", async (t) => {
        const fixture = await begin(t);
        if (fixture === undefined) return;
        const { engine, remove, removeAll } = fixture;
        assert.ok(remove && removeAll, "a setup for an engine that reports removal provides remove() and removeAll()");
        const onRemoved = engine.onRemoved!.bind(engine);
        const before = await started(engine);
        const reasons: string[] = [];
        onRemoved((why) => reasons.push(why));
        const dropped: string[] = [];
        onRemoved((why) => dropped.push(why))();
        const { heard, current } = listen(engine);

        // One replica removed: it leaves the list for good, and onRemoved waits for the others (types.ts: "when every
        // replica was removed").
        const victim = before.find((e) => e.id === "control-1")!;
        const others = before.filter((e) => e !== victim);
        await remove(victim);
        await eventually(`${victim.id} to leave the list`, () => !has(engine.endpoints(), victim.id), timeoutMs);
        await delay(quietMs);
        assert.deepEqual(engine.endpoints(), others, `${victim.id} was brought back, or another replica left`);
        assert.deepEqual(reasons, [], "onRemoved fired while replicas were left");

        await removeAll();
        const why = await eventually("onRemoved", () => reasons[0], timeoutMs);
        assert.match(why, /\S/, "onRemoved says why");
        assert.deepEqual(engine.endpoints(), [], "nothing is listed once onRemoved fired");
        assertRealChanges(heard, current, before);
        assert.deepEqual(heard.at(-1), []);
        // types.ts: "A listener that subscribes after that is told at once."
        const late = await Promise.race([new Promise<string>((resolve) => onRemoved(resolve)), delay(1_000).then(() => "(not told within 1 s)")]);
        assert.equal(late, why);
        const told = heard.length;
        await delay(quietMs);
        assert.deepEqual(reasons, [why], "told once");
        assert.deepEqual(dropped, [], "an unsubscribed listener is not told");
        assert.equal(heard.length, told, `nothing comes back: ${JSON.stringify(heard.slice(told))}`);
        for (const e of before) await assertSilent(e);
        await engine.stop();
      });
    }
  });
}
