import { after, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import type Docker from "dockerode";
import { SwarmEngine } from "../src/engines/swarm/index.ts";
import { createEngine } from "../src/engines/index.ts";
import { LABEL, containerName, listExperimentContainers } from "../src/engines/docker/index.ts";
import { engineConformance } from "../src/engines/conformance.ts";
import { down, logs, ps } from "../src/cli/docker-commands.ts";
import { BASE_IMAGE, get, removeTestImages, requireDocker, testConfig, uniqueExperiment, waitFor, writeServiceContext } from "../src/engines/docker/testing.ts";

let initialised = false;
let gwbridgeBefore = true;
let client: Docker | undefined;

/** A single-node swarm for this file: joined here when the engine is not in one, and left again after. */
async function swarm(docker: Docker): Promise<void> {
  const info = (await docker.info()) as { Swarm?: { LocalNodeState?: string } };
  if (info.Swarm?.LocalNodeState === "active") return;
  gwbridgeBefore = (await docker.listNetworks({ filters: { name: ["docker_gwbridge"] } })).length > 0;
  await docker.swarmInit({ ListenAddr: "127.0.0.1:2377", AdvertiseAddr: "127.0.0.1" });
  initialised = true;
}

/** A swarm test's start: Docker (or a skip), the swarm joined, and a build context removed after the test. */
async function swarmTest(t: import("node:test").TestContext): Promise<{ docker: Docker; dir: string } | undefined> {
  const docker = await requireDocker(t);
  if (!docker) return undefined;
  client = docker;
  await swarm(docker);
  const dir = writeServiceContext();
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return { docker, dir };
}

after(async () => {
  if (initialised && client) {
    await client.swarmLeave({ force: true }).catch(() => {});
    // swarm init made this bridge network; leave the engine as we found it
    if (!gwbridgeBefore) await client.getNetwork("docker_gwbridge").remove().catch(() => {});
  }
  await removeTestImages();
});

test("swarm: on a node outside a swarm, start says to init one, and stop after it does not replace that with the daemon's error", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const info = (await docker.info()) as { Swarm?: { LocalNodeState?: string } };
  // (first in this file, before the tests below join the swarm; a swarm someone else made is left alone)
  if (info.Swarm?.LocalNodeState === "active") return t.skip("this Docker engine is already in a swarm");
  const config = testConfig({ experiment: uniqueExperiment("noswarm"), engine: "swarm", ports: { base: 19890 }, variants: [{ name: "control", image: BASE_IMAGE }] });
  const engine = new SwarmEngine(config, { log: () => {} });
  await assert.rejects(engine.start(), /is not a swarm manager \(swarm state: inactive\); run `docker swarm init --advertise-addr 127\.0\.0\.1` \(or use engine: docker\)/);
  await engine.stop(); // (up's clean-up after a failed start: it threw "This node is not a swarm manager" from the daemon)
});

