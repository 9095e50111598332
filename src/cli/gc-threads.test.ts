import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, it } from "node:test";
import { collectOnMainThreadWhenOneCore } from "./gc-threads.ts";

/**
 * A child process that keeps a growing old generation of linked objects, drops it and builds it again (choosing its
 * collector threads as for `cores` cores halfway through the first time), with ArrayBuffers and a worker thread
 * allocating beside it: the scavenges, full collections, sweeping and compaction a gateway's heap goes through. It prints what it chose and
 * the CPU seconds the other threads of the process used from then on (Linux: /proc/self/task).
 */
function churn(cores: number, nodeFlags: string[] = []): { what: string; helperCpuS: number; mainCpuS: number; fullCollections: number; gcInNewContext: string } {
  const script = [
    `import { readdirSync, readFileSync } from "node:fs";`,
    `import { PerformanceObserver, constants } from "node:perf_hooks";`,
    `import { setImmediate as turn } from "node:timers/promises";`,
    `import { runInNewContext } from "node:vm";`,
    `import { Worker } from "node:worker_threads";`,
    `import { collectOnMainThreadWhenOneCore } from ${JSON.stringify(new URL("./gc-threads.ts", import.meta.url).href)};`,
    // (chosen in the middle of the first round, when the old generation is being marked, as at a CLI's start)
    `let what = "not yet";`,
    `let fullCollections = 0;`,
    `new PerformanceObserver((l) => { for (const e of l.getEntries()) if (e.detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) fullCollections++; }).observe({ entryTypes: ["gc"] });`,
    `const ticks = () => { const t = new Map(); for (const tid of readdirSync("/proc/self/task")) { const s = readFileSync("/proc/self/task/" + tid + "/stat", "utf8"); const f = s.slice(s.lastIndexOf(")") + 2).split(" "); t.set(tid, Number(f[11]) + Number(f[12])); } return t; };`,
    `let before = ticks();`,
    `const worker = new Worker("const k = []; for (let r = 0; r < 40; r++) { k.length = 0; for (let i = 0; i < 20000; i++) k.push({ i, s: 'w' + i }); }", { eval: true });`,
    `const exited = new Promise((resolve) => worker.once("exit", resolve));`,
    `for (let round = 0; round < 6; round++) {`,
    `  let head = null;`,
    `  const buffers = [];`,
    `  for (let i = 0; i < 600_000; i++) {`,
    `    head = { next: head, id: i, name: "unit-" + i, parts: [i, i + 1] };`,
    `    if (i % 5000 === 0) { buffers.push(new ArrayBuffer(64 * 1024)); await turn(); }`,
    `    if (round === 0 && i === 300_000) { what = collectOnMainThreadWhenOneCore(${cores}); before = ticks(); }`,
    `  }`,
    `  head = null; buffers.length = 0;`,
    `}`,
    `await exited;`,
    `const after = ticks();`,
    `const hz = 100;`,
    `let helper = 0; let main = 0;`,
    `for (const [tid, t] of after) { const d = (t - (before.get(tid) ?? 0)) / hz; if (Number(tid) === process.pid) main += d; else helper += d; }`,
    `console.log(JSON.stringify({ what, helperCpuS: helper, mainCpuS: main, fullCollections, gcInNewContext: runInNewContext("typeof gc") }));`,
  ].join("\n");
  const out = execFileSync(process.execPath, [...nodeFlags, "--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8", timeout: 120_000 });
  return JSON.parse(out.trim().split("\n").pop()!);
}

describe("collectOnMainThreadWhenOneCore", () => {
  it("changes nothing with more than one core, and keeps a user's own flags", () => {
    // (these calls set no flag: they return before setFlagsFromString)
    assert.equal(collectOnMainThreadWhenOneCore(2, ""), "parallel");
    assert.equal(collectOnMainThreadWhenOneCore(1, "--single-threaded-gc"), "user-set");
    assert.equal(collectOnMainThreadWhenOneCore(1, "--inspect --no-concurrent-marking"), "user-set");
    assert.equal(collectOnMainThreadWhenOneCore(1, "--concurrent_sweeping"), "user-set");
    // (other flags are no choice of collector threads)
    assert.equal(collectOnMainThreadWhenOneCore(2, "--max-semi-space-size=16 --expose-gc"), "parallel");
  });

  it("on one core, full collections run (and the process lives) with the collector's work on the main thread", () => {
    const one = churn(1);
    const many = churn(2);
    assert.equal(one.what, "main-thread");
    assert.equal(many.what, "parallel");
    assert.ok(one.fullCollections > 0 && many.fullCollections > 0, JSON.stringify({ one, many }));
    // (the full collection it runs first needs V8's gc(), whose flag it sets back: later contexts get no gc global)
    assert.equal(one.gcInNewContext, "undefined");
    // The helpers still compile optimized code, and the worker thread is one of them: what is left is far less
    // than the collector's own share with helpers.
    assert.ok(one.helperCpuS < many.helperCpuS / 2, JSON.stringify({ one, many }));
  });

  it("a user's own flag stands (here V8's single-threaded collector, from the command line)", () => {
    const r = churn(1, ["--single-threaded-gc"]);
    assert.equal(r.what, "user-set");
    assert.ok(r.fullCollections > 0, JSON.stringify(r));
  });
});
