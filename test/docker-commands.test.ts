import { after, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { DockerEngine, listExperimentContainers } from "../src/engines/docker/index.ts";
import { down, logs, ps } from "../src/cli/docker-commands.ts";
import { InvalidArgumentError } from "../src/errors.ts";
import { BASE_IMAGE, dockerTest, get, removeTestImages, requireDocker, testConfig, uniqueExperiment, waitFor, writeServiceContext } from "../src/engines/docker/testing.ts";

after(removeTestImages);

test("ps, logs (merged and followed, prefixed by replica) and down", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const config = testConfig({
    experiment: uniqueExperiment("cmd"),
    ports: { base: 19170 },
    variants: [
      { name: "control", build: dir, buildArgs: { BASE_IMAGE }, replicas: 2 },
      { name: "treatment", build: dir, buildArgs: { BASE_IMAGE } },
    ],
  });
  const engine = new DockerEngine(config, { stopTimeoutS: 1, log: () => {} });
  t.after(() => engine.stop());
  await engine.start();
  const ports = engine.endpoints().map((e) => e.port);
  for (const p of ports) await waitFor(`port ${p}`, () => get(`http://127.0.0.1:${p}/health`));

  const printed: string[] = [];
  const rows = await ps(config, { docker, out: (l) => printed.push(l) });
  assert.deepEqual(rows.map((r) => [r.replica, r.state, r.health, r.port]), [
    ["control-0", "running", "healthy", ports[0]],
    ["control-1", "running", "healthy", ports[1]],
    ["treatment-0", "running", "healthy", ports[2]],
  ]);
  assert.match(printed[0], /^REPLICA\s+CONTAINER\s+PORT\s+STATE\s+HEALTH/);
  assert.equal(printed[0].split("\n").length, 4);

  const lines: string[] = [];
  await logs(config, "control", { docker, out: (l) => lines.push(l) });
  assert.deepEqual([...lines].sort(), [`control-0 | listening on ${ports[0]}`, `control-1 | listening on ${ports[1]}`]);
  const tail: string[] = [];
  await logs(config, "treatment", { docker, tail: 1, out: (l) => tail.push(l) });
  assert.deepEqual(tail, [`treatment-0 | listening on ${ports[2]}`]);
  await assert.rejects(logs(config, "nope", { docker }), InvalidArgumentError);

  // follow: lines as they come, through a restart of a crashed replica, until the containers are removed
  const followed: string[] = [];
  const following = logs(config, "control", { docker, follow: true, out: (l) => followed.push(l) });
  await waitFor("followed lines", () => followed.length >= 2);
  await get(`http://127.0.0.1:${ports[0]}/crash`).catch(() => undefined);
  await waitFor("control-0 followed after its restart", () => followed.filter((l) => l === `control-0 | listening on ${ports[0]}`).length === 2, 30_000);
  const removed: string[] = [];
  assert.equal(await down(config, { docker, stopTimeoutS: 1, out: (l) => removed.push(l) }), 3);
  await following;
  assert.ok(followed.includes(`control-1 | listening on ${ports[1]}`), followed.join("\n"));
  assert.match(removed[0], /removed 3 container/);
  assert.equal((await listExperimentContainers(docker, config)).length, 0);
  const empty: string[] = [];
  await ps(config, { docker, out: (l) => empty.push(l) });
  assert.match(empty[0], /no containers of experiment/);
});

/**
 * For tests that run the CLI's `up`: a build context (TEST_SERVER, or `files` and `dockerfile`), a work folder with
 * an abgate.yaml of two variants built from it, and the matching config; both folders are removed after the test.
 */
