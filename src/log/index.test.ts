import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { test } from "node:test";

const LOG_MODULE = new URL("./index.ts", import.meta.url).href;

test("while stderr is not read, log lines past the buffer's cap are dropped and counted, and every drop is in a notice once it is read", async () => {
  // A child process whose stderr this test does not read for 2 s: a paused pipe, as a stuck log collector leaves
  // it. A burst fills the buffer, then lines keep coming, so that the first notices are dropped too.
  const script = `
    import { createLogger, logLinesDropped, MAX_BUFFERED_LOG_BYTES } from ${JSON.stringify(LOG_MODULE)};
    const log = createLogger("info", {});
    globalThis.gc();
    const heapBefore = process.memoryUsage().heapUsed;
    let lines = 0;
    const line = () => log.warn({ requestId: "r-" + lines++, variant: "v0" }, "no healthy replica of variant v0 could take the request");
    for (let i = 0; i < 300000; i++) line();
    globalThis.gc();
    const heapGrowth = process.memoryUsage().heapUsed - heapBefore;
    const trickle = setInterval(() => { for (let i = 0; i < 50; i++) line(); }, 5);
    setTimeout(() => clearInterval(trickle), 3000);
    setTimeout(() => console.log(JSON.stringify({ lines, dropped: logLinesDropped(), heapGrowth, cap: MAX_BUFFERED_LOG_BYTES })), 3100);
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ["--expose-gc", "--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
  try {
    child.stderr.pause();
    const result = once(child.stdout, "data") as Promise<[Buffer]>;
    await new Promise((r) => setTimeout(r, 2000));
    let text = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (s: string) => (text += s));
    child.stderr.resume();
    const [out] = await result;
    const { lines, dropped, heapGrowth, cap } = JSON.parse(out.toString()) as Record<string, number>;
    // 300,000 lines of about 150 bytes are 45 MB: all but about the cap's worth are dropped, and the heap holds
    // no more than the cap (the unbounded buffer held them all).
    assert.ok(dropped > 150_000, `${dropped} of ${lines} dropped`);
    assert.ok(heapGrowth < cap * 1.5, `the heap grew ${(heapGrowth / 2 ** 20).toFixed(1)} MiB`);
    const notices = () =>
      text
        .split("\n")
        .filter((l) => /log lines dropped/.test(l))
        .map((l) => JSON.parse(l) as { dropped: number; level: number });
    const deadline = Date.now() + 10_000;
    while (notices().reduce((n, x) => n + x.dropped, 0) < dropped && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(notices().reduce((n, x) => n + x.dropped, 0), dropped, "every dropped line is counted in a notice, once");
    assert.ok(notices().every((x) => x.level === 40));
    const delivered = text.split("\n").filter((l) => l.includes('"requestId"')).length;
    assert.equal(delivered + dropped, lines, "every line was written or counted");
  } finally {
    child.kill("SIGKILL");
  }
});
