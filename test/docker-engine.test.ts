import { after, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Docker from "dockerode";
import { ManualClock } from "../src/clock.ts";
import { BuildError, EngineUnavailableError } from "../src/errors.ts";
import { DockerEngine, LABEL, containerName, listExperimentContainers } from "../src/engines/docker/index.ts";
import { engineConformance } from "../src/engines/conformance.ts";
import type { Endpoint } from "../src/engines/types.ts";
import { BASE_IMAGE, dockerTest, get, removeTestImages, requireDocker, testConfig, uniqueExperiment, waitFor, writeServiceContext } from "../src/engines/docker/testing.ts";

const fast = { restartBackoff: { initialMs: 100, maxMs: 1000 }, stopTimeoutS: 1 };
const quiet = () => {};

after(removeTestImages);

test("build: the image is tagged by content hash, built once, rebuilt when the context changes", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const dir = writeServiceContext({ ".dockerignore": "*.log\n", "notes.log": "x" });
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const experiment = uniqueExperiment("build");
  const config = testConfig({ experiment, ports: { base: 19110 }, variants: [{ name: "a", build: dir, buildArgs: { BASE_IMAGE } }] });
  const lines: string[] = [];
  const first = new DockerEngine(config, { ...fast, log: quiet });
  await first.start((l) => lines.push(l));
  const image = first.images().get("a")!;
  assert.match(image, new RegExp(`^abgate/${experiment}-a:[0-9a-f]{12}$`));
  assert.ok(lines.some((l) => l.startsWith("[a] Step 1/")), lines.join("\n"));
  await first.stop();

  writeFileSync(join(dir, "notes.log"), "ignored by .dockerignore");
  const again: string[] = [];
  const second = new DockerEngine(config, { ...fast, log: quiet });
  await second.start((l) => again.push(l));
  assert.equal(second.images().get("a"), image);
  assert.ok(again.some((l) => l.includes("build skipped")), again.join("\n"));
  assert.ok(!again.some((l) => l.includes("Step 1/")));
  await second.stop();

  writeFileSync(join(dir, "model.json"), "{}");
  const third = new DockerEngine(config, { ...fast, log: quiet });
  await third.start(quiet);
  assert.notEqual(third.images().get("a"), image);
  await third.stop();
});

test("build failure: BuildError carries the failing step's output", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const dir = writeServiceContext(
    {},
    `ARG BASE_IMAGE\nFROM \${BASE_IMAGE}\nCOPY server.js /app/\nRUN ["node", "-e", "console.log('loading weights from /models/w.bin'); process.exit(3)"]\nCMD ["node", "/app/server.js"]\n`,
  );
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const config = testConfig({ experiment: uniqueExperiment("fail"), variants: [{ name: "broken", build: dir, buildArgs: { BASE_IMAGE } }] });
  const engine = new DockerEngine(config, { ...fast, log: quiet });
  await assert.rejects(engine.start(quiet), (err: unknown) => {
    assert.ok(err instanceof BuildError, String(err));
    assert.match(err.output, /loading weights from \/models\/w\.bin/);
    assert.match(err.output, /RUN \["node"/);
    assert.match(err.message, /variant broken/);
    assert.match(err.message, /non-zero code: 3/);
    return true;
  });
});