async function upExperiment(
  t: import("node:test").TestContext,
  prefix: string,
  portsBase: number,
  listenPort: number,
  context: { files?: Record<string, string>; dockerfile?: string; variantExtra?: string } = {},
): Promise<{ file: string; config: ReturnType<typeof testConfig>; experiment: string }> {
  const { mkdtempSync, writeFileSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const dir = writeServiceContext(context.files, context.dockerfile);
  const work = mkdtempSync(join(tmpdir(), `abgate-${prefix}-`));
  t.after(() => {
    rmSync(dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  });
  const experiment = uniqueExperiment(prefix);
  const variants = ["control", "treatment"].map((name) => ({ name, build: dir, buildArgs: { BASE_IMAGE } }));
  const config = testConfig({ experiment, ports: { base: portsBase }, variants });
  const file = join(work, "abgate.yaml");
  writeFileSync(
    file,
    [
      `experiment: ${experiment}`,
      "engine: docker",
      `listen: 127.0.0.1:${listenPort}`,
      "admin: { listen: 127.0.0.1:0, token: t }",
      `store: sqlite:${join(work, "abgate.db")}`,
      "logLevel: warn",
      `ports: { base: ${portsBase} }`,
      "variants:",
      ...variants.map((v) => `  - { name: ${v.name}, build: ${dir}, buildArgs: { BASE_IMAGE: "${BASE_IMAGE}" }${context.variantExtra ?? ""} }`),
    ].join("\n"),
  );
  return { file, config, experiment };
}

test("logs --follow of a replica waiting for its restart (stopped when listed) follows it once it runs again", async (t) => {
  const ready = await dockerTest(t);
  if (!ready) return;
  const { docker, dir } = ready;
  const config = testConfig({
    experiment: uniqueExperiment("logwait"),
    ports: { base: 19330 },
    variants: [{ name: "control", build: dir, buildArgs: { BASE_IMAGE }, env: { CRASH_AT_START: "1" } }],
  });
  // crash-looping, with a restart 2 s after each death: the container is listed stopped between runs
  const engine = new DockerEngine(config, { restartBackoff: { initialMs: 2000, maxMs: 2000 }, stopTimeoutS: 1, log: () => {} });
  t.after(() => engine.stop());
  await engine.start();
  const [listed] = await listExperimentContainers(docker, config);
  await waitFor("stopped, waiting for its restart", async () => !(await docker.getContainer(listed!.Id).inspect()).State.Running, 10_000);
  const followed: string[] = [];
  let ended = false;
  const following = logs(config, "control", { docker, follow: true, out: (l) => followed.push(l) }).finally(() => (ended = true));
  const fatal = () => followed.filter((l) => l === "control-0 | fatal: cannot load model weights").length;
  // before, the follow ended at once with the stopped run's lines (its owner, this process, restarts it)
  await waitFor("the next run's lines", () => fatal() >= 2 || ended, 20_000).catch((err: Error) => {
    throw new Error(`${err.message}: ${followed.join(" / ")}`);
  });
  assert.equal(ended, false, followed.join("\n"));
  await engine.stop();
  await following;
});

test("up refuses to start when the experiment's listen port is taken, before it removes any container", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const { createServer } = await import("node:net");
  const { runCli } = await import("./helpers/cli.ts");
  // Something on the listen port (standing in for the running experiment's abgate), and the experiment's replicas.
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen({ host: "127.0.0.1", port: 0 }, resolve));
  t.after(() => busy.close());
  const port = (busy.address() as { port: number }).port;
  const { file, config } = await upExperiment(t, "busy", 19190, port);
  const engine = new DockerEngine(config, { stopTimeoutS: 1, log: () => {} });
  t.after(() => engine.stop());
  await engine.start();
  const res = await runCli(["up", "-c", file]);
  assert.equal(res.code, 1, res.stderr);
  assert.match(res.stderr, new RegExp(`listen 127\\.0\\.0\\.1:${port} is in use: is this experiment already running \\(abgate up or serve\\)\\? Nothing was started or removed\\.`));
  const running = await listExperimentContainers(docker, config);
  assert.deepEqual(running.map((c) => c.State), ["running", "running"], "the running experiment's replicas are untouched");
});

test("a second up of a running experiment refuses, and leaves the running one's replicas alone", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const { runCli, startCli } = await import("./helpers/cli.ts");
  // listen port 0 for both: nothing else stops the second one (as with another ABGATE_LISTEN)
  const { file, config } = await upExperiment(t, "second", 19530, 0);
  t.after(() => down(config, { docker, stopTimeoutS: 0, out: () => {} }));
  const first = await startCli(["up", "-c", file], /proxy http/, { timeoutMs: 120_000 });
  t.after(() => first.child.kill("SIGKILL"));
  const before = (await listExperimentContainers(docker, config)).map((c) => c.Id).sort();
  assert.equal(before.length, 2);
  const second = await runCli(["up", "-c", file]);
  assert.equal(second.code, 1, second.stderr);
  assert.match(second.stderr, new RegExp(`experiment ${config.experiment} is already running: its containers or services belong to another abgate \\(pid ${first.child.pid} on [^)]+\\); stop that one \\(Ctrl-C, or abgate down\\) first\\. Nothing was started or removed\\.`));
  const after = await listExperimentContainers(docker, config);
  assert.deepEqual(after.map((c) => c.Id).sort(), before, "the same containers");
  assert.deepEqual(after.map((c) => c.State), ["running", "running"]);
  // the first goes on: a Ctrl-C still stops it cleanly, and then a new up may start
  first.child.kill("SIGINT");
  assert.equal(await first.exited, 0, first.stderr());
});

