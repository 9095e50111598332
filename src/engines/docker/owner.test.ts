import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { test } from "node:test";
import { ownerLabel, ownerRunning } from "./client.ts";

test("owner labels: a live abgate on this host owns its replicas; a dead one, a reused pid, no label or another host's does not", async () => {
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
  await new Promise((r) => child.once("spawn", r));
  const stat = readFileSync(`/proc/${child.pid}/stat`, "utf8");
  const ticks = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  const label = `${hostname()}/${child.pid}/${ticks}`;
  try {
    assert.equal(ownerRunning(label), true);
    assert.equal(ownerRunning(`${hostname()}/${child.pid}/1`), false, "the pid now names another process (reused)");
    assert.equal(ownerRunning(undefined), false, "no label: an older abgate's leftovers");
    assert.equal(ownerRunning(`another-host.example/${child.pid}/${ticks}`), false, "cannot be checked from here: most often this machine under another name");
    assert.equal(ownerRunning(`${hostname()}/${child.pid}/?`), true, "no start time known: the pid alive");
    assert.equal(ownerRunning(ownerLabel()), false, "this process's own replicas are its to replace");
    assert.equal(ownerRunning(`${hostname()}/${child.pid}`), false, "a label cut short: not running, as before");
    assert.equal(ownerRunning(`${hostname()}/0${process.pid}/${ownerLabel().split("/")[2]}`), false, "this process's pid written otherwise");
    assert.match(ownerLabel(), new RegExp(`^${hostname().replace(/[.]/g, "\\.")}/${process.pid}/\\d+$`));
  } finally {
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
  }
  assert.equal(ownerRunning(label), false, "gone");
});