test("up/stop: replicas get PORT, distinct ports, labels and host networking; stop leaves nothing", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("up");
  const config = testConfig({
    experiment,
    ports: { base: 19120 },
    variants: [
      { name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2, env: { VARIANT: "control" } },
      { name: "treatment", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2, env: { VARIANT: "treatment" } },
    ],
  });
  const engine = new DockerEngine(config, { ...fast, log: quiet });
  t.after(() => engine.stop());
  await engine.start(quiet);
  const eps = engine.endpoints();
  assert.deepEqual(eps.map((e) => e.id), ["control-0", "control-1", "treatment-0", "treatment-1"]);
  assert.equal(new Set(eps.map((e) => e.port)).size, 4);
  for (const e of eps) {
    assert.ok(e.port >= 19120 && e.port < 19200, String(e.port));
    const { body } = await waitFor(`${e.id} answers`, () => get(`http://127.0.0.1:${e.port}/health`));
    assert.deepEqual(JSON.parse(body), { variant: e.variant, port: e.port, ok: true });
  }
  const info = await docker.getContainer(`abgate-${experiment}-treatment-1`).inspect();
  assert.equal(info.HostConfig.NetworkMode, "host");
  assert.equal(info.Config.Labels[LABEL.experiment], experiment);
  assert.equal(info.Config.Labels[LABEL.variant], "treatment");
  assert.equal(info.Config.Labels[LABEL.replica], "1");
  assert.ok(info.Config.Env.includes(`PORT=${eps[3].port}`));
  await engine.stop();
  assert.deepEqual(engine.endpoints(), []);
  assert.equal((await listExperimentContainers(docker, config)).length, 0);
});

test("two experiments on one host: stopping one never touches the other's containers", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const mk = (experiment: string, base: number) =>
    testConfig({ experiment, ports: { base }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE } }] });
  // the second name starts with the first: a name-prefix filter would confuse them, a label filter does not
  const nameA = uniqueExperiment("iso");
  const a = mk(nameA, 19130);
  const b = mk(`${nameA}-b`, 19135);
  const ea = new DockerEngine(a, { ...fast, log: quiet });
  const eb = new DockerEngine(b, { ...fast, log: quiet });
  t.after(async () => {
    await ea.stop();
    await eb.stop();
  });
  await ea.start(quiet);
  await eb.start(quiet);
  // starting b removed "stale" containers of b only
  assert.equal((await listExperimentContainers(docker, a)).length, 1);
  await ea.stop();
  assert.equal((await listExperimentContainers(docker, a)).length, 0);
  const left = await listExperimentContainers(docker, b);
  assert.equal(left.length, 1);
  assert.equal(left[0].State, "running");
  await waitFor("b answers", () => get(`http://127.0.0.1:${eb.endpoints()[0].port}/health`));
});

test("stop while start is creating the replicas (Ctrl-C during up) leaves no container behind", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const config = testConfig({ experiment: uniqueExperiment("race"), ports: { base: 19140 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 8 }] });
  const engine = new DockerEngine(config, { ...fast, log: quiet });
  t.after(() => engine.stop());
  const starting = engine.start(quiet);
  starting.catch(() => {});
  // Replicas, not the image build's passing containers (they carry the image's labels too).
  const replicas = async () => (await listExperimentContainers(docker, config)).filter((c) => c.Labels[LABEL.replica] !== undefined);
  // Stop as soon as the first replica's container exists: the other seven are being created.
  await waitFor("a first replica", async () => (await replicas()).length > 0, 60_000, 5);
  await engine.stop();
  await assert.rejects(starting, /stopped while starting/);
  assert.deepEqual(await replicas(), [], "every container created, also after stop began, is removed");
});

test("ports held by another experiment's replicas (by label, even while they do not run) are not handed out", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  // Another experiment's replica between two restarts: its container exists, its port 19150 is not bound.
  const other = uniqueExperiment("held");
  const waiting = await docker.createContainer({ Image: BASE_IMAGE, Cmd: ["true"], Labels: { [LABEL.experiment]: other, [LABEL.variant]: "control", [LABEL.replica]: "0", [LABEL.port]: "19150" } });
  t.after(() => waiting.remove({ force: true }).catch(() => {}));
  const config = testConfig({ experiment: uniqueExperiment("beside"), ports: { base: 19150 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2 }] });
  const engine = new DockerEngine(config, { ...fast, log: quiet });
  t.after(() => engine.stop());
  await engine.start(quiet);
  assert.deepEqual(engine.endpoints().map((e) => e.port), [19151, 19152]);
});

