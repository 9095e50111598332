import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Docker from "dockerode";
import { runCli } from "../../test/helpers/cli.ts";
import { connectsTo } from "../engines/docker/client.ts";

test("ps, down, logs without a Docker engine name the socket they tried, not the client's source", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-nodocker-"));
  const file = join(dir, "abgate.yaml");
  writeFileSync(file, "experiment: nodocker\nengine: docker\nstore: sqlite:./a.db\nvariants:\n  - { name: control, image: 'example/model:1' }\n");
  const socket = join(dir, "docker.sock");
  for (const args of [["ps"], ["down"], ["logs", "control"]]) {
    const res = await runCli([...args, "-c", file], { env: { DOCKER_HOST: `unix://${socket}` } });
    assert.equal(res.code, 1, res.stderr);
    assert.match(res.stderr, new RegExp(`^abgate: No Docker engine answers on ${socket.replaceAll(".", "\\.")} \\(`), res.stderr);
    assert.doesNotMatch(res.stderr, /function|=>|\{\n/);
  }
});

test("connectsTo: the default socket is resolved to a path, as the client resolves it", async () => {
  const saved = process.env.DOCKER_HOST;
  try {
    delete process.env.DOCKER_HOST;
    const where = await connectsTo(new Docker());
    assert.equal(typeof where, "string");
    assert.match(where, /^\/.*docker\.sock$/);
    process.env.DOCKER_HOST = "tcp://127.0.0.1:2375";
    assert.equal(await connectsTo(new Docker()), "http://127.0.0.1:2375");
  } finally {
    if (saved === undefined) delete process.env.DOCKER_HOST;
    else process.env.DOCKER_HOST = saved;
  }
});

test("down and logs for the static and process engines answer without Docker", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-nocontainers-"));
  const env = { DOCKER_HOST: `unix://${join(dir, "docker.sock")}` };
  for (const engine of ["static", "process"] as const) {
    const file = join(dir, `${engine}.yaml`);
    const variant = engine === "static" ? "{ name: control, url: 'http://127.0.0.1:9' }" : "{ name: control, command: [node, server.js] }";
    writeFileSync(file, `experiment: nc\nengine: ${engine}\nstore: sqlite:./a.db\nvariants:\n  - ${variant}\n`);
    const down = await runCli(["down", "-c", file], { env });
    assert.equal(down.code, 0, down.stderr);
    assert.match(down.stdout, new RegExp(`^engine ${engine} runs no containers: nothing to remove`));
    const logs = await runCli(["logs", "control", "-c", file], { env });
    assert.equal(logs.code, 0, logs.stderr);
    assert.equal(logs.stdout, "");
    assert.match(logs.stderr, new RegExp(`^abgate logs shows container logs; engine ${engine} `));
    assert.doesNotMatch(logs.stderr, /Docker engine/);
  }
});
