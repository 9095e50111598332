import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { alive, until } from "../../../test/helpers/processes.ts";
import { MAX_REAPER_RESTARTS, ProcessReaper, REGISTER_AND_EXEC } from "./reaper.ts";

/** A process group of its own: a shell leader and a sleeping child, as `sh -c "server & wait"` makes. */
function group(ignoreTerm = false): { leader: ChildProcess; pids: () => number[] } {
  const trap = ignoreTerm ? "trap '' TERM; " : "";
  // The child inherits an ignored TERM from the shell; `exec` keeps no wrapper in between.
  const leader = spawn("/bin/sh", ["-c", `${trap}sleep 600 & echo $!; wait`], { detached: true, stdio: ["ignore", "pipe", "ignore"] });
  let childPid = 0;
  leader.stdout!.on("data", (b: Buffer) => (childPid = Number(String(b).trim())));
  return { leader, pids: () => [leader.pid!, childPid] };
}

/** Whether `pid` ignores SIGTERM (bit 15 of SigIgn in /proc/PID/status). */
function ignoresTerm(pid: number): boolean {
  const mask = /SigIgn:\s*([0-9a-f]+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]!;
  return (BigInt(`0x${mask}`) & (1n << 14n)) !== 0n;
}

const started = (g: ReturnType<typeof group>) => until("the group's child", () => (g.pids()[1]! > 0 ? true : undefined));

test("the reaper signals the groups still listed when its pipe closes, and leaves removed ones alone", async () => {
  const reaper = new ProcessReaper(() => {}, 3000);
  const listed = group();
  const removed = group();
  await started(listed);
  await started(removed);
  reaper.add(listed.leader.pid!);
  reaper.add(removed.leader.pid!);
  reaper.remove(removed.leader.pid!);
  const reaperPid = reaper.pid!;
  assert.ok(alive(reaperPid));
  reaper.close();
  await until("the listed group's end", () => (listed.pids().every((p) => !alive(p)) ? true : undefined), 5000);
  await until("the reaper's exit", () => (alive(reaperPid) ? undefined : true), 5000);
  assert.ok(removed.pids().every(alive), "a removed group is not signalled");
  process.kill(-removed.leader.pid!, "SIGKILL");
});

test("the reaper kills a group that ignores SIGTERM once its grace has passed", async () => {
  const reaper = new ProcessReaper(() => {}, 300);
  const stubborn = group(true);
  await started(stubborn);
  reaper.add(stubborn.leader.pid!);
  const closedAt = Date.now();
  reaper.close();
  await new Promise((r) => setTimeout(r, 150));
  assert.ok(stubborn.pids().every(alive), "SIGTERM is ignored");
  await until("the group's end after SIGKILL", () => (stubborn.pids().every((p) => !alive(p)) ? true : undefined), 5000);
  assert.ok(Date.now() - closedAt >= 300, "not before the grace period");
});

test("a clean close with nothing listed ends the reaper at once, and the reaper ignores the terminal's Ctrl-C", async () => {
  const reaper = new ProcessReaper(() => {}, 3000);
  const g = group();
  await started(g);
  reaper.add(g.leader.pid!);
  const reaperPid = reaper.pid!;
  // (signals sent before the shell has run its first line would find it still unprotected)
  await until("the reaper's trap", () => (ignoresTerm(reaperPid) ? true : undefined), 2000);
  process.kill(reaperPid, "SIGINT");
  process.kill(reaperPid, "SIGTERM");
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(alive(reaperPid), "SIGINT and SIGTERM are abgate's to handle");
  reaper.remove(g.leader.pid!);
  reaper.close();
  await until("the reaper's exit", () => (alive(reaperPid) ? undefined : true), 2000);
  assert.ok(g.pids().every(alive));
  process.kill(-g.leader.pid!, "SIGKILL");
});

test("a replica started through REGISTER_AND_EXEC is on the list before its command runs, without add()", async () => {
  const reaper = new ProcessReaper(() => {}, 3000);
  const pipe = reaper.pipe()!;
  const reaperPid = reaper.pid!;
  // Once the command runs (exec keeps the pid), fd 3 (the pipe) must be closed, or the reaper would never see its end.
  // (Read from outside: a shell listing its own fds shows those of its pipelines too.)
  const child = spawn("/bin/sh", ["-c", REGISTER_AND_EXEC, "abgate-replica", "sleep", "600"], { detached: true, stdio: ["ignore", "pipe", "ignore", pipe] });
  const command = () => readFileSync(`/proc/${child.pid}/cmdline`, "utf8").split("\0")[0];
  await until("the command's start", () => (command() === "sleep" ? true : undefined));
  // By what each fd is, not by its number: CI once saw an fd 3 in the command, and by its number alone there is no
  // telling whether it was the reaper's or one the command opened as it started (sleep reads its locale files).
  // (abgate's end of it, which the replica's fd 3 is a copy of: Node's "pipe" is a socket pair, whose ends differ)
  const reaperPipe = readlinkSync(`/proc/self/fd/${(pipe as unknown as { _handle: { fd: number } })._handle.fd}`);
  const targets = readdirSync(`/proc/${child.pid}/fd`).map((fd) => {
    try {
      return `${fd} -> ${readlinkSync(`/proc/${child.pid}/fd/${fd}`)}`;
    } catch {
      return `${fd} (closed meanwhile)`;
    }
  });
  assert.ok(targets.some((t) => t.startsWith("1 ")), `its stdout: ${targets.join(", ")}`);
  assert.ok(!targets.some((t) => t.endsWith(` -> ${reaperPipe}`)), `the command holds no pipe to the reaper, ${reaperPipe} (its fds: ${targets.join(", ")})`);
  reaper.close();
  await until("the self-registered replica's end", () => (alive(child.pid!) ? undefined : true), 5000);
  await until("the reaper's exit", () => (alive(reaperPid) ? undefined : true), 5000);
});