test("swarm: one-task services on host networking, endpoints follow the tasks, a killed task comes back, stop and down leave nothing", async (t) => {
  const ready = await swarmTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("swarm");
  const config = testConfig({
    experiment,
    engine: "swarm",
    ports: { base: 19800 },
    variants: [
      { name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2, env: { VARIANT: "control" } },
      { name: "treatment", build: dir, buildArgs: { BASE_IMAGE }, env: { VARIANT: "treatment" } },
    ],
  });
  const engine = await createEngine(config, { log: () => {} });
  assert.ok(engine instanceof SwarmEngine);
  t.after(() => engine.stop());
  await engine.start();
  assert.deepEqual(engine.endpoints().map((e) => e.id), ["control-0", "control-1", "treatment-0"]);
  for (const e of engine.endpoints()) {
    const { body } = await waitFor(`${e.id} answers`, () => get(`http://127.0.0.1:${e.port}/health`));
    assert.equal(JSON.parse(body).variant, e.variant);
  }
  const victim = (await listExperimentContainers(docker, config, false)).find((c) => c.Labels["abgate.replica"] === "1")!;
  await docker.getContainer(victim.Id).kill();
  await waitFor("control-1 out", () => !engine.endpoints().some((e) => e.id === "control-1"));
  await waitFor("control-1 back (swarm restarted the task)", () => engine.endpoints().some((e) => e.id === "control-1"), 20_000);
  // The killed task's container is still there beside the new one: ps and logs show each replica once, the current one
  // (once it answers, it has printed its line).
  const port1 = engine.endpoints().find((e) => e.id === "control-1")!.port;
  await waitFor("the new control-1 answers", () => get(`http://127.0.0.1:${port1}/health`));
  assert.ok((await listExperimentContainers(docker, config)).filter((c) => c.Labels["abgate.replica"] === "1" && c.Labels["abgate.variant"] === "control").length >= 2);
  const rows = await ps(config, { docker, out: () => {} });
  assert.deepEqual(rows.map((r) => [r.replica, r.state]), [["control-0", "running"], ["control-1", "running"], ["treatment-0", "running"]]);
  // (the daemon copies a container's output asynchronously: ask again until the new container's line is in)
  const listening = async () => {
    const lines: string[] = [];
    await logs(config, "control", { docker, out: (l) => lines.push(l) });
    return lines.filter((l) => l.includes("listening on")).map((l) => l.split(" |")[0]);
  };
  await waitFor("control-1's new container's line", async () => (await listening()).includes("control-1"), 5_000);
  assert.deepEqual((await listening()).sort(), ["control-0", "control-1"], "one line each: the killed task's container is left out");

  // a second engine adopting the running services (abgate serve) sees the same endpoints
  const adopter = new SwarmEngine(config, { adopt: true, log: () => {} });
  await adopter.start();
  await waitFor("adopter sees all", () => adopter.endpoints().length === 3);
  await adopter.stop();
  assert.equal((await docker.listServices({ filters: { label: [`abgate.experiment=${experiment}`] } })).length, 3);

  await engine.stop();
  assert.equal((await docker.listServices({ filters: { label: [`abgate.experiment=${experiment}`] } })).length, 0);
  assert.equal((await listExperimentContainers(docker, config)).length, 0);

  // `abgate down` removes services too (swarm would otherwise replace the containers)
  const again = new SwarmEngine(config, { log: () => {} });
  await again.start();
  let removed: string | undefined;
  again.onRemoved((why) => (removed = why));
  assert.equal(await down(config, { docker, out: () => {} }) >= 0, true);
  // (what makes a running `up` stop instead of answering 503s)
  await waitFor("the engine to see its services removed", () => removed !== undefined, 15_000);
  assert.equal(removed, `every service of experiment ${experiment} was removed outside abgate (abgate down?)`);
  await waitFor("no containers after down", async () => (await listExperimentContainers(docker, config)).length === 0, 30_000);
  assert.equal((await docker.listServices({ filters: { label: [`abgate.experiment=${experiment}`] } })).length, 0);
  await again.stop();
});

test("swarm: stop while start is creating the services (Ctrl-C during up) leaves no service behind", async (t) => {
  const ready = await swarmTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const config = testConfig({ experiment: uniqueExperiment("swrace"), engine: "swarm", ports: { base: 19820 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 6 }] });
  const engine = await createEngine(config, { log: () => {} });
  t.after(() => engine.stop());
  const services = async () => docker.listServices({ filters: { label: [`abgate.experiment=${config.experiment}`] } });
  const starting = engine.start();
  starting.catch(() => {});
  // Stop as soon as the first service exists: the others are being created one after another.
  await waitFor("a first service", async () => (await services()).length > 0, 60_000, 5);
  await engine.stop();
  await assert.rejects(starting, /stopped while starting/);
  assert.deepEqual(await services(), [], "no service created after stop began is left");
});

// One experiment for every test of the suite: its images are built by the first and found by the others.
const conformanceExperiment = uniqueExperiment("swconf");

engineConformance(
  "swarm",
  async (t, variants) => {
    const ready = await swarmTest(t);
    if (!ready) return undefined;
    const { docker, dir } = ready;
    const config = testConfig({
      experiment: conformanceExperiment,
      engine: "swarm",
      listen: "127.0.0.1:26290",
      admin: { listen: "127.0.0.1:26291" },
      ports: { base: 26200 },
      variants: variants.map((v) => ({ name: v.name, build: dir, buildArgs: { BASE_IMAGE }, replicas: v.replicas, env: { VARIANT: v.name } })),
    });
    const engine = new SwarmEngine(config, { restartDelayMs: 200, log: () => {} });
    return {
      engine,
      // the running task's container (a killed task's stays beside its successor, exited)
      async kill(e) {
        const running = await listExperimentContainers(docker, config, false);
        const task = running.find((c) => c.Labels[LABEL.variant] === e.variant && c.Labels[LABEL.replica] === String(e.replica));
        if (task === undefined) throw new Error(`no running container of ${e.id}`);
        await docker.getContainer(task.Id).kill();
      },
      // as abgate down does for every replica: the service, then its containers (swarm itself takes seconds to)
      async remove(e) {
        await docker.getService(containerName(config.experiment, e.variant, e.replica)).remove();
        const containers = await listExperimentContainers(docker, config);
        const its = containers.filter((c) => c.Labels[LABEL.variant] === e.variant && c.Labels[LABEL.replica] === String(e.replica));
        await Promise.all(its.map((c) => docker.getContainer(c.Id).remove({ force: true }).catch(() => {})));
      },
      removeAll: async () => void (await down(config, { docker, stopTimeoutS: 0, out: () => {} })),
    };
  },
  // (swarm restarts a dead task after restartDelayMs, 200 ms here)
  { kind: "swarm", startsReplicas: true, restartsReplicas: true, reportsRemoval: true, timeoutMs: 30_000, quietMs: 1_000 },
);

