import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseConfig } from "../../config/index.ts";
import { alive, until } from "../../../test/helpers/processes.ts";
import { inheritedEnv, ProcessEngine } from "./index.ts";

const CLI = fileURLToPath(new URL("../../cli/main.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("../../..", import.meta.url));
const ENGINE = fileURLToPath(new URL("./index.ts", import.meta.url));

/**
 * A replica command whose real work runs as grandchildren of abgate (a shell wrapper that does not exec): a
 * node process that ignores SIGTERM, so that only the SIGKILL after the grace period ends it, and a sleep.
 * Their pids are printed (the node one once its handler is in place), to stdout, which also shows that the
 * replica's output is still read, or appended to `file`.
 */
function wrapper(file?: string): string {
  const print = file ? `require('fs').appendFileSync(${JSON.stringify(file).replaceAll('"', "'")}, 'grandchild ' + process.pid + '\\n')` : "console.log('grandchild ' + process.pid)";
  return `node -e "process.on('SIGTERM', () => {}); ${print}; setInterval(() => {}, 1000)" & sleep 1000 & echo "grandchild $!"${file ? ` >>${file}` : ""}; wait`;
}
const WRAPPER = wrapper();

/** `sh -c <script>` as a YAML flow sequence (JSON is YAML), so that the script's quotes need no escaping. */
const cmd = (script: string): string => JSON.stringify(["sh", "-c", script]);

function configFor(dir: string, variants: string): ReturnType<typeof parseConfig> {
  return parseConfig(`experiment: procs\nengine: process\nstore: sqlite:./a.db\nports: { base: 24600 }\nvariants:\n${variants}`, dir, {});
}

const grandchildren = (lines: string[]): number[] => lines.flatMap((l) => /^grandchild (\d+)$/.exec(l.trim())?.[1] ?? []).map(Number);

test("process engine: stop() ends a replica's grandchildren too, with SIGKILL for one that ignores SIGTERM", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: ${cmd(WRAPPER)} }\n`));
  await engine.start();
  const pids = await until("both grandchildren", () => {
    const g = grandchildren(engine.tail("control-0"));
    return g.length === 2 ? g : undefined;
  });
  const shell = engine.pids()["control-0"];
  assert.ok(shell, "the wrapper runs");
  for (const pid of pids) assert.ok(alive(pid), `grandchild ${pid} runs before stop`);

  const started = Date.now();
  await engine.stop(300);
  assert.ok(Date.now() - started >= 250, "the grace period was given before SIGKILL");
  for (const pid of [shell, ...pids]) assert.equal(alive(pid), false, `process ${pid} is gone once stop() returns`);
  assert.deepEqual(engine.endpoints(), []);
});

test("process engine: a crashed replica's leftovers are killed before it restarts", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: ${cmd('sleep 1000 & echo "grandchild $!"; sleep 0.3; exit 3')} }\n`), { backoffMs: 20 });
  await engine.start();
  try {
    const [first] = await until("the first grandchild", () => {
      const g = grandchildren(engine.tail("control-0"));
      return g.length ? g : undefined;
    });
    await until("a restart", () => (grandchildren(engine.tail("control-0")).length >= 2 ? true : undefined));
    await until(`grandchild ${first} of the crashed run to end`, () => (alive(first) ? undefined : true), 5_000);
  } finally {
    await engine.stop(1000);
  }
  for (const pid of grandchildren(engine.tail("control-0"))) assert.equal(alive(pid), false, `grandchild ${pid} is gone`);
});

