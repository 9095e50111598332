import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { DockerEngine, listExperimentContainers } from "../src/engines/docker/index.ts";
import { startGateway, type Gateway } from "../src/gateway.ts";
import { createLogger } from "../src/log/index.ts";
import { stickyBucket } from "../src/strategies/fnv.ts";
import { BASE_IMAGE, removeTestImages, requireDocker, testConfig, uniqueExperiment, waitFor, writeServiceContext } from "../src/engines/docker/testing.ts";

after(removeTestImages);

interface Seen {
  status: number;
  variant: string;
  port: number;
  error?: string;
}

/**
 * A bounded load: `clients` loops of GETs through the proxy, each as one of `units` users, until stop() is
 * called. Every answer is recorded by unit.
 */
function load(proxyUrl: string, units: number, clients: number) {
  const byUnit = new Map<string, Seen[]>();
  let running = true;
  let n = 0;
  const loop = async () => {
    while (running) {
      const unit = `u${n++ % units}`;
      let seen: Seen;
      try {
        const res = await fetch(`${proxyUrl}/work`, { headers: { "x-user-id": unit }, signal: AbortSignal.timeout(5000) });
        const body = await res.text();
        let port = -1;
        try {
          port = (JSON.parse(body) as { port: number }).port;
        } catch {
          /* an error page */
        }
        seen = { status: res.status, variant: res.headers.get("x-abgate-variant") ?? "", port };
        if (res.status !== 200) seen.error = body.slice(0, 200);
      } catch (err) {
        seen = { status: 0, variant: "", port: -1, error: (err as Error).message };
      }
      let list = byUnit.get(unit);
      if (!list) byUnit.set(unit, (list = []));
      list.push(seen);
    }
  };
  const done = Promise.all(Array.from({ length: clients }, () => loop()));
  return {
    byUnit,
    count: () => [...byUnit.values()].reduce((s, l) => s + l.length, 0),
    async stop() {
      running = false;
      await done;
    },
  };
}

async function setup(t: import("node:test").TestContext, base: number, restartBackoff: { initialMs: number; maxMs: number }) {
  const docker = (await requireDocker(t))!;
  const dir = writeServiceContext();
  const work = mkdtempSync(join(tmpdir(), "abgate-faults-"));
  const experiment = uniqueExperiment("faults");
  const health = { path: "/health", intervalMs: 300, timeoutMs: 500, rise: 1, fall: 1 };
  const config = testConfig({
    experiment,
    listen: "127.0.0.1:0",
    admin: { listen: "127.0.0.1:0", token: "test-token" },
    store: `sqlite:${join(work, "faults.db")}`,
    ports: { base },
    strategy: { kind: "sticky" },
    fallback: "control",
    logLevel: "silent",
    variants: [
      { name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2, env: { VARIANT: "control" }, health },
      { name: "treatment", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2, env: { VARIANT: "treatment" }, health },
    ],
  });
  const engine = new DockerEngine(config, { restartBackoff, stopTimeoutS: 1, log: () => {} });
  await engine.start();
  let gw: Gateway | undefined;
  t.after(async () => {
    await gw?.stop();
    await engine.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });
  gw = await startGateway(config, { engine, log: createLogger("silent") });
  await gw.health.waitHealthy(engine.endpoints().map((e) => e.id), 20_000);
  return { docker, config, engine, gw, experiment };
}

test("docker kill of one replica under load: no failed request, units stay on their variant, the replica rejoins", async (t) => {
  if (!(await requireDocker(t))) return;
  const { docker, engine, gw, experiment } = await setup(t, 19400, { initialMs: 200, maxMs: 1000 });
  const victim = engine.endpoints().find((e) => e.id === "control-1")!;
  const traffic = load(gw.proxyUrl, 200, 8);
  await waitFor("warm-up traffic", () => traffic.count() > 300);
  await docker.getContainer(`abgate-${experiment}-control-1`).kill();
  await waitFor("control-1 leaves the endpoints", () => !engine.endpoints().some((e) => e.id === "control-1"), 10_000);
  const duringOutage = traffic.count();
  await waitFor("control-1 back and healthy", () => engine.endpoints().some((e) => e.id === "control-1") && gw.health.state("control-1") === "healthy", 15_000);
  const rejoinedAt = traffic.count();
  // the rejoined replica serves again: some answers after the rejoin come from its port
  await waitFor(
    "traffic on the restarted replica",
    () => [...traffic.byUnit.values()].flat().slice(-1).length > 0 && [...traffic.byUnit.values()].some((l) => l.slice(-20).some((s) => s.port === victim.port)),
    10_000,
  );
  await waitFor("more traffic after the rejoin", () => traffic.count() > rejoinedAt + 300);
  await traffic.stop();

  const all = [...traffic.byUnit.values()].flat();
  const failed = all.filter((s) => s.status !== 200);
  assert.equal(failed.length, 0, `failed requests: ${JSON.stringify(failed.slice(0, 5))}`);
  assert.ok(duringOutage < traffic.count(), "traffic continued through the outage");
  for (const [unit, list] of traffic.byUnit) {
    const variants = new Set(list.map((s) => s.variant));
    assert.equal(variants.size, 1, `${unit} saw ${[...variants].join(", ")}`);
  }
  const served = new Set(all.map((s) => s.variant));
  assert.deepEqual([...served].sort(), ["control", "treatment"]);
});