test("a replica that dies leaves the endpoints at once, is restarted with backoff and comes back", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("die");
  const config = testConfig({ experiment, ports: { base: 19140 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2 }] });
  const logs: string[] = [];
  const engine = new DockerEngine(config, { ...fast, log: (level, msg) => logs.push(`${level} ${msg}`) });
  t.after(() => engine.stop());
  await engine.start(quiet);
  const changes: Endpoint[][] = [];
  engine.onChange((e) => changes.push(e));
  const victim = engine.endpoints()[1];
  await waitFor("replica up", () => get(`http://127.0.0.1:${victim.port}/health`));
  await docker.getContainer(`abgate-${experiment}-control-1`).kill();
  const removed = await waitFor("endpoint removed", () => changes.find((c) => !c.some((e) => e.id === "control-1")));
  assert.deepEqual(removed.map((e) => e.id), ["control-0"]);
  await waitFor("endpoint back", () => engine.endpoints().some((e) => e.id === "control-1"), 10_000);
  assert.equal(engine.endpoints().find((e) => e.id === "control-1")!.port, victim.port);
  await waitFor("restarted replica answers", () => get(`http://127.0.0.1:${victim.port}/health`));
  assert.ok(logs.some((l) => l.startsWith("warn replica control-1") && l.includes("died")), logs.join("\n"));

  // the service exiting on its own is a death too
  const before = changes.length;
  await get(`http://127.0.0.1:${victim.port}/crash`);
  await waitFor("removed after crash", () => changes.slice(before).some((c) => !c.some((e) => e.id === "control-1")));
  await waitFor("back after crash", () => engine.endpoints().some((e) => e.id === "control-1"), 10_000);
});

test("a replica whose port another process took while it was down waits unlisted, and starts once the port is free", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("taken");
  const config = testConfig({ experiment, ports: { base: 19470 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 1 }] });
  const logs: string[] = [];
  const engine = new DockerEngine(config, { ...fast, log: (level, msg) => logs.push(`${level} ${msg}`) });
  t.after(() => engine.stop());
  await engine.start(quiet);
  const port = engine.endpoints()[0]!.port;
  await waitFor("replica up", () => get(`http://127.0.0.1:${port}/health`));
  await docker.getContainer(`abgate-${experiment}-control-0`).kill();
  // Another server takes the port as soon as the container lets it go.
  const { createServer } = await import("node:http");
  const foreign = createServer((_req, res) => res.end("foreign"));
  t.after(() => foreign.close());
  const listening = () =>
    new Promise<boolean>((resolve) => {
      foreign.once("error", () => resolve(false));
      foreign.listen(port, "127.0.0.1", () => resolve(true));
    });
  await waitFor("the port taken by another server", listening, 10_000);
  await waitFor("the warning", () => logs.some((l) => l.startsWith("warn port") && l.includes("in use by another process")), 10_000);
  for (let i = 0; i < 10; i++) {
    assert.deepEqual(engine.endpoints(), [], "not listed while another process has its port (its health checks would find that one)");
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise<void>((r) => foreign.close(() => r()));
  await waitFor("listed again once the port is free", () => engine.endpoints().length === 1, 15_000);
  await waitFor("the replica itself answers", () => get(`http://127.0.0.1:${port}/health`));
});

test("a crash-looping replica is reported with its last log lines", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { dir } = ready;
  const config = testConfig({
    experiment: uniqueExperiment("loop"),
    ports: { base: 19150 },
    variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, env: { CRASH_AT_START: "1" } }],
  });
  const errors: { msg: string; fields?: Record<string, unknown> }[] = [];
  const engine = new DockerEngine(config, {
    restartBackoff: { initialMs: 50, maxMs: 200 },
    crashLoop: { deaths: 3, windowMs: 60_000, logLines: 20 },
    stopTimeoutS: 1,
    log: (level, msg, fields) => void (level === "error" && errors.push({ msg, fields })),
  });
  t.after(() => engine.stop());
  await engine.start(quiet);
  const report = await waitFor("crash-loop report", () => errors[0], 20_000);
  assert.match(report.msg, /control-0 .* is crash-looping: 3 deaths within 60 s/);
  const logs = String(report.fields?.logs).split("\n");
  assert.equal(logs.length, 20);
  // The service writes its fatal line 100 ms after its boot lines: Docker copies stdout and stderr by separate
  // readers and orders lines written within microseconds of each other either way (two CI runs did).
  assert.equal(logs.at(-1), "fatal: cannot load model weights", logs.join("\n"));
  assert.deepEqual(logs.slice(0, -1), Array.from({ length: 19 }, (_, i) => `boot line ${i + 11}`));
});