test("process engine: a command that does not exist is reported with its error, and retried with backoff", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  const logged: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
  const progress: string[] = [];
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: [/nonexistent/abgate-no-such-binary, x] }\n`), {
    backoffMs: 20,
    log: (level, msg, fields) => logged.push({ level, msg, fields }),
  });
  await engine.start((line) => progress.push(line));
  try {
    assert.equal(progress.length, 1);
    assert.match(progress[0], /^control-0: could not start \/nonexistent\/abgate-no-such-binary x: .*ENOENT/);
    assert.doesNotMatch(progress[0], /pid/);
    await until("three attempts", () => (logged.length >= 3 ? true : undefined));
    assert.match(logged[0].msg, /^replica control-0 could not start: .*ENOENT/);
    assert.deepEqual(
      logged.slice(0, 3).map((l) => l.fields?.restarts),
      [1, 2, 3],
      "each failure backs off further",
    );
    assert.deepEqual(engine.endpoints(), []);
  } finally {
    await engine.stop(1000);
  }
});

test("process engine: replicas and their grandchildren die when the process exits without stop()", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  writeFileSync(join(dir, "abgate.yaml"), `experiment: procs\nengine: process\nstore: sqlite:./a.db\nports: { base: 24600 }\nvariants:\n  - { name: control, command: ${cmd(WRAPPER)} }\n`);
  // What a CLI command does when it is done: print, then process.exit() with the engine still running.
  writeFileSync(
    join(dir, "run.mts"),
    `import { loadConfig } from ${JSON.stringify(fileURLToPath(new URL("../../config/index.ts", import.meta.url)))};
     import { ProcessEngine } from ${JSON.stringify(ENGINE)};
     const engine = new ProcessEngine(loadConfig(${JSON.stringify(join(dir, "abgate.yaml"))}));
     await engine.start();
     const deadline = Date.now() + 10_000;
     while (engine.tail("control-0").filter((l) => l.startsWith("grandchild")).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
     console.log(JSON.stringify({ shell: engine.pids()["control-0"], lines: engine.tail("control-0") }));
     process.exit(0);`,
  );
  const child = spawn(process.execPath, ["--import", "tsx", join(dir, "run.mts")], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c) => (stdout += c));
  child.stderr.on("data", (c) => (stderr += c));
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  assert.equal(code, 0, stderr);
  const { shell, lines } = JSON.parse(stdout) as { shell: number; lines: string[] };
  const pids = grandchildren(lines);
  assert.equal(pids.length, 2, stdout);
  for (const pid of [shell, ...pids]) await until(`process ${pid} to end`, () => (alive(pid) ? undefined : true), 5_000);
});

test("abgate up: a failed startup leaves none of a replica's grandchildren behind", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  // Never healthy (nothing listens on PORT), so `up` gives up after --wait-timeout and stops the engine
  const file = join(dir, "abgate.yaml");
  writeFileSync(
    file,
    `experiment: procs\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: process\nlogLevel: warn\nports: { base: 24600 }\n` +
      `variants:\n  - { name: control, command: ${cmd(wrapper(join(dir, "pids")))}, health: { path: /, intervalMs: 100, timeoutMs: 100, rise: 1, fall: 1 } }\n`,
  );
  const child = spawn(process.execPath, ["--import", "tsx", CLI, "up", "-c", file, "--wait-timeout", "1500"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (c) => (stderr += c));
  child.stdout.resume();
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  assert.equal(code, 1, stderr);
  assert.match(stderr, /did not become healthy|healthy/, stderr);
  const pids = grandchildren(readFileSync(join(dir, "pids"), "utf8").split("\n"));
  assert.equal(pids.length, 2);
  for (const pid of pids) assert.equal(alive(pid), false, `grandchild ${pid} is gone once abgate has exited`);
});

test("process engine: replicas never get the proxy's or the admin's port, even when ports.base is one of them", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  // The engine starts before abgate binds listen and admin.listen, so those ports are free at that moment: only
  // reserving them keeps them from the replicas.
  const engine = new ProcessEngine(
    parseConfig(
      `experiment: procs\nengine: process\nstore: sqlite:./a.db\nlisten: 127.0.0.1:24700\nadmin: { listen: 127.0.0.1:24701 }\nports: { base: 24700 }\n` +
        `variants:\n  - { name: control, command: [sleep, "1000"], replicas: 2 }\n  - { name: treatment, command: [sleep, "1000"] }\n`,
      dir,
      {},
    ),
  );
  await engine.start();
  try {
    const ports = engine.endpoints().map((e) => e.port).sort();
    assert.equal(ports.length, 3);
    assert.ok(!ports.includes(24700) && !ports.includes(24701), `replica ports ${ports.join(", ")} exclude 24700 (listen) and 24701 (admin)`);
  } finally {
    await engine.stop(1000);
  }
});

test("process engine: start() lets timers run between replicas, and stop() during start() leaves none behind", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  // A command line no other process has, to count exactly these replicas in /proc.
  const marker = `1000.${process.pid}${Date.now() % 100_000}`;
  const config = configFor(dir, `  - { name: a, replicas: 60, command: ["sleep", "${marker}"] }`);
  const ours = (): number[] =>
    readdirSync("/proc")
      .filter((d) => /^\d+$/.test(d))
      .filter((d) => {
        try {
          return readFileSync(`/proc/${d}/cmdline`, "utf8") === `sleep\0${marker}\0`;
        } catch {
          return false;
        }
      })
      .map(Number)
      .filter(alive);

  // Ctrl-C (a signal handler) and timers must not wait for every replica to start.
  const first = new ProcessEngine(config);
  let ticks = 0;
  const ticker = setInterval(() => ticks++, 1);
  await first.start();
  clearInterval(ticker);
  await first.stop(2000);
  assert.ok(ticks >= 10, `timers ran ${ticks} times while 60 replicas started`);

  // stop() while start() is between two replicas (polled without timers, which an old start() held up).
  const second = new ProcessEngine(config);
  const starting = second.start();
  while (Object.keys(second.pids()).length < 3) await new Promise((r) => setImmediate(r));
  await second.stop(2000);
  await starting;
  assert.deepEqual(await until("no replica left", () => (ours().length === 0 ? [] : undefined), 5000), []);
});

test("process engine: a replica's output tail joins lines split across pipe reads, and cuts very long ones", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  // 100,016 characters in one line: the pipe hands them over in reads of 64 KiB, which made two tail entries.
  writeFileSync(join(dir, "long.js"), `process.stdout.write("x".repeat(100016) + "\\nélan\\n", () => setInterval(() => {}, 1000));`);
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: [node, long.js] }\n`));
  await engine.start();
  try {
    const tail = await until("both lines", () => (engine.tail("control-0").includes("élan") ? engine.tail("control-0") : undefined));
    assert.deepEqual(tail.map((l) => l.length), [4097, 4], "one line, cut to 4,096 characters and an ellipsis, then the next");
    assert.equal(tail[0], `${"x".repeat(4096)}…`);
  } finally {
    await engine.stop();
  }
});