test("swarm: a replica whose port another process took when its task died is kept out until the port is free", async (t) => {
  const ready = await swarmTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("swtaken");
  const config = testConfig({ experiment, engine: "swarm", ports: { base: 19880 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, env: { VARIANT: "control" } }] });
  const logged: string[] = [];
  const engine = new SwarmEngine(config, { restartDelayMs: 200, log: (level, msg) => logged.push(`${level} ${msg}`) });
  t.after(() => engine.stop());
  await engine.start();
  const port = engine.endpoints()[0]!.port;
  await waitFor("the replica answers", () => get(`http://127.0.0.1:${port}/health`));
  const victim = (await listExperimentContainers(docker, config, false))[0]!;
  await docker.getContainer(victim.Id).kill();
  // Another server takes the port as soon as the task lets it go; swarm's next tasks then fail to bind.
  const { createServer } = await import("node:http");
  const foreign = createServer((_req, res) => res.end("foreign"));
  t.after(() => foreign.close());
  const listen = () =>
    new Promise<boolean>((resolve) => {
      foreign.once("error", () => resolve(false));
      foreign.listen(port, "127.0.0.1", () => resolve(true));
    });
  await waitFor("the port taken by another server", listen, 10_000);
  await waitFor("the warning", () => logged.some((l) => l.startsWith("warn port") && l.includes("in use by another process")), 20_000);
  for (let i = 0; i < 15; i++) {
    assert.deepEqual(engine.endpoints(), [], "not listed while another process has its port (its health checks would find that one)");
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise<void>((r) => foreign.close(() => r()));
  await waitFor("listed again once the port is free", () => engine.endpoints().length === 1, 30_000);
  const { body } = await waitFor("the replica itself answers", () => get(`http://127.0.0.1:${port}/health`), 30_000);
  assert.equal(JSON.parse(body).variant, "control");
});

test("swarm: up after an engine: docker run of the experiment removes that run's containers at once, not after 30 s", async (t) => {
  const ready = await swarmTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("switch");
  const variants = [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, env: { VARIANT: "control" } }];
  // What a killed `up` with engine: docker leaves: a running container with the experiment's labels, of no service
  const leftover = await docker.createContainer({
    name: `abgate-${experiment}-control-0`,
    Image: BASE_IMAGE,
    Cmd: ["node", "-e", "setInterval(() => {}, 1e9)"],
    Labels: { "abgate.experiment": experiment, "abgate.variant": "control", "abgate.replica": "0", "abgate.port": "19895" },
    HostConfig: { NetworkMode: "host" },
  });
  await leftover.start();
  t.after(() => leftover.remove({ force: true }).catch(() => {}));
  assert.equal((await listExperimentContainers(docker, { experiment })).length, 1);
  const progress: string[] = [];
  const engine = new SwarmEngine(testConfig({ experiment, engine: "swarm", ports: { base: 19895 }, variants }), { log: () => {} });
  t.after(() => engine.stop());
  const t0 = Date.now();
  await engine.start((line) => progress.push(line));
  assert.ok(Date.now() - t0 < 25_000, `started in ${Date.now() - t0} ms`);
  assert.ok(progress.some((l) => /removing 1 container\(s\) of experiment .* not run by swarm/.test(l)), progress.join("\n"));
  const containers = await listExperimentContainers(docker, { experiment });
  assert.ok(containers.every((c) => c.Labels["com.docker.swarm.service.id"] !== undefined), "only swarm's task containers are left");
  const port = engine.endpoints()[0]!.port;
  const { body } = await waitFor("the swarm replica answers", () => get(`http://127.0.0.1:${port}/health`));
  assert.equal(JSON.parse(body).variant, "control");
});