test("adopt (abgate serve): finds running replicas by label and leaves them running on stop", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const config = testConfig({ experiment: uniqueExperiment("adopt"), ports: { base: 19160 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2 }] });
  const owner = new DockerEngine(config, { ...fast, log: quiet });
  t.after(() => owner.stop());
  await owner.start(quiet);
  const adopter = new DockerEngine(config, { ...fast, adopt: true, log: quiet });
  const found: string[] = [];
  await adopter.start((l) => found.push(l));
  assert.deepEqual(adopter.endpoints(), owner.endpoints());
  assert.equal(found.length, 2);
  await adopter.stop();
  assert.equal((await listExperimentContainers(docker, config)).filter((c) => c.State === "running").length, 2);
  await owner.stop();
  const nobody = new DockerEngine(config, { adopt: true, log: quiet });
  await assert.rejects(nobody.start(quiet), /no containers of experiment/);
});

test("no engine on the socket: EngineUnavailableError names the socket and how to start one", async () => {
  const config = testConfig({ experiment: "nowhere", variants: [{ name: "a", image: "x" }] });
  const engine = new DockerEngine(config, { docker: new Docker({ socketPath: "/tmp/abgate-no-such.sock" }) });
  await assert.rejects(engine.start(), (err: unknown) => {
    assert.ok(err instanceof EngineUnavailableError);
    assert.match(err.message, /\/tmp\/abgate-no-such\.sock/);
    assert.match(err.message, /start-dockerd\.sh/);
    return true;
  });
});

test("restart backoff doubles per consecutive death, on the injected clock", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("backoff");
  const config = testConfig({ experiment, ports: { base: 19180 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE } }] });
  const clock = new ManualClock(1_000_000);
  const engine = new DockerEngine(config, { clock, restartBackoff: { initialMs: 500, maxMs: 30_000 }, stopTimeoutS: 1, log: quiet });
  t.after(() => engine.stop());
  await engine.start(quiet);
  const container = docker.getContainer(`abgate-${experiment}-control-0`);
  const running = async () => (await container.inspect()).State.Running;

  for (const delayMs of [500, 1000, 2000]) {
    await container.kill();
    await waitFor("endpoint removed", () => engine.endpoints().length === 0);
    assert.equal(clock.pendingTimers(), 1);
    clock.advance(delayMs - 1);
    assert.equal(await running(), false, `not restarted before ${delayMs} ms`);
    clock.advance(1);
    await waitFor(`restarted after ${delayMs} ms`, () => engine.endpoints().length === 1);
    assert.equal(await running(), true);
  }
  // a replica that stayed up long enough starts again from the first delay
  clock.advance(30_000);
  await container.kill();
  await waitFor("endpoint removed", () => engine.endpoints().length === 0);
  clock.advance(500);
  await waitFor("restarted after 500 ms again", () => engine.endpoints().length === 1);
});

/**
 * The real client, but with every events stream it opens kept in `streams` (for a test to break one); `ask` may
 * change what each subscription asks the daemon for.
 */
function keepingEventStreams(docker: Docker, ask: (opts: { since?: number }) => object = (opts) => opts): { spy: Docker; streams: NodeJS.ReadableStream[] } {
  const streams: NodeJS.ReadableStream[] = [];
  const spy = Object.create(docker) as Docker;
  spy.getEvents = (async (opts: { since?: number }) => {
    const stream = await docker.getEvents(ask(opts));
    streams.push(stream);
    return stream;
  }) as Docker["getEvents"];
  return { spy, streams };
}