test("process engine: a replica's last line without a newline reaches its tail (what the crash-loop report shows)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  writeFileSync(join(dir, "fatal.js"), `process.stderr.write("\\n\\nfatal: cannot load model /models/m.bin"); process.exit(1);`);
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: [node, fatal.js] }\n`), { log: () => {} });
  await engine.start();
  try {
    await until("the line in the tail", () => (engine.tail("control-0").includes("fatal: cannot load model /models/m.bin") ? true : undefined));
    assert.deepEqual(engine.tail("control-0").filter((l) => l.startsWith("fatal")).length >= 1, true);
  } finally {
    await engine.stop();
  }
});

test("process engine: replicas inherit abgate's environment but not its admin or ingest token", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  writeFileSync(
    join(dir, "env.js"),
    `const e = process.env; console.log(JSON.stringify({ a: e.ABGATE_ADMIN_TOKEN, i: e.ABGATE_INGEST_TOKEN, s: e.MY_SECRET, k: e.KEEP_ME, m: e.MODEL })); setInterval(() => {}, 1000);`,
  );
  const added = { ABGATE_ADMIN_TOKEN: "admin-tok", ABGATE_INGEST_TOKEN: "ingest-tok", MY_SECRET: "s3cret-long-enough", KEEP_ME: "yes" };
  Object.assign(process.env, added);
  const config = parseConfig(
    `experiment: procs\nengine: process\nstore: sqlite:./a.db\nports: { base: 24640 }\nadmin: { token: s3cret-long-enough }\nvariants:\n  - { name: control, command: [node, env.js], env: { MODEL: m1 } }\n`,
    dir,
    {},
  );
  const engine = new ProcessEngine(config);
  try {
    await engine.start();
    const line = await until("the replica's env", () => engine.tail("control-0").find((l) => l.startsWith("{")));
    assert.deepEqual(JSON.parse(line), { k: "yes", m: "m1" }, "tokens by name and the admin token by value are not passed on");
  } finally {
    for (const k of Object.keys(added)) delete process.env[k];
    await engine.stop();
  }
});

test("process engine: the variables the tokens were read from are not inherited, whatever their name and length", () => {
  const added = { MY_ADMIN: "short-admin", MY_INGEST: "ing", OTHER_SHORT: "short-admin" };
  Object.assign(process.env, added);
  try {
    const config = parseConfig(`experiment: procs\nengine: process\nadmin: { token: \${MY_ADMIN}, ingestToken: "\${MY_INGEST}" }\nvariants:\n  - { name: control, command: [node, x.js], env: { token: \${OTHER_SHORT} } }\n`, "/tmp", process.env);
    assert.deepEqual(config.admin.tokenVariables.sort(), ["MY_ADMIN", "MY_INGEST"]);
    const env = inheritedEnv(config);
    assert.equal(env.MY_ADMIN, undefined);
    assert.equal(env.MY_INGEST, undefined);
    assert.equal(env.OTHER_SHORT, "short-admin", "a variable only an env key named token reads is not a token's");
    // The token written once under an x- anchor, and used through an alias, or through a merge key.
    for (const admin of ["x-tok: &tok ${MY_ADMIN}\nadmin: { token: *tok }\n", "x-adm: &adm { token: \"${MY_ADMIN}\" }\nadmin: { <<: *adm }\n"]) {
      const aliased = parseConfig(`experiment: procs\nengine: process\n${admin}variants:\n  - { name: control, command: [node, x.js] }\n`, "/tmp", process.env);
      assert.equal(aliased.admin.token, "short-admin", admin);
      assert.deepEqual(aliased.admin.tokenVariables, ["MY_ADMIN"], admin);
      assert.equal(inheritedEnv(aliased).MY_ADMIN, undefined, admin);
    }
  } finally {
    for (const k of Object.keys(added)) delete process.env[k];
  }
});

test("process engine: a short token is not looked for by value (token: \"1\" stripped CI=1 and the like)", () => {
  process.env.ABGATE_TEST_FLAG = "1";
  try {
    const config = parseConfig(`experiment: procs\nengine: process\nadmin: { token: "1" }\nvariants:\n  - { name: control, command: [node, x.js] }\n`, "/tmp", {});
    assert.equal(inheritedEnv(config).ABGATE_TEST_FLAG, "1");
  } finally {
    delete process.env.ABGATE_TEST_FLAG;
  }
});

test("process engine: a fixed port is claimed exactly; taken, the start fails naming the key instead of moving it", async () => {
  const { createServer } = await import("node:net");
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  // A variant without `port` listed first, from base upward, must leave the pinned variant's port alone.
  const variants = `  - { name: control, command: [sleep, "1000"] }\n  - { name: treatment, command: [sleep, "1000"], port: 24600 }\n`;
  const engine = new ProcessEngine(configFor(dir, variants));
  await engine.start();
  try {
    assert.deepEqual(engine.endpoints().map((e) => [e.id, e.port]), [["control-0", 24601], ["treatment-0", 24600]]);
  } finally {
    await engine.stop(100);
  }
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen({ host: "127.0.0.1", port: 24600 }, resolve));
  const blocked = new ProcessEngine(configFor(dir, variants));
  const progress: string[] = [];
  try {
    await assert.rejects(blocked.start((line) => progress.push(line)), {
      code: "ABGATE_ERR_PORT_TAKEN",
      message: "variants[1].port: replica treatment-0 needs port 24600, which is in use; free it, or leave port: out to let abgate choose",
    });
    assert.deepEqual(progress, [], "no replica was started (control, listed first, neither)");
  } finally {
    await blocked.stop(100);
    busy.close();
  }
});

test("process engine: a replica gets every variable, also names a shell would drop, and the variant's own", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  writeFileSync(join(dir, "env.js"), `require("node:fs").writeFileSync(__dirname + "/seen-" + process.env.PORT, JSON.stringify(process.env));`);
  const variants = `  - { name: control, command: [node, env.js], env: { spring.profiles.active: prod, my-var: x, PLAIN: p } }\n`;
  process.env["BASH_FUNC_module%%"] = "() {  echo module load cuda\n}";
  const engine = new ProcessEngine(configFor(dir, variants));
  try {
    await engine.start();
    const seen = await until("the replica's environment", () => {
      try {
        return JSON.parse(readFileSync(join(dir, "seen-24600"), "utf8")) as Record<string, string>;
      } catch {
        return undefined;
      }
    });
    assert.equal(seen["spring.profiles.active"], "prod");
    assert.equal(seen["my-var"], "x");
    assert.equal(seen.PLAIN, "p");
    assert.equal(seen["BASH_FUNC_module%%"], "() {  echo module load cuda\n}");
  } finally {
    delete process.env["BASH_FUNC_module%%"];
    await engine.stop(500);
  }
});

test("process engine: each exit is logged with how it ended and the replica's last lines; a replica killed at stop is named", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  const logged: { level: string; msg: string }[] = [];
  const engine = new ProcessEngine(
    configFor(dir, `  - { name: control, command: ${cmd("echo loading; echo 'fatal: no weights' >&2; exit 3")} }\n  - { name: treatment, command: ${cmd("trap '' TERM; echo up; sleep 1000 & wait; wait")} }\n`),
    { backoffMs: 60_000, log: (level, msg) => logged.push({ level, msg }) },
  );
  await engine.start();
  try {
    await until("the control's exit", () => (logged.some((l) => /control-0/.test(l.msg)) ? true : undefined));
    const exit = logged.find((l) => /control-0/.test(l.msg))!;
    assert.equal(exit.level, "warn");
    assert.match(exit.msg, /^replica control-0 exited with code 3 after \d+\.\d s; last output:\n(loading\nfatal: no weights|fatal: no weights\nloading)$/);
  } finally {
    await engine.stop(300);
  }
  assert.ok(
    logged.some((l) => l.level === "warn" && l.msg === "treatment-0 did not stop within 300 ms of SIGTERM: killing it (SIGKILL)"),
    JSON.stringify(logged),
  );
});

test("process engine: a restart whose port a daemon of the old run still holds waits, unlisted, and is warned about", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  const pidFile = join(dir, "daemon.pid");
  const logged: { level: string; msg: string }[] = [];
  // The replica starts a server in a session of its own (out of its process group), then exits.
  const daemon = `require('http').createServer((q, s) => s.end('stray')).listen(Number(process.env.PORT), () => require('fs').writeFileSync(${JSON.stringify(pidFile).replaceAll('"', "'")}, String(process.pid)))`;
  // Only the first run starts it, with no stdio of the replica's: a daemon started by a later run could still be
  // starting when the test kills the first, then listen and outlive the test, holding the engine's output pipe open
  // (a CI run's test file then never ended: all its tests passed, and it timed out after 300 s).
  const marker = join(dir, "started");
  const once = `[ -e ${marker} ] || { touch ${marker}; setsid node -e "${daemon}" </dev/null >/dev/null 2>&1 & }; sleep 0.5; exit 1`;
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: ${cmd(once)} }\n`), {
    backoffMs: 20,
    log: (level, msg) => logged.push({ level, msg }),
  });
  await engine.start();
  try {
    const warning = await until("the warning", () => logged.find((l) => /still in use after its process group ended/.test(l.msg)), 10_000);
    assert.equal(warning.level, "warn");
    assert.match(warning.msg, /^port \d+ of replica control-0 is still in use after its process group ended: a process it started outside its group \(a daemon, setsid\), or another program, holds it; the replica starts once the port is free/);
    // Not started, so not listed: its health checks would find the daemon and send it the replica's requests.
    for (let i = 0; i < 6; i++) {
      assert.deepEqual(engine.endpoints(), [], "no endpoint while another process holds the port");
      await new Promise((r) => setTimeout(r, 50));
    }
    // Tries that found the port held are not crashes: after five of them, the replica's next exit (its second) is
    // not called a crash loop.
    await until("five tries", () => (logged.filter((l) => /still in use after its process group ended/.test(l.msg)).length >= 5 ? true : undefined), 10_000);
    // Once the port is free, the replica starts again.
    process.kill(Number(readFileSync(pidFile, "utf8")), "SIGKILL");
    await until("the replica listed again", () => (engine.endpoints().length > 0 ? true : undefined), 10_000);
    const exits = () => logged.filter((l) => /^replica control-0 (exited|is crash-looping)/.test(l.msg));
    await until("its second exit", () => (exits().length >= 2 ? true : undefined), 10_000);
    assert.equal(exits()[1]!.level, "warn", exits()[1]!.msg);
    assert.match(exits()[1]!.msg, /^replica control-0 exited with code 1/);
  } finally {
    await engine.stop(300);
    // (the warning comes once the daemon listens, after it wrote its pid)
    await until("the daemon's pid", () => existsSync(pidFile) || undefined, 5_000).catch(() => undefined);
    try {
      process.kill(Number(readFileSync(pidFile, "utf8")), "SIGKILL");
    } catch {
      // (gone already)
    }
  }
});

