import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startCli } from "../../test/helpers/cli.ts";
import { alive, until } from "../../test/helpers/processes.ts";

const adminUrlOf = (stdout: string): string => /admin (http:\/\/\S+)/.exec(stdout)![1];

test("serve (process engine): SIGHUP drains, stops the replicas and exits 0, as SIGTERM does", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-hup-"));
  const pidFile = join(dir, "pids");
  // A replica that serves on PORT and notes its pid once it listens.
  writeFileSync(
    join(dir, "replica.cjs"),
    `require("http").createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT), "127.0.0.1", () => require("fs").appendFileSync(${JSON.stringify(pidFile)}, process.pid + "\\n"));\n`,
  );
  const file = join(dir, "abgate.yaml");
  writeFileSync(
    file,
    `experiment: hup\nengine: process\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nlogLevel: warn\nports: { base: 24720 }\n` +
      `variants:\n  - { name: control, command: [node, replica.cjs] }\n  - { name: treatment, command: [node, replica.cjs], replicas: 2 }\n`,
  );
  const pids = (): number[] => (existsSync(pidFile) ? readFileSync(pidFile, "utf8").split("\n").filter(Boolean).map(Number) : []);
  // Whatever the outcome, no replica is left behind by this test.
  t.after(() => {
    for (const pid of pids()) if (alive(pid)) process.kill(pid, "SIGKILL");
  });
  const serve = await startCli(["serve", "-c", file], /abgate: experiment hup/);
  const running = await until("three replicas listening", () => (pids().length === 3 ? pids() : undefined));
  for (const pid of running) assert.ok(alive(pid), `replica ${pid} runs`);

  serve.child.kill("SIGHUP");
  const code = await serve.exited;
  assert.equal(code, 0, `exit code after SIGHUP (null: killed by the signal)\n${serve.stderr()}`);
  for (const pid of running) await until(`replica ${pid} to end`, () => (alive(pid) ? undefined : true), 3_000);
});

test("serve: a restart keeps weights set at run time, but an edited config's weights win, with a warning", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-restart-"));
  const file = join(dir, "abgate.yaml");
  const write = (control: number, treatment: number) =>
    writeFileSync(
      file,
      `experiment: restart\nengine: static\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nlogLevel: warn\n` +
        `variants:\n  - { name: control, weight: ${control}, url: "http://127.0.0.1:1" }\n  - { name: treatment, weight: ${treatment}, url: "http://127.0.0.1:2" }\n`,
    );
  type View = { variants: { name: string; weight: number }[]; ranges: { variant: string; from: number; to: number }[] };
  /** Serve once: `during` runs against the admin API, then SIGTERM; returns the view and what went to stderr. */
  const serveOnce = async (during?: (adminUrl: string) => Promise<void>): Promise<{ view: View; stderr: string }> => {
    const serve = await startCli(["serve", "-c", file], /abgate: experiment restart/);
    try {
      const adminUrl = adminUrlOf(serve.stdout());
      await during?.(adminUrl);
      const view = (await (await fetch(`${adminUrl}/v1/experiment`)).json()) as View;
      return { view, stderr: serve.stderr() };
    } finally {
      serve.child.kill("SIGTERM");
      assert.equal(await serve.exited, 0, serve.stderr());
    }
  };
  const weights = (v: View) => Object.fromEntries(v.variants.map((x) => [x.name, x.weight]));

  write(50, 50);
  const first = await serveOnce(async (adminUrl) => {
    const res = await fetch(`${adminUrl}/v1/weights`, { method: "PUT", headers: { authorization: "Bearer t", "content-type": "application/json" }, body: JSON.stringify({ control: 20, treatment: 80 }) });
    assert.equal(res.status, 200, await res.text());
  });
  assert.deepEqual(weights(first.view), { control: 20, treatment: 80 });

  const same = await serveOnce();
  assert.deepEqual(weights(same.view), { control: 20, treatment: 80 }, "config unchanged: the run-time weights stay");
  assert.doesNotMatch(same.stderr, /weights changed/);

  write(90, 10);
  const edited = await serveOnce();
  assert.deepEqual(weights(edited.view), { control: 90, treatment: 10 }, "config edited: its weights win");
  assert.match(edited.stderr, /the config's weights changed since the last run \(control 50 -> 90, treatment 50 -> 10\)/);
  // rebalanced from 20/80, not rebuilt: control keeps [0, 0.2) and grows by the 0.7 it must
  const control = edited.view.ranges.filter((r) => r.variant === "control");
  assert.ok(control.some((r) => r.from === 0 && r.to >= 0.2), JSON.stringify(edited.view.ranges));
  assert.ok(Math.abs(control.reduce((s, r) => s + r.to - r.from, 0) - 0.9) < 1e-9, JSON.stringify(edited.view.ranges));
});