test("a broken events stream is re-subscribed, and deaths it missed are still seen", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("events");
  const config = testConfig({ experiment, ports: { base: 19190 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2 }] });
  // the real client, with every events stream it opens kept so that the test can break one
  const { spy, streams } = keepingEventStreams(docker);
  const warnings: string[] = [];
  const engine = new DockerEngine(config, {
    docker: spy,
    ...fast,
    eventsBackoff: { initialMs: 1000, maxMs: 1000 },
    log: (level, msg) => void (level === "warn" && warnings.push(msg)),
  });
  t.after(() => engine.stop());
  await engine.start(quiet);
  await waitFor("subscribed", () => streams.length === 1);
  (streams[0] as unknown as { destroy(): void }).destroy();
  // dies while nobody listens
  await docker.getContainer(`abgate-${experiment}-control-1`).kill();
  await waitFor("re-subscribed", () => streams.length === 2, 5_000);
  assert.ok(warnings.some((w) => /events stream broke/.test(w)), warnings.join("\n"));
  await waitFor("missed death noticed and the replica restarted", () => warnings.some((w) => /control-1 .* died/.test(w)), 5_000);
  await waitFor("back", () => engine.endpoints().length === 2, 10_000);
});

/** Parses a Docker events stream's lines as they come, for a test to watch beside the engine. */
function onEventLines(stream: NodeJS.ReadableStream, each: (ev: { Action?: string; status?: string; Actor?: { ID?: string } }) => void): void {
  let pending = "";
  stream.on("data", (chunk: Buffer) => {
    pending += chunk.toString();
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (line) each(JSON.parse(line));
    }
  });
}

test("a replica whose death the events stream reports before the start call's answer is restarted, not listed dead for good", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const config = testConfig({
    experiment: uniqueExperiment("early"),
    ports: { base: 19300 },
    variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, env: { CRASH_AT_START: "1" } }],
  });
  // The real client, but every start call answers only once the container's death came through the events stream
  // (two connections: the order the daemon's answers arrive in is not the order of what happened).
  const deaths = new Map<string, number>();
  const spy = Object.create(docker) as Docker;
  spy.getEvents = (async (opts: object) => {
    const stream = await docker.getEvents(opts);
    onEventLines(stream, (ev) => {
      if ((ev.Action ?? ev.status) === "die" && ev.Actor?.ID) deaths.set(ev.Actor.ID, (deaths.get(ev.Actor.ID) ?? 0) + 1);
    });
    return stream;
  }) as Docker["getEvents"];
  const answerAfterDeath = (container: Docker.Container): Docker.Container => {
    const start = container.start.bind(container);
    container.start = (async () => {
      const id = (await container.inspect()).Id;
      const before = deaths.get(id) ?? 0;
      await start();
      await waitFor("its death reported", () => (deaths.get(id) ?? 0) > before, 15_000);
    }) as Docker.Container["start"];
    return container;
  };
  spy.createContainer = (async (spec: Docker.ContainerCreateOptions) => answerAfterDeath(await docker.createContainer(spec))) as Docker["createContainer"];
  spy.getContainer = ((id: string) => answerAfterDeath(docker.getContainer(id))) as Docker["getContainer"];
  const errors: string[] = [];
  const engine = new DockerEngine(config, {
    docker: spy,
    restartBackoff: { initialMs: 50, maxMs: 200 },
    crashLoop: { deaths: 3, windowMs: 60_000, logLines: 5 },
    stopTimeoutS: 1,
    log: (level, msg) => void (level === "error" && errors.push(msg)),
  });
  t.after(() => engine.stop());
  await engine.start(quiet);
  // Before, the late answer listed the dead replica and cancelled its restart: no further death, no report, ever.
  await waitFor("restarted until reported as crash-looping", () => errors.find((m) => /control-0 .* is crash-looping: 3 deaths/.test(m)), 30_000);
  assert.deepEqual(engine.endpoints(), [], "a dead replica is not listed");
});