test("up: a second Ctrl-C while the replicas stop kills them at once, and none is left behind", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const { startCli } = await import("./helpers/cli.ts");
  // A server that ignores SIGTERM, as node does as PID 1 without a handler: each stop waits out its timeout.
  const stubborn = `require("node:http").createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT), "127.0.0.1");`;
  const { file, config } = await upExperiment(t, "twice", 19210, 0, {
    files: { "stubborn.js": stubborn },
    dockerfile: `ARG BASE_IMAGE=node:20-slim\nFROM \${BASE_IMAGE}\nCOPY stubborn.js /app/stubborn.js\nCMD ["node", "/app/stubborn.js"]\n`,
  });
  t.after(() => down(config, { docker, stopTimeoutS: 0, out: () => {} }));
  const cli = await startCli(["up", "-c", file], /proxy http/, { timeoutMs: 120_000 });
  cli.child.kill("SIGINT");
  await waitFor("removal under way", () => cli.stdout().includes("removing the experiment's replicas"));
  cli.child.kill("SIGINT");
  const t0 = Date.now();
  const code = await cli.exited;
  assert.equal(code, 1, `exit ${code} after ${Date.now() - t0} ms\n${cli.stdout()}\n${cli.stderr()}`);
  assert.match(cli.stdout(), /killing the experiment's replicas now/);
  // (a removal the daemon had already begun may still be finishing: "removing")
  const left = async () => (await listExperimentContainers(docker, config)).filter((c) => c.Labels["abgate.replica"] !== undefined);
  await waitFor("no replica left", async () => (await left()).length === 0, 10_000).catch(() => undefined);
  assert.deepEqual((await left()).map((c) => c.State), [], "no replica is left");
});

test("up stops by itself, exit 0, when abgate down removes its containers during its health wait, not after --wait-timeout", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const { startCli } = await import("./helpers/cli.ts");
  // Replicas that never become healthy: up waits for them (up to --wait-timeout, 120 s).
  const { file, config } = await upExperiment(t, "downwait", 19460, 0, { variantExtra: ", health: { path: /never-healthy, intervalMs: 200 }" });
  t.after(() => down(config, { docker, stopTimeoutS: 0, out: () => {} }));
  const cli = await startCli(["up", "-c", file, "--wait-timeout", "120000"], /waiting for 2 replicas to become healthy/, { timeoutMs: 120_000 });
  assert.equal(await down(config, { docker, stopTimeoutS: 1, out: () => {} }), 2);
  const code = await Promise.race([cli.exited, new Promise((r) => setTimeout(() => r("still running after 15 s"), 15_000))]);
  if (code !== 0) cli.child.kill("SIGKILL");
  assert.equal(code, 0, `${cli.stdout()}\n${cli.stderr()}`);
  assert.match(cli.stdout(), /the experiment's replicas were removed outside abgate; abgate stopped/);
});

test("up stops by itself, exit 0, when abgate down removes its containers, instead of answering 503s", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const { startCli } = await import("./helpers/cli.ts");
  const { file, config, experiment } = await upExperiment(t, "downed", 19230, 0);
  t.after(() => down(config, { docker, stopTimeoutS: 0, out: () => {} }));
  const cli = await startCli(["up", "-c", file], /proxy http/, { timeoutMs: 120_000 });
  assert.equal(await down(config, { docker, stopTimeoutS: 1, out: () => {} }), 2);
  const code = await Promise.race([cli.exited, new Promise((r) => setTimeout(() => r("still running after 15 s"), 15_000))]);
  if (code !== 0) cli.child.kill("SIGKILL");
  assert.equal(code, 0, `${cli.stdout()}\n${cli.stderr()}`);
  assert.match(cli.stderr(), new RegExp(`every container of experiment ${experiment} was removed outside abgate \\(abgate down\\?\\): draining and stopping`));
  assert.match(cli.stdout(), /the experiment's replicas were removed outside abgate; abgate stopped/);
});
