import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, it } from "node:test";
import { collectOnMainThreadWhenOneCore } from "./gc-threads.ts";

interface Churned {
  what: string;
  /** CPU seconds of the process's threads other than the main one and the worker, from the choice on */
  helperCpuS: number;
  fullCollections: number;
  /** `typeof gc` in a context made after the choice */
  gcInNewContext: string;
}

/**
 * A child process that keeps a growing old generation of linked objects, drops it and builds it again, with
 * ArrayBuffers: the scavenges, full collections, sweeping and compaction a gateway's heap goes through. Halfway
 * through the first time (while that generation is being marked, as when a CLI has loaded its modules) it chooses
 * its collector threads as for `cores` cores, then starts a worker thread that allocates until the end (a store's
 * thread starts after the choice). It counts the CPU time the process's other threads (V8's helpers) used from the
 * choice on, from /proc/self/task (Linux), leaving out the worker's own thread, whose id it reports.
 */
function churn(cores: number, nodeFlags: string[] = [], env: Record<string, string> = {}): Churned {
  const script = [
    `import { readdirSync, readFileSync } from "node:fs";`,
    `import { PerformanceObserver, constants } from "node:perf_hooks";`,
    `import { setImmediate as turn } from "node:timers/promises";`,
    `import { runInNewContext } from "node:vm";`,
    `import { Worker } from "node:worker_threads";`,
    `import { collectOnMainThreadWhenOneCore } from ${JSON.stringify(new URL("./gc-threads.ts", import.meta.url).href)};`,
    `let fullCollections = 0;`,
    `new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) fullCollections++; }).observe({ entryTypes: ["gc"] });`,
    `const ticks = () => { const t = new Map(); for (const tid of readdirSync("/proc/self/task")) { const s = readFileSync("/proc/self/task/" + tid + "/stat", "utf8"); const f = s.slice(s.lastIndexOf(")") + 2).split(" "); t.set(tid, Number(f[11]) + Number(f[12])); } return t; };`,
    `let what = "not chosen";`,
    `let before = new Map();`,
    `let worker = null;`,
    `let workerTid = "";`,
    `for (let round = 0; round < 6; round++) {`,
    `  let head = null;`,
    `  const buffers = [];`,
    `  for (let i = 0; i < 600_000; i++) {`,
    `    head = { next: head, id: i, name: "unit-" + i, parts: [i, i + 1] };`,
    `    if (i % 5000 === 0) { buffers.push(new ArrayBuffer(64 * 1024)); await turn(); }`,
    `    if (round === 0 && i === 300_000) {`,
    `      what = collectOnMainThreadWhenOneCore(${cores});`,
    `      before = ticks();`,
    `      worker = new Worker("import { parentPort } from 'node:worker_threads'; import { readlinkSync } from 'node:fs'; parentPort.postMessage(readlinkSync('/proc/thread-self').split('/').pop()); let stop = false; parentPort.once('message', () => { stop = true; }); const k = []; const step = () => { k.length = 0; for (let i = 0; i < 20000; i++) k.push({ i, s: 'w' + i }); if (!stop) setImmediate(step); else parentPort.close(); }; step();", { eval: true });`,
    `      worker.once("message", (tid) => { workerTid = tid; });`,
    `    }`,
    `  }`,
    `  head = null; buffers.length = 0;`,
    `}`,
    `const after = ticks();`,
    `worker.postMessage("stop");`,
    `await new Promise((resolve) => worker.once("exit", resolve));`,
    `let helper = 0;`,
    `for (const [tid, t] of after) if (Number(tid) !== process.pid && tid !== workerTid && before.has(tid)) helper += (t - before.get(tid)) / 100;`,
    `console.log(JSON.stringify({ what, helperCpuS: helper, fullCollections, gcInNewContext: runInNewContext("typeof gc"), workerTid }));`,
  ].join("\n");
  const out = execFileSync(process.execPath, [...nodeFlags, "--import", "tsx", "--input-type=module", "-e", script], {
    encoding: "utf8",
    timeout: 120_000,
    env: { ...process.env, ...env },
  });
  const result = JSON.parse(out.trim().split("\n").pop()!) as Churned & { workerTid: string };
  assert.match(result.workerTid, /^\d+$/, "the worker said which thread it is");
  return result;
}

describe("collectOnMainThreadWhenOneCore", () => {
  it("changes nothing with more than one core, and keeps a user's own flags in any of V8's spellings", () => {
    // (none of these calls sets a flag: each returns before setFlagsFromString)
    assert.equal(collectOnMainThreadWhenOneCore(2, []), "parallel");
    assert.equal(collectOnMainThreadWhenOneCore(1, [], "parallel"), "parallel");
    for (const flag of ["--single-threaded-gc", "--no-concurrent-marking", "--no_concurrent_marking", "--noconcurrent_marking", "--concurrent-sweeping", "--parallel-scavenge=true"]) {
      assert.equal(collectOnMainThreadWhenOneCore(1, ["--inspect", flag]), "user-set", flag);
    }
    // Other flags, and flags of the same stem that tune rather than choose threads, are no choice.
    assert.equal(collectOnMainThreadWhenOneCore(2, ["--max-semi-space-size=16", "--expose-gc", "--parallel-scavenge-task-trigger=80"]), "parallel");
  });

  it("on one core, full collections run (and the process lives) with the collector's work on the main thread", () => {
    const one = churn(1);
    const many = churn(2);
    assert.equal(one.what, "main-thread");
    assert.equal(many.what, "parallel");
    assert.ok(one.fullCollections > 0 && many.fullCollections > 0, JSON.stringify({ one, many }));
    // The helpers still compile optimized code: what is left is far less than the collector's share with helpers.
    assert.ok(one.helperCpuS < many.helperCpuS / 2, JSON.stringify({ one, many }));
    // (the full collection it runs first needs V8's gc(), whose flag it sets back: later contexts get no gc global)
    assert.equal(one.gcInNewContext, "undefined");
  });

  it("a user's own choice stands: V8's single-threaded collector from the command line, or ABGATE_GC_THREADS=parallel", () => {
    const flagged = churn(1, ["--single-threaded-gc"]);
    assert.equal(flagged.what, "user-set");
    assert.ok(flagged.fullCollections > 0, JSON.stringify(flagged));
    const kept = churn(1, [], { ABGATE_GC_THREADS: "parallel" });
    assert.equal(kept.what, "parallel");
  });
});
