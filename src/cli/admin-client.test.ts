import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { lookup } from "node:dns/promises";
import { join } from "node:path";
import { runCli, startCli } from "../../test/helpers/cli.ts";
import { parseConfig } from "../config/index.ts";
import { adminTarget } from "./admin-client.ts";
import { InvalidArgumentError } from "../errors.ts";

/** Not abgate: answers every request 200 "hello", like a model behind the proxy port. */
let hello: Server;
let helloUrl: string;
let abgate: { child: ChildProcess; exited: Promise<number | null> };
let adminUrl: string;
let proxyUrl: string;
let configFile: string;

before(async () => {
  hello = createServer((req, res) => {
    if (req.headers.authorization !== undefined) tokensSeen.push(req.headers.authorization);
    req.resume();
    res.end("hello");
  });
  await new Promise<void>((resolve) => hello.listen(0, "127.0.0.1", resolve));
  helloUrl = `http://127.0.0.1:${(hello.address() as AddressInfo).port}`;
  const dir = mkdtempSync(join(tmpdir(), "abgate-admin-cli-"));
  configFile = join(dir, "abgate.yaml");
  writeFileSync(
    configFile,
    `experiment: cli\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: config-token }\nstore: sqlite:./a.db\nengine: static\nlogLevel: warn\n` +
      `variants:\n  - { name: control, url: '${helloUrl}' }\n  - { name: treatment, url: '${helloUrl}' }\n`,
  );
  const ready = /proxy (http:\/\/[^,]+), admin (http:\/\/\S+)/;
  const cli = await startCli(["serve", "-c", configFile], ready, { env: { ABGATE_ADMIN_TOKEN: "" } });
  [, proxyUrl, adminUrl] = ready.exec(cli.stdout())!;
  abgate = cli;
});

after(async () => {
  abgate.child.kill("SIGTERM");
  await abgate.exited;
  await new Promise((resolve) => hello.close(resolve));
});

const noEnvToken = { ABGATE_ADMIN_TOKEN: "" };
/** Authorization headers that reached the hello server (a model behind the proxy must never see the admin token) */
const tokensSeen: string[] = [];

test("promote, rollback, weights: a server that answers 200 but is not abgate's admin API is an error naming its URL", async () => {
  for (const target of [helloUrl, proxyUrl]) {
    for (const args of [["promote", "treatment"], ["rollback"], ["weights", "control=20", "treatment=80"]]) {
      const res = await runCli([...args, "--admin", target, "--token", "t"]);
      assert.equal(res.code, 1, `${args[0]} at ${target}: ${res.stdout}${res.stderr}`);
      assert.equal(res.stdout, "", `${args[0]} reports no success`);
      assert.match(res.stderr, new RegExp(`^abgate: ${target.replaceAll(".", "\\.")} is not an abgate admin API: .* answered 200 with "hello"`), res.stderr);
      assert.doesNotMatch(res.stderr, /undefined|Cannot read/);
    }
  }
  assert.deepEqual(tokensSeen, [], "the admin token is sent only once an abgate admin API answered");
});

test("promote, rollback, weights refuse an abgate that runs another experiment, and change nothing", async () => {
  const other = join(mkdtempSync(join(tmpdir(), "abgate-admin-cli-")), "other.yaml");
  writeFileSync(other, `experiment: other\nengine: static\nadmin: { token: config-token }\nvariants:\n  - { name: control, url: '${helloUrl}' }\n  - { name: treatment, url: '${helloUrl}' }\n`);
  const before = await (await fetch(`${adminUrl}/v1/experiment`)).json();
  for (const args of [["promote", "treatment"], ["rollback"], ["weights", "control=10", "treatment=90"]]) {
    const res = await runCli([...args, "-c", other, "--admin", adminUrl], { env: noEnvToken });
    assert.equal(res.code, 1, `${args[0]}: ${res.stdout}${res.stderr}`);
    assert.match(res.stderr, new RegExp(`the abgate at ${adminUrl.replaceAll(".", "\\.")} runs experiment cli, not other: nothing was changed`));
  }
  assert.deepEqual(await (await fetch(`${adminUrl}/v1/experiment`)).json().then((v) => v.variants.map((x: { weight: number }) => x.weight)), before.variants.map((x: { weight: number }) => x.weight));
});