test("events replayed after the stream is re-subscribed are not handled twice (no second death, no unlisting)", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("replay");
  const config = testConfig({ experiment, ports: { base: 19310 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE } }] });
  const { spy, streams } = keepingEventStreams(docker);
  const warnings: string[] = [];
  const engine = new DockerEngine(config, { docker: spy, ...fast, eventsBackoff: { initialMs: 200, maxMs: 200 }, log: (level, msg) => void (level === "warn" && warnings.push(msg)) });
  t.after(() => engine.stop());
  await engine.start(quiet);
  await waitFor("subscribed", () => streams.length === 1);
  await docker.getContainer(`abgate-${experiment}-control-0`).kill();
  await waitFor("died", () => warnings.some((w) => /control-0 .* died/.test(w)), 10_000);
  await waitFor("restarted", () => engine.endpoints().length === 1, 10_000);
  const changes: number[] = [];
  engine.onChange((list) => changes.push(list.length));
  // re-subscribed since the second of the last event: the daemon sends that second's die and start again
  (streams[0] as unknown as { destroy(): void }).destroy();
  await waitFor("re-subscribed", () => streams.length === 2, 5_000);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(warnings.filter((w) => /control-0 .* died/.test(w)).length, 1, warnings.join("\n"));
  assert.deepEqual(changes.filter((n) => n === 0), [], "never unlisted");
  assert.equal(engine.endpoints().length, 1);
});

test("a stop() while start() pings the daemon stands: nothing is created", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("pingstop");
  const config = testConfig({ experiment, ports: { base: 19320 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE } }] });
  let answer: (() => void) | undefined;
  const spy = Object.create(docker) as Docker;
  spy.ping = (async () => {
    await new Promise<void>((r) => (answer = r));
    return docker.ping();
  }) as Docker["ping"];
  const engine = new DockerEngine(config, { docker: spy, ...fast, log: quiet });
  const starting = engine.start(quiet).then(() => "resolved", (err: Error) => err.message);
  await waitFor("pinging", () => answer !== undefined);
  await engine.stop();
  answer!();
  await starting;
  assert.deepEqual(await docker.listContainers({ all: true, filters: { label: [`${LABEL.experiment}=${experiment}`] } }), [], "no container created after stop()");
  assert.deepEqual(engine.endpoints(), []);
});

test("image: runs an existing image as it is, without building", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { dir } = ready;
  const built = testConfig({ experiment: uniqueExperiment("img"), ports: { base: 19195 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE } }] });
  const builder = new DockerEngine(built, { ...fast, log: quiet });
  await builder.start(quiet);
  const image = builder.images().get("control")!;
  await builder.stop();
  const config = testConfig({ experiment: uniqueExperiment("img"), ports: { base: 19195 }, variants: [{ name: "control", image, env: { VARIANT: "x" } }] });
  const engine = new DockerEngine(config, { ...fast, log: quiet });
  t.after(() => engine.stop());
  const lines: string[] = [];
  await engine.start((l) => lines.push(l));
  assert.equal(engine.images().get("control"), image);
  assert.ok(!lines.some((l) => /build/.test(l)), lines.join("\n"));
  const { body } = await waitFor("answers", () => get(`http://127.0.0.1:${engine.endpoints()[0].port}/health`));
  assert.equal(JSON.parse(body).variant, "x");
});