test("process engine: a run that printed nothing is logged as such, not with an earlier run's lines", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  const marker = join(dir, "ran");
  const logged: string[] = [];
  // The first run prints and exits; the next ones exit silently.
  const script = `if [ -e ${marker} ]; then exit 4; fi; touch ${marker}; echo first-run-output; exit 3`;
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: ${cmd(script)} }\n`), { backoffMs: 20, log: (_level, msg) => logged.push(msg) });
  await engine.start();
  try {
    await until("two exits", () => (logged.filter((m) => /^replica control-0 exited/.test(m)).length >= 2 ? true : undefined), 10_000);
    // (what up's health timeout quotes: the last run's own words, here none)
    assert.match(engine.lastExit("control-0")!, /^exited with code 4 after \d+\.\d s$/);
  } finally {
    await engine.stop(300);
  }
  const exits = logged.filter((m) => /^replica control-0 exited/.test(m));
  assert.match(exits[0]!, /^replica control-0 exited with code 3 after \d+\.\d s; last output:\nfirst-run-output$/);
  assert.match(exits[1]!, /^replica control-0 exited with code 4 after \d+\.\d s \(no output\)$/);
});

test("process engine: a crash loop of runs that printed nothing says so, not an empty 'last output:'", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-proc-"));
  const logged: string[] = [];
  const engine = new ProcessEngine(configFor(dir, `  - { name: control, command: ${cmd("exit 5")} }\n`), { backoffMs: 10, log: (_level, msg) => logged.push(msg) });
  await engine.start();
  try {
    await until("the crash-loop line", () => logged.find((m) => /crash-looping/.test(m)), 10_000);
  } finally {
    await engine.stop(300);
  }
  assert.equal(logged.find((m) => /crash-looping/.test(m)), "replica control-0 is crash-looping (no output)");
});