test("promote warns when the promoted variant has no healthy replica, saying what happens to its requests", async () => {
  const { testGateway } = await import("../../test/helpers/gateway.ts");
  const health = { intervalMs: 50, timeoutMs: 200, rise: 1, fall: 1 };
  for (const [fallback, outcome] of [
    ["control", /: until one is, its requests are served by control \(fallback\)/],
    ["reject", /: until one is, its requests get 503$/m],
  ] as const) {
    const gw = await testGateway({ fallback, variants: [{ name: "control", url: helloUrl, health }, { name: "treatment", url: "http://127.0.0.1:1", health }] });
    try {
      const deadline = Date.now() + 5000;
      while (gw.health.isHealthy("treatment-0") || gw.health.state("treatment-0") === "unknown") {
        if (Date.now() > deadline) throw new Error("treatment-0 was never found down");
        await new Promise((r) => setTimeout(r, 25));
      }
      const res = await runCli(["promote", "treatment", "--admin", gw.adminUrl, "--token", "test-admin-token"], { env: noEnvToken });
      assert.equal(res.code, 0, res.stderr);
      assert.equal(res.stdout, "promoted treatment: it now gets all traffic\n");
      assert.match(res.stderr, /^abgate: warning: treatment has no healthy replica \(treatment-0 \S+\)/m);
      assert.match(res.stderr, outcome, fallback);
    } finally {
      await gw.close();
    }
  }
});

test("rollback and weights warn as promote does when a variant that now gets traffic has no healthy replica", async () => {
  const { testGateway } = await import("../../test/helpers/gateway.ts");
  const health = { intervalMs: 50, timeoutMs: 200, rise: 1, fall: 1 };
  const gw = await testGateway({ fallback: "treatment", variants: [{ name: "control", url: "http://127.0.0.1:1", health }, { name: "treatment", url: helloUrl, health }] });
  try {
    const deadline = Date.now() + 5000;
    while (gw.health.state("control-0") !== "unhealthy" || !gw.health.isHealthy("treatment-0")) {
      if (Date.now() > deadline) throw new Error("control-0 was never found down");
      await new Promise((r) => setTimeout(r, 25));
    }
    const cli = (...args: string[]) => runCli([...args, "--admin", gw.adminUrl, "--token", "test-admin-token"], { env: noEnvToken });
    const warning = /^abgate: warning: control has no healthy replica \(control-0 unhealthy\): until one is, its requests are served by treatment \(fallback\)/m;
    const rollback = await cli("rollback");
    assert.equal(rollback.code, 0, rollback.stderr);
    assert.match(rollback.stderr, warning);
    const both = await cli("weights", "control=1", "treatment=1");
    assert.equal(both.code, 0, both.stderr);
    assert.match(both.stderr, warning);
    assert.doesNotMatch(both.stderr, /treatment has no healthy replica/);
    const treatmentOnly = await cli("weights", "control=0", "treatment=1");
    assert.equal(treatmentOnly.code, 0, treatmentOnly.stderr);
    assert.equal(treatmentOnly.stderr, "");
  } finally {
    await gw.close();
  }
});

test("promote, rollback, weights: the real admin API's answers are accepted and reported", async () => {
  const env = { env: noEnvToken };
  const weights = await runCli(["weights", "control=20", "treatment=80", "--admin", adminUrl, "--token", "config-token"], env);
  assert.equal(weights.code, 0, weights.stderr);
  assert.equal(weights.stdout, "weights: control=20 treatment=80\n");
  const promote = await runCli(["promote", "treatment", "--admin", adminUrl, "--token", "config-token"], env);
  assert.equal(promote.code, 0, promote.stderr);
  assert.equal(promote.stdout, "promoted treatment: it now gets all traffic\n");
  const rollback = await runCli(["rollback", "--admin", adminUrl, "--token", "config-token"], env);
  assert.equal(rollback.code, 0, rollback.stderr);
  assert.equal(rollback.stdout, "rolled back: all traffic to control\n");
  const unknown = await runCli(["promote", "nope", "--admin", adminUrl, "--token", "config-token"], env);
  assert.equal(unknown.code, 2, "the server refused the command's argument: a usage error");
  assert.match(unknown.stderr, /POST \/v1\/promote: 400 variant: one of control, treatment/, "abgate's own errors still come through");
});

test("through a name the admin listener does not know (a reverse proxy's), a change with the token passes, check included", async () => {
  // the same listener, reached by this machine's name (127.0.0.1 in its /etc/hosts): a Host outside
  // admin.allowedHosts, which only a token passes
  const name = hostname();
  const { address } = await lookup(name, { family: 4 });
  assert.match(address, /^127\./, `this test needs the machine's name (${name}) to resolve to a loopback address`);
  const mapped = adminUrl.replace("127.0.0.1", name);
  assert.notEqual(mapped, adminUrl);
  const env = { env: noEnvToken };
  const bare = await fetch(new URL("/v1/experiment", mapped));
  assert.equal(bare.status, 403, "without the token this Host is refused");
  const rollback = await runCli(["rollback", "-c", configFile, "--admin", mapped], env);
  assert.equal(rollback.code, 0, rollback.stderr);
  assert.equal(rollback.stdout, "rolled back: all traffic to control\n");
});