test("containers removed while the events stream is down are seen as removed, and told to a listener that comes later", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const { down } = await import("../src/cli/docker-commands.ts");
  const experiment = uniqueExperiment("gone");
  const config = testConfig({ experiment, ports: { base: 19240 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2 }] });
  // The real client, but the re-subscription asks for no replay (the daemon's is bounded: a destroy may be lost).
  const { spy, streams } = keepingEventStreams(docker, (opts) => ({ ...opts, since: undefined }));
  const engine = new DockerEngine(config, { docker: spy, ...fast, eventsBackoff: { initialMs: 1000, maxMs: 1000 }, log: quiet });
  t.after(() => engine.stop());
  await engine.start(quiet);
  await waitFor("subscribed", () => streams.length === 1);
  (streams[0] as unknown as { destroy(): void }).destroy();
  assert.equal(await down(config, { docker, stopTimeoutS: 0, out: quiet }), 2);
  await waitFor("re-subscribed and reconciled", () => streams.length === 2 && engine.endpoints().length === 0, 10_000);
  // `up` subscribes only once it serves, after its health wait
  const why = await new Promise<string>((resolve) => engine.onRemoved(resolve));
  assert.equal(why, `every container of experiment ${experiment} was removed outside abgate (abgate down?)`);
});

// One experiment for every test of the suite: its images are built by the first and found by the others.
const conformanceExperiment = uniqueExperiment("conf");

engineConformance(
  "docker",
  async (t, variants) => {
    const ready = await dockerTest(t);
    if (!ready) return undefined;
    const { docker, dir } = ready;
    const { down } = await import("../src/cli/docker-commands.ts");
    const config = testConfig({
      experiment: conformanceExperiment,
      listen: "127.0.0.1:26090",
      admin: { listen: "127.0.0.1:26091" },
      ports: { base: 26100 },
      variants: variants.map((v) => ({ name: v.name, build: dir, buildArgs: { BASE_IMAGE }, replicas: v.replicas, env: { VARIANT: v.name } })),
    });
    const engine = new DockerEngine(config, { ...fast, log: quiet });
    return {
      engine,
      kill: async (e) => void (await docker.getContainer(containerName(config.experiment, e.variant, e.replica)).kill()),
      remove: async (e) => void (await docker.getContainer(containerName(config.experiment, e.variant, e.replica)).remove({ force: true })),
      removeAll: async () => void (await down(config, { docker, stopTimeoutS: 0, out: quiet })),
    };
  },
  // (fast: a dead replica is restarted after 100 ms)
  { kind: "docker", startsReplicas: true, restartsReplicas: true, reportsRemoval: true, timeoutMs: 20_000, quietMs: 1_000 },
);

test("a container name another experiment's replica holds (experiment x-a with variant b, x with a-b) is refused, and that replica left running", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("clash");
  const other = `${experiment}-a`;
  const first = new DockerEngine(testConfig({ experiment: other, ports: { base: 19480 }, variants: [{ name: "b", build: dir, buildArgs: { BASE_IMAGE } }] }), { ...fast, log: quiet });
  t.after(async () => {
    await first.stop();
    for (const image of await docker.listImages({ filters: { reference: [`abgate/${other}-b`] } })) await docker.getImage(image.Id).remove({ force: true }).catch(() => {});
  });
  await first.start(quiet);
  const name = containerName(experiment, "a-b", 0);
  assert.equal(name, containerName(other, "b", 0), "the two names join to one");
  const second = new DockerEngine(testConfig({ experiment, ports: { base: 19490 }, variants: [{ name: "a-b", build: dir, buildArgs: { BASE_IMAGE } }] }), { ...fast, log: quiet });
  t.after(() => second.stop());
  await assert.rejects(second.start(quiet), (err: Error & { code?: string }) => {
    assert.equal(err.code, "ABGATE_ERR_NAME_TAKEN");
    assert.equal(err.message, `the container name ${name} is taken by experiment ${other}'s replica b-0; abgate leaves it alone. Rename the experiment or the variant so that their names do not join to the same one`);
    return true;
  });
  const info = await docker.getContainer(name).inspect();
  assert.equal(info.State.Running, true, "the other experiment's replica still runs");
  assert.equal(info.Config.Labels["abgate.experiment"], other);
  await waitFor("it still answers", () => get(`http://127.0.0.1:${first.endpoints()[0]!.port}/health`));
});
