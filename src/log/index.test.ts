import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { test } from "node:test";

const LOG_MODULE = new URL("./index.ts", import.meta.url).href;

test("while stderr is not read, log lines past the buffer's cap are dropped and counted, and the count is logged once it is read", async () => {
  // A child process whose stderr this test does not read: a paused pipe, as a stuck log collector leaves it.
  const script = `
    import { createLogger, logLinesDropped, MAX_BUFFERED_LOG_BYTES } from ${JSON.stringify(LOG_MODULE)};
    const log = createLogger("info", {});
    globalThis.gc();
    const heapBefore = process.memoryUsage().heapUsed;
    const lines = 300000;
    for (let i = 0; i < lines; i++) log.warn({ requestId: "r-" + i, variant: "v0" }, "no healthy replica of variant v0 could take the request");
    globalThis.gc();
    const heapGrowth = process.memoryUsage().heapUsed - heapBefore;
    console.log(JSON.stringify({ lines, dropped: logLinesDropped(), heapGrowth, cap: MAX_BUFFERED_LOG_BYTES }));
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ["--expose-gc", "--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
  try {
    child.stderr.pause();
    const [out] = (await once(child.stdout, "data")) as [Buffer];
    const { lines, dropped, heapGrowth, cap } = JSON.parse(out.toString()) as Record<string, number>;
    // 300,000 lines of about 150 bytes are 45 MB: all but about the cap's worth are dropped, and the heap holds
    // no more than the cap (the unbounded buffer held them all).
    assert.ok(dropped > lines / 2, `${dropped} of ${lines} dropped`);
    assert.ok(heapGrowth < cap * 1.5, `the heap grew ${(heapGrowth / 2 ** 20).toFixed(1)} MiB`);
    // Reading again: what was buffered arrives, then, about a second after the first drop, a line with the count.
    let text = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (s: string) => (text += s));
    child.stderr.resume();
    const deadline = Date.now() + 10_000;
    while (!/log lines dropped/.test(text) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const notice = text
      .split("\n")
      .filter((l) => /log lines dropped/.test(l))
      .map((l) => JSON.parse(l) as { dropped: number; level: number });
    assert.equal(notice.length, 1, "one line with the count");
    assert.equal(notice[0]!.dropped, dropped);
    assert.equal(notice[0]!.level, 40);
    const delivered = text.split("\n").filter((l) => l.includes('"requestId"')).length;
    assert.equal(delivered + dropped, lines, "every line was written or counted");
  } finally {
    child.kill("SIGKILL");
  }
});
