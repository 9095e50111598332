import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { alive, until } from "../../../test/helpers/processes.ts";
import { ProcessReaper } from "./reaper.ts";

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