test("with the reaper gone, a replica still starts, and its command gets the default SIGPIPE", async () => {
  const reaper = new ProcessReaper(() => {}, 3000);
  const pipe = reaper.pipe()!;
  const reaperPid = reaper.pid!;
  process.kill(reaperPid, "SIGKILL");
  // Waited for without yielding to the event loop, so that the replica starts before Node has seen the exit, as when
  // the reaper dies unnoticed: once the exit is seen, the pipe is closed (and pipe() gives none, for a plain start).
  const deadline = Date.now() + 10_000;
  while (alive(reaperPid)) {
    assert.ok(Date.now() < deadline, "the reaper did not die");
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  }
  // SigIgn bit 13 (SIGPIPE): 0 for the command, whatever the wrapper did for its own write
  const child = spawn("/bin/sh", ["-c", REGISTER_AND_EXEC, "abgate-replica", "sh", "-c", "grep SigIgn /proc/$$/status"], { stdio: ["ignore", "pipe", "ignore", pipe] });
  let out = "";
  child.stdout!.on("data", (b: Buffer) => (out += b));
  const code = await new Promise((resolve) => child.on("close", resolve));
  assert.equal(code, 0);
  const mask = BigInt(`0x${/SigIgn:\s*([0-9a-f]+)/.exec(out)![1]}`);
  assert.equal(mask & (1n << 12n), 0n, out);
});

test("the reaper's list: added twice counts once, removed is removed, thousands stay fast, junk lines are ignored", async () => {
  const reaper = new ProcessReaper(() => {}, 3000);
  const g = group();
  await started(g);
  const reaperPid = reaper.pid ?? (reaper.pipe(), reaper.pid!);
  for (let i = 0; i < 3000; i++) reaper.add(4_000_000 + i); // beyond pid_max: nothing to signal
  reaper.add(g.leader.pid!);
  reaper.add(g.leader.pid!);
  reaper.pipe()!.write("junk\n+\n-x1\n+1 2\n");
  for (let i = 0; i < 3000; i++) reaper.remove(4_000_000 + i);
  reaper.remove(g.leader.pid!);
  const t0 = Date.now();
  reaper.close();
  await until("the reaper's exit", () => (alive(reaperPid) ? undefined : true), 5000);
  assert.ok(Date.now() - t0 < 3000, `${Date.now() - t0} ms to read 6,000 lines`);
  assert.ok(g.pids().every(alive), "removed once, though added twice");
  process.kill(-g.leader.pid!, "SIGKILL");
});

test("a reaper killed on its own is replaced, with its list, a few times; then abgate says it gave up", async () => {
  const logged: string[] = [];
  const reaper = new ProcessReaper((msg) => logged.push(msg), 3000);
  const listed = group();
  await started(listed);
  reaper.add(listed.leader.pid!);
  const first = reaper.pid!;
  process.kill(first, "SIGKILL");
  const second = await until("a new reaper", () => (reaper.pid !== undefined && reaper.pid !== first ? reaper.pid : undefined), 5000);
  assert.match(logged[0]!, /^the process reaper exited \(SIGKILL\); another took over its list of 1 replica group$/);
  // The new reaper has the list: closing its pipe ends the group.
  reaper.close();
  await until("the listed group's end", () => (listed.pids().every((p) => !alive(p)) ? true : undefined), 5000);
  await until("the second reaper's exit", () => (alive(second) ? undefined : true), 5000);

  const doomed = new ProcessReaper((msg) => logged.push(msg), 3000);
  doomed.add(999_999_999);
  for (let i = 0; i <= MAX_REAPER_RESTARTS; i++) {
    const pid = await until("a reaper", () => doomed.pid, 5000);
    process.kill(pid, "SIGKILL");
    await until("its replacement or the end", () => (doomed.pid !== pid ? true : undefined), 5000);
  }
  assert.equal(doomed.pid, undefined);
  assert.match(logged.at(-1)!, new RegExp(`^the process reaper failed \\(it exited \\(SIGKILL\\), ${MAX_REAPER_RESTARTS} times\\): replicas will outlive abgate`));
});
