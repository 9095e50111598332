/**
 * Memory under connection churn: clients that open a connection, send one request and close it (no keep-alive),
 * round after round. What such traffic leaves behind per connection would show here and nowhere else: the other
 * benchmarks keep their connections open. Rounds of BENCH_CHURN_REQUESTS (default 20,000) requests, 50 at a time;
 * abgate's RSS after each, with exposure logging off. Check: RSS growth from the end of the first round to the end of
 * the last, per connection, under 0.5 KB (V8's heap grows and shrinks by several MB on its own, so a smaller leak
 * needs more rounds to see). Not a target of the issue; it guards against a leak a soak run found (each
 * connection's HTTP parser, about 2.5 KB).
 *
 * Run through bench/memory/run.sh.
 */
import { connect } from "node:net";
import { abgateBin, mb, okBackend, rssBytes, scratchDir, startAbgate } from "./harness.ts";

const requestsPerRound = Number(process.env.BENCH_CHURN_REQUESTS ?? 20_000);
const ROUNDS = Number(process.env.BENCH_CHURN_ROUNDS ?? 4);
const CONCURRENCY = 50;
/** RSS growth per connection from the first round's end to the last's that passes (the parser leak was 2.5 KB) */
const ALLOWED_KB_PER_CONNECTION = 0.5;
const OVERALL_LIMIT_MS = 180_000;

const overall = setTimeout(() => {
  console.error(`churn benchmark exceeded ${OVERALL_LIMIT_MS / 1000} s; stopping`);
  process.exit(1);
}, OVERALL_LIMIT_MS);
overall.unref();

/** One request on a new connection that abgate closes after answering; resolves with the status (0 on error). */
function oneShot(port: number, unit: string): Promise<number> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    let got = "";
    socket.setTimeout(10_000, () => socket.destroy());
    socket.on("data", (c: Buffer) => (got += c.toString("latin1")));
    socket.on("error", () => {});
    socket.on("close", () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(got)?.[1] ?? 0)));
    socket.write(`GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nx-user-id: ${unit}\r\n\r\n`);
  });
}

async function round(port: number, tag: string, count: number): Promise<{ ok: number; ms: number }> {
  let next = 0;
  let ok = 0;
  const started = Date.now();
  const worker = async () => {
    while (next < count) {
      const i = next++;
      if ((await oneShot(port, `${tag}-${i % 5000}`)) === 200) ok++;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return { ok, ms: Date.now() - started };
}

async function main(): Promise<void> {
  const backends = [await okBackend(), await okBackend()];
  console.log(`abgate: ${abgateBin().note}`);
  // Exposure logging off: the store's page cache (up to 32 MiB) fills as its file grows, which would hide what the
  // connections leave behind.
  const abgate = await startAbgate({ dir: scratchDir("abgate-bench-churn-"), backends: backends.map((b) => b.url), name: "abgate-churn", exposures: false });
  console.log(`churn: abgate pid ${abgate.pid} on :${abgate.port}; ${ROUNDS} rounds of ${requestsPerRound} requests, each on its own connection, ${CONCURRENCY} at a time`);
  await round(abgate.port, "warm", 2_000);
  const rss: number[] = [];
  let failed = 0;
  for (let r = 1; r <= ROUNDS; r++) {
    const { ok, ms } = await round(abgate.port, `r${r}`, requestsPerRound);
    failed += requestsPerRound - ok;
    await new Promise((resolve) => setTimeout(resolve, 500));
    rss.push(rssBytes(abgate.pid));
    console.log(`  round ${r}: ${ok}/${requestsPerRound} answered 200 in ${(ms / 1000).toFixed(1)} s, abgate RSS ${mb(rss.at(-1)!)} MB`);
  }
  await abgate.stop();
  for (const b of backends) b.server.close();
  const growthBytes = rss.at(-1)! - rss[0]!;
  const perConnectionKb = growthBytes / 1024 / (requestsPerRound * (ROUNDS - 1));
  const pass = perConnectionKb < ALLOWED_KB_PER_CONNECTION && failed === 0;
  console.log(
    `check     RSS growth from round 1 to round ${ROUNDS}: ${(growthBytes / 1e6).toFixed(1)} MB, ${perConnectionKb.toFixed(2)} KiB per connection ` +
      `(< ${ALLOWED_KB_PER_CONNECTION}), every request answered 200: ${pass ? "PASS" : "FAIL"}`,
  );
}

await main();
process.exit(0);
