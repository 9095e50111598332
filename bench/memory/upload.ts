/**
 * Streaming memory: send a 1 GiB request body through abgate to a backend that only counts the bytes, and
 * download 1 GiB through abgate from a backend that generates them; sample abgate's RSS (VmRSS) every 50 ms
 * during each transfer and report the growth over the baseline. Nothing is stored: the bodies are one 64 KiB
 * buffer written again and again, with backpressure honoured. Target (issue 2): RSS growth under 50 MB.
 *
 * Run through bench/memory/run.sh. Knobs: BENCH_TRANSFER_BYTES (default 1 GiB).
 */
import { createServer, request, type IncomingMessage, type Server } from "node:http";
import { abgateBin, freePort, mb, rssBytes, scratchDir, startAbgate } from "./harness.ts";

const TARGET_GROWTH_MB = 50;
const totalBytes = Number(process.env.BENCH_TRANSFER_BYTES ?? 1024 ** 3);
const TRANSFER_LIMIT_MS = 90_000;
const OVERALL_LIMIT_MS = 240_000;
const chunk = Buffer.alloc(64 * 1024, "abgate-bench-");

const overall = setTimeout(() => {
  console.error(`upload benchmark exceeded ${OVERALL_LIMIT_MS / 1000} s; stopping`);
  process.exit(1);
}, OVERALL_LIMIT_MS);
overall.unref();

/** Writes `bytes` bytes of `chunk` to `out`, waiting for 'drain' whenever the stream says it is full. */
async function pump(out: NodeJS.WritableStream, bytes: number): Promise<void> {
  let left = bytes;
  while (left > 0) {
    const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
    left -= piece.length;
    if (!out.write(piece)) await new Promise<void>((resolve) => out.once("drain", resolve));
  }
  out.end();
}

/** The backend: POST anything → counts and discards the body; GET /download → `totalBytes` generated; else "ok". */
async function backend(): Promise<{ server: Server; url: string; received: () => number }> {
  const port = await freePort();
  let received = 0;
  const server = createServer((req, res) => {
    if (req.method === "POST") {
      let bytes = 0;
      req.on("data", (c: Buffer) => {
        bytes += c.length;
        received += c.length;
      });
      req.on("end", () => res.end(JSON.stringify({ bytes })));
      return;
    }
    req.resume();
    if (req.url?.startsWith("/download")) {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(totalBytes) });
      void pump(res, totalBytes);
      return;
    }
    res.end("ok");
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${port}`, received: () => received };
}

/** Samples the RSS of `pid` every 50 ms until stopped; returns the largest sample. */
function sampler(pid: number): { stop: () => number } {
  let max = rssBytes(pid);
  const timer = setInterval(() => {
    try {
      max = Math.max(max, rssBytes(pid));
    } catch {
      // the process is gone; the caller notices through the transfer failing
    }
  }, 50);
  return {
    stop() {
      clearInterval(timer);
      return max;
    },
  };
}

interface Transfer {
  status: number;
  bytes: number;
  ms: number;
  error?: string;
}

function upload(port: number): Promise<Transfer> {
  const started = Date.now();
  return new Promise((resolve) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        method: "POST",
        path: "/upload",
        headers: { "x-user-id": "uploader", "content-type": "application/octet-stream", "content-length": String(totalBytes) },
        agent: false,
        timeout: TRANSFER_LIMIT_MS,
      },
      (res: IncomingMessage) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => {
          let bytes = -1;
          try {
            bytes = (JSON.parse(body) as { bytes: number }).bytes;
          } catch {
            // a non-JSON answer (an error page) leaves bytes at -1
          }
          resolve({ status: res.statusCode ?? 0, bytes, ms: Date.now() - started, error: res.statusCode === 200 ? undefined : body.slice(0, 200) });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`no answer within ${TRANSFER_LIMIT_MS / 1000} s`)));
    req.on("error", (error) => resolve({ status: 0, bytes: -1, ms: Date.now() - started, error: error.message }));
    void pump(req, totalBytes);
  });
}

function download(port: number): Promise<Transfer> {
  const started = Date.now();
  return new Promise((resolve) => {
    const req = request(
      { host: "127.0.0.1", port, method: "GET", path: "/download", headers: { "x-user-id": "downloader" }, agent: false, timeout: TRANSFER_LIMIT_MS },
      (res: IncomingMessage) => {
        let bytes = 0;
        res.on("data", (c: Buffer) => (bytes += c.length));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, bytes, ms: Date.now() - started }));
        res.on("error", (error) => resolve({ status: res.statusCode ?? 0, bytes, ms: Date.now() - started, error: error.message }));
      },
    );
    req.on("timeout", () => req.destroy(new Error(`not done within ${TRANSFER_LIMIT_MS / 1000} s`)));
    req.on("error", (error) => resolve({ status: 0, bytes: -1, ms: Date.now() - started, error: error.message }));
    req.end();
  });
}

async function main(): Promise<void> {
  const backends = [await backend(), await backend()];
  console.log(`abgate: ${abgateBin().note}`);
  const dir = scratchDir("abgate-bench-upload-");
  const abgate = await startAbgate({ dir, backends: backends.map((b) => b.url), name: "abgate-upload" });
  console.log(`upload/download: abgate pid ${abgate.pid} on :${abgate.port}, ${mb(totalBytes)} MB each way`);
  for (let i = 0; i < 100; i++) await fetch(`http://127.0.0.1:${abgate.port}/`, { headers: { "x-user-id": `warm-${i}` } }).then((r) => r.arrayBuffer());
  await new Promise((r) => setTimeout(r, 500));

  const rows: string[] = [];
  let pass = true;
  // One baseline for both transfers: memory the upload left behind counts against the download too.
  const baseline = rssBytes(abgate.pid);
  for (const [label, run] of [
    ["upload", upload],
    ["download", download],
  ] as const) {
    const sample = sampler(abgate.pid);
    const result = await run(abgate.port);
    const peak = sample.stop();
    const growth = peak - baseline;
    const complete = result.status === 200 && result.bytes === totalBytes;
    const ok = complete && growth < TARGET_GROWTH_MB * 1e6;
    pass &&= ok;
    const rate = result.bytes > 0 ? (result.bytes / 1e6 / (result.ms / 1000)).toFixed(0) : "-";
    rows.push(
      `${label.padEnd(9)} status ${String(result.status).padEnd(4)} ${mb(Math.max(0, result.bytes)).padStart(7)} MB in ${(result.ms / 1000).toFixed(1).padStart(5)} s (${rate} MB/s)  ` +
        `RSS baseline ${mb(baseline)} MB, peak ${mb(peak)} MB, growth ${mb(growth)} MB  ${ok ? "PASS" : "FAIL"}` +
        (result.error ? `\n          error: ${result.error}` : "") +
        (!complete && !result.error ? `\n          incomplete: ${result.bytes} of ${totalBytes} bytes` : ""),
    );
  }
  const received = backends.reduce((sum, b) => sum + b.received(), 0);
  await abgate.stop();
  for (const b of backends) b.server.close();
  console.log("");
  for (const row of rows) console.log(row);
  console.log(`backend received ${received} bytes of upload (expected ${totalBytes})`);
  console.log(`target    RSS growth < ${TARGET_GROWTH_MB} MB during a ${mb(totalBytes)} MB upload and download: ${pass ? "PASS" : "FAIL"}`);
}

await main();
process.exit(0);
