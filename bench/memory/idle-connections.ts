/**
 * Memory with many idle clients: open 5,000 keep-alive connections to abgate, each sends one request and
 * then stays open and silent; report abgate's resident memory (VmRSS from /proc/<pid>/status) before and
 * with them. Target (issue 2): under 150 MB RSS with 5,000 idle connections.
 *
 * Run through bench/memory/run.sh (it raises the fd limit). Knobs: BENCH_IDLE_CONNECTIONS (default 5000).
 */
import { connect, type Socket } from "node:net";
import { abgateBin, mb, okBackend, rssBytes, scratchDir, startAbgate } from "./harness.ts";

const TARGET_MB = 150;
const connectionCount = Number(process.env.BENCH_IDLE_CONNECTIONS ?? 5000);
const CONCURRENT_OPENS = 200;
const OVERALL_LIMIT_MS = 120_000;

const overall = setTimeout(() => {
  console.error(`idle-connections benchmark exceeded ${OVERALL_LIMIT_MS / 1000} s; stopping`);
  process.exit(1);
}, OVERALL_LIMIT_MS);
overall.unref();

/**
 * Opens one connection, sends one keep-alive request and resolves with the socket once the whole response
 * has arrived (by content-length or the last chunk), leaving the connection open and idle.
 */
function openIdle(port: number, unit: string): Promise<{ socket: Socket; status: number }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    let buffered = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("no complete response within 15 s"));
    }, 15_000);
    socket.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.on("data", function onData(chunk: Buffer) {
      buffered = Buffer.concat([buffered, chunk]);
      const headerEnd = buffered.indexOf("\r\n\r\n");
      if (headerEnd < 0) return;
      const head = buffered.subarray(0, headerEnd).toString("latin1");
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0);
      const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      const body = buffered.subarray(headerEnd + 4);
      const complete = length ? body.length >= Number(length[1]) : body.includes("0\r\n\r\n");
      if (!complete) return;
      clearTimeout(timer);
      socket.off("data", onData);
      // From here on the socket only has to stay open; any later data or close is counted by the caller.
      resolve({ socket, status });
    });
    socket.write(`GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\nx-user-id: ${unit}\r\n\r\n`);
  });
}

async function main(): Promise<void> {
  const backends = [await okBackend(), await okBackend()];
  console.log(`abgate: ${abgateBin().note}`);
  const dir = scratchDir("abgate-bench-idle-");
  const abgate = await startAbgate({ dir, backends: backends.map((b) => b.url), name: "abgate-idle" });
  console.log(`idle-connections: abgate pid ${abgate.pid} on :${abgate.port}, ${connectionCount} connections`);

  // Warm up the proxy path (JIT, pools) so the baseline is the process as it serves, not as it boots.
  for (let i = 0; i < 200; i++) await fetch(`http://127.0.0.1:${abgate.port}/`, { headers: { "x-user-id": `warm-${i}` } }).then((r) => r.arrayBuffer());
  await new Promise((r) => setTimeout(r, 500));
  const baseline = rssBytes(abgate.pid);

  const sockets: Socket[] = [];
  let closedEarly = 0;
  let failures = 0;
  const statuses = new Map<number, number>();
  let next = 0;
  const openStart = Date.now();
  async function opener(): Promise<void> {
    while (next < connectionCount) {
      const i = next++;
      try {
        const { socket, status } = await openIdle(abgate.port, `idle-user-${i}`);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        socket.once("close", () => closedEarly++);
        sockets.push(socket);
      } catch (error) {
        failures++;
        if (failures <= 3) console.log(`  connection ${i} failed: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENT_OPENS }, opener));
  const openMs = Date.now() - openStart;

  // Let the connections sit idle, then take the largest of several samples.
  let withIdle = 0;
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 300));
    withIdle = Math.max(withIdle, rssBytes(abgate.pid));
  }
  const peak = rssBytes(abgate.pid, "VmHWM");
  const stillOpen = sockets.length - closedEarly;
  for (const socket of sockets) socket.destroy();
  await abgate.stop();
  for (const b of backends) b.server.close();

  const perConnectionKb = (withIdle - baseline) / 1024 / Math.max(1, stillOpen);
  const statusText = [...statuses].map(([s, n]) => `${n} x ${s}`).join(", ");
  console.log("");
  console.log(`opened            ${sockets.length}/${connectionCount} in ${(openMs / 1000).toFixed(1)} s (responses: ${statusText || "none"}; failed: ${failures})`);
  console.log(`still open        ${stillOpen} after ~3 s idle`);
  console.log(`abgate RSS        baseline ${mb(baseline)} MB, with idle connections ${mb(withIdle)} MB (peak ever ${mb(peak)} MB)`);
  console.log(`per connection    ${perConnectionKb.toFixed(1)} KiB`);
  const pass = withIdle < TARGET_MB * 1e6 && stillOpen === connectionCount && (statuses.get(200) ?? 0) === connectionCount;
  console.log(`target            RSS < ${TARGET_MB} MB with ${connectionCount} idle connections, all answered 200 and kept open: ${pass ? "PASS" : "FAIL"}`);
}

await main();
process.exit(0);