test("swarm: a replica whose service was removed by hand is said to be gone for good, not 'swarm restarts it'", async (t) => {
  const ready = await swarmTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("svcrm");
  const config = testConfig({ experiment, engine: "swarm", ports: { base: 19905 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2, env: { VARIANT: "control" } }] });
  const logged: string[] = [];
  const engine = new SwarmEngine(config, { resyncEveryMs: 300, log: (level, msg) => logged.push(`${level} ${msg}`) });
  t.after(() => engine.stop());
  await engine.start();
  await docker.getService(containerName(experiment, "control", 1)).remove();
  await waitFor("the error", () => logged.some((l) => l === "error replica control-1: its service was removed outside abgate, and swarm does not bring it back (run abgate up again, or abgate down)"), 20_000);
  assert.equal(engine.lastExit("control-1"), "replica control-1: its service was removed outside abgate, and swarm does not bring it back (run abgate up again, or abgate down)");
  await new Promise((r) => setTimeout(r, 1_000));
  assert.equal(logged.filter((l) => l.startsWith("error replica control-1")).length, 1, "said once");
  assert.deepEqual(engine.endpoints().map((e) => e.id), ["control-0"]);
  // abgate ps shows it too once swarm removed its task's container, not a config of one replica fewer
  await waitFor("control-1's container gone", async () => !(await listExperimentContainers(docker, config)).some((c) => c.Labels["abgate.replica"] === "1"), 30_000);
  const printed: string[] = [];
  const rows = await ps(config, { docker, out: (l) => printed.push(l) });
  assert.deepEqual(rows.map((r) => [r.replica, r.state]), [["control-0", "running"], ["control-1", "missing"]]);
  assert.match(printed[0]!, /\ncontrol-1\s+-\s+-\s+missing\s+-\s+no container: removed outside abgate/);
});

test("swarm: a replica whose task swarm rejects (its image is missing on the node) is said to be unrunnable, with swarm's reason", async (t) => {
  const ready = await swarmTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("svcrej");
  const config = testConfig({ experiment, engine: "swarm", ports: { base: 19915 }, variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2, env: { VARIANT: "control" } }] });
  const logged: string[] = [];
  const engine = new SwarmEngine(config, { resyncEveryMs: 300, log: (level, msg) => logged.push(`${level} ${msg}`) });
  t.after(() => engine.stop());
  await engine.start();
  // The image gone from the node (pruned, or a spec changed to one never built here, with no registry to pull from):
  // swarm rejects the new task without making a container, so no die event says anything.
  const service = docker.getService(containerName(experiment, "control", 1));
  const info = (await service.inspect()) as { Version: { Index: number }; Spec: { TaskTemplate: { ContainerSpec: { Image: string } } } };
  info.Spec.TaskTemplate.ContainerSpec.Image = `abgate-missing-${experiment}:none`;
  await service.update({ ...info.Spec, version: info.Version.Index });
  const said = () => logged.find((l) => l.startsWith("error replica control-1: swarm cannot run its task (rejected: "));
  await waitFor("the error", () => said() !== undefined, 60_000);
  assert.match(said()!, /No such image/i);
  assert.match(engine.lastExit("control-1") ?? "", /^replica control-1: swarm cannot run its task \(rejected: /);
  await waitFor("control-1 out of the endpoints", () => engine.endpoints().every((e) => e.id !== "control-1"), 30_000);
  assert.deepEqual(engine.endpoints().map((e) => e.id), ["control-0"]);
});

test("swarm: a service name another experiment's replica holds is refused with whose it is, and that service left alone", async (t) => {
  const ready = await swarmTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const experiment = uniqueExperiment("swclash");
  const other = `${experiment}-a`;
  const first = new SwarmEngine(testConfig({ experiment: other, engine: "swarm", ports: { base: 19925 }, variants: [{ name: "b", build: dir, buildArgs: { BASE_IMAGE } }] }), { log: () => {} });
  t.after(async () => {
    await first.stop();
    for (const image of await docker.listImages({ filters: { reference: [`abgate/${other}-b`] } })) await docker.getImage(image.Id).remove({ force: true }).catch(() => {});
  });
  await first.start();
  const name = containerName(experiment, "a-b", 0);
  const second = new SwarmEngine(testConfig({ experiment, engine: "swarm", ports: { base: 19935 }, variants: [{ name: "a-b", build: dir, buildArgs: { BASE_IMAGE } }] }), { log: () => {} });
  t.after(() => second.stop());
  await assert.rejects(second.start(), (err: Error & { code?: string }) => {
    assert.equal(err.code, "ABGATE_ERR_NAME_TAKEN");
    assert.match(err.message, new RegExp(`^the service name ${name} is taken by experiment ${other}'s replica b-0; abgate leaves it alone`));
    return true;
  });
  const service = (await docker.getService(name).inspect()) as { Spec: { Labels: Record<string, string> } };
  assert.equal(service.Spec.Labels["abgate.experiment"], other, "the other experiment's service is still there");
});