test("every replica of a variant killed: the fallback serves its units and the exposures record it", async (t) => {
  if (!(await requireDocker(t))) return;
  // a long first backoff keeps the treatment down long enough to watch the fallback work
  const { docker, config, engine, gw, experiment } = await setup(t, 19420, { initialMs: 2500, maxMs: 5000 });
  const traffic = load(gw.proxyUrl, 100, 6);
  await waitFor("warm-up traffic", () => traffic.count() > 200);
  await Promise.all([0, 1].map((i) => docker.getContainer(`abgate-${experiment}-treatment-${i}`).kill()));
  await waitFor("treatment gone", () => !engine.endpoints().some((e) => e.variant === "treatment"), 10_000);
  const outageStart = traffic.count();
  await waitFor("traffic during the outage", () => traffic.count() > outageStart + 200, 10_000);
  await waitFor("treatment back and healthy", () => gw.health.state("treatment-0") === "healthy" && gw.health.state("treatment-1") === "healthy", 20_000);
  // back in rotation once the proxy serves the treatment's units from the treatment again (passive ejection
  // may keep a replica out a little longer than its active health check)
  const firstTreatment = new Set([...traffic.byUnit.entries()].filter(([, l]) => l[0].variant === "treatment").map(([u]) => u));
  await waitFor(
    "every treatment unit served by the treatment again",
    () => [...firstTreatment].every((u) => traffic.byUnit.get(u)!.at(-1)!.variant === "treatment"),
    30_000,
  );
  await traffic.stop();

  const all = [...traffic.byUnit.values()].flat();
  // Requests that were already on their way to a dying treatment replica may fail (at most one per client,
  // all at the instant of the kill); everything after is served, by the fallback or by the treatment.
  const failed = all.filter((s) => s.status !== 200);
  assert.ok(failed.length <= 6, JSON.stringify(failed.slice(0, 6)));
  assert.ok(failed.every((s) => s.status === 502 && s.variant === "treatment"), JSON.stringify(failed));
  await waitFor("exposures stored", async () => (await gw.store.counts(config.experiment)).exposures >= all.length, 10_000);
  // the exposures, as stored: assigned treatment, served control, for exactly the answers the clients saw so
  const db = new Database(config.store.slice("sqlite:".length), { readonly: true });
  t.after(() => db.close());
  const treatmentUnits = (db.prepare("SELECT DISTINCT unit FROM exposures WHERE experiment = ? AND assigned = 'treatment'").all(config.experiment) as { unit: string }[]).map((r) => r.unit);
  // Exactly the units the spec's bucket rule gives the treatment. (Not a count near half: plain FNV-1a splits
  // sequential ids u0..u99 unevenly, outside 20-80 for one salt in 40.)
  const controlShare = config.variants[0]!.weight / (config.variants[0]!.weight + config.variants[1]!.weight);
  const expectedTreatment = [...traffic.byUnit.keys()].filter((u) => stickyBucket(config.salt, u) >= controlShare).sort();
  assert.deepEqual([...treatmentUnits].sort(), expectedTreatment);
  assert.ok(treatmentUnits.length > 0, "the treatment has units");
  // the treatment's units were served by the control while it was down, and by the treatment before and after
  const fellBack = treatmentUnits.filter((u) => traffic.byUnit.get(u)!.some((s) => s.variant === "control"));
  assert.ok(fellBack.length > 0, "some treatment units were served by the fallback");
  const fallbackSeen = treatmentUnits.reduce((n, u) => n + traffic.byUnit.get(u)!.filter((s) => s.variant === "control").length, 0);
  const rows = db
    .prepare("SELECT unit, assigned, served, COUNT(*) AS n FROM exposures WHERE experiment = ? AND assigned <> served GROUP BY unit, assigned, served")
    .all(config.experiment) as { unit: string; assigned: string; served: string; n: number }[];
  assert.ok(rows.length > 0);
  assert.ok(rows.every((r) => r.assigned === "treatment" && r.served === "control" && treatmentUnits.includes(r.unit)), JSON.stringify(rows.slice(0, 3)));
  assert.equal(rows.reduce((n, r) => n + r.n, 0), fallbackSeen);
  const agg = await gw.store.aggregate(config.experiment, ["control", "treatment"], []);
  assert.ok(agg.variants.find((v) => v.variant === "treatment")!.fallbackRequests > 0);
  assert.equal(agg.variants.find((v) => v.variant === "control")!.fallbackRequests, 0);
  assert.equal((await listExperimentContainers(docker, config)).length, 4);
});