test("an empty ABGATE_ADMIN_TOKEN does not hide the config's token", async () => {
  const config = parseConfig("experiment: cli\nengine: static\nadmin: { token: config-token }\nvariants:\n  - { name: control, url: 'http://127.0.0.1:9' }\n", "/tmp", {});
  assert.equal(adminTarget(config, {}, { ABGATE_ADMIN_TOKEN: "" }).token, "config-token");
  assert.equal(adminTarget(config, { token: "" }, { ABGATE_ADMIN_TOKEN: "" }).token, "config-token");
  assert.equal(adminTarget(config, {}, { ABGATE_ADMIN_TOKEN: "env-token" }).token, "env-token", "a set variable still wins over the config");
  assert.equal(adminTarget(undefined, {}, { ABGATE_ADMIN_TOKEN: "" }).token, undefined);
  // blank once trimmed is empty too (it hid the config's token, and no token was sent: a 401)
  assert.equal(adminTarget(config, {}, { ABGATE_ADMIN_TOKEN: " " }).token, "config-token");
  assert.equal(adminTarget(config, { token: "\n" }, { ABGATE_ADMIN_TOKEN: " \t" }).token, "config-token");
  // A secret file's newline is no part of the token (the server and the config loader drop it too); what cannot be
  // sent in a header is a usage error naming where the token came from, not "no admin API answers".
  assert.equal(adminTarget(config, {}, { ABGATE_ADMIN_TOKEN: "env-token\n" }).token, "env-token");
  assert.throws(() => adminTarget(config, { token: "tökén" }, {}), (err: unknown) => err instanceof InvalidArgumentError && /the admin token \(--token\) has spaces or characters that are not ASCII/.test(err.message));
  assert.throws(() => adminTarget(config, {}, { ABGATE_ADMIN_TOKEN: "a b" }), /ABGATE_ADMIN_TOKEN/);

  const ok = await runCli(["rollback", "-c", configFile, "--admin", adminUrl], { env: noEnvToken });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, "rolled back: all traffic to control\n");
  const wrong = await runCli(["rollback", "-c", configFile, "--admin", adminUrl], { env: { ABGATE_ADMIN_TOKEN: "wrong" } });
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /401 .*pass --token or set ABGATE_ADMIN_TOKEN/);
});

test("weights: a variant given twice is a usage error (exit 2) naming it, and nothing is changed", async () => {
  const weightsNow = async () => ((await (await fetch(`${adminUrl}/v1/experiment`)).json()) as { variants: { name: string; weight: number }[] }).variants.map((v) => `${v.name}=${v.weight}`);
  const before = await weightsNow();
  for (const args of [["control=5", "control=7"], ["control=5", "treatment=95", "control=5"]]) {
    const res = await runCli(["weights", ...args, "--admin", adminUrl, "--token", "config-token"], { env: noEnvToken });
    assert.equal(res.code, 2, `${args.join(" ")}: ${res.stdout}${res.stderr}`);
    assert.equal(res.stdout, "");
    assert.match(res.stderr, /^abgate: variant control is given twice \(control=5 and control=[57]\): give each variant once$/m, res.stderr);
  }
  assert.deepEqual(await weightsNow(), before);
});

test("--admin that is not an http(s) URL is a usage error (exit 2) naming --admin", async () => {
  for (const bad of ["notaurl", "ftp://127.0.0.1:8081", ""]) {
    for (const args of [["promote", "treatment"], ["rollback"], ["weights", "control=1"]]) {
      const res = await runCli([...args, "--admin", bad], { env: noEnvToken });
      assert.equal(res.code, 2, `${args[0]} --admin ${JSON.stringify(bad)}: ${res.stderr}`);
      assert.match(res.stderr, /^abgate: --admin ".*": expected an http\(s\) URL/, res.stderr);
    }
  }
});

test("abgate ps for the static engine answers from the running abgate, without Docker", async () => {
  const res = await runCli(["ps", "-c", configFile, "--admin", adminUrl], { env: { DOCKER_HOST: "unix:///nonexistent/docker.sock" } });
  assert.equal(res.code, 0, res.stderr);
  const lines = res.stdout.trimEnd().split("\n");
  assert.match(lines[0], /^REPLICA\s+ADDRESS\s+HEALTH\s+CHECKS\s+IN-FLIGHT$/);
  const host = helloUrl.replace("http://", "");
  // static URLs without health: are only checked passively, which the table says
  assert.match(res.stdout, new RegExp(`^control-0\\s+${host.replaceAll(".", "\\.")}\\s+\\S+\\s+passive\\s+\\d+$`, "m"));
  assert.match(res.stdout, new RegExp(`^treatment-0\\s+${host.replaceAll(".", "\\.")}\\s+\\S+\\s+passive\\s+\\d+$`, "m"));

  const notRunning = await runCli(["ps", "-c", configFile, "--admin", "http://127.0.0.1:9"]);
  assert.equal(notRunning.code, 1);
  assert.match(notRunning.stderr, /no abgate admin API answers at http:\/\/127\.0\.0\.1:9/);
  const notAbgate = await runCli(["ps", "-c", configFile, "--admin", helloUrl]);
  assert.equal(notAbgate.code, 1);
  assert.match(notAbgate.stderr, /is not an abgate admin API/);
});
