/**
 * Proxying while events pour in: abgate's proxied requests per second with and without clients that post outcome
 * events as fast as abgate takes them, with the SQLite store's writes on the proxy's thread
 * (ABGATE_SQLITE_WRITER=inline) and on a thread of their own (thread). Everything shares the machine's two cores,
 * as an app server beside the gateway would: abgate is not pinned.
 *
 *   node --import tsx bench/proxy/ingest.ts [--seconds 5] [--posters 4] [--batch 200] [--rounds 2]
 *
 * Per round and mode: `wrk -t1 -c32` on / for `seconds` alone, then again while `posters` autocannon clients (one
 * connection each) POST batches of `batch` events to /v1/events. Printed: req/s alone and with the posters, their
 * ratio, and events stored per second. One abgate per mode, started once; the modes take turns within a round.
 */
import { spawn } from "node:child_process";
import { parseArgs } from "node:util";
import { abgateBin, okBackend, scratchDir, startAbgate, type AbgateHandle } from "../memory/harness.ts";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "5" },
    posters: { type: "string", default: "4" },
    batch: { type: "string", default: "200" },
    rounds: { type: "string", default: "2" },
  },
});
const seconds = Number(values.seconds);
const posters = Number(values.posters);
const batch = Number(values.batch);
const rounds = Number(values.rounds);

function wrk(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn("wrk", ["-t1", "-c32", `-d${seconds}s`, "-H", "x-user-id: bench-user", `http://127.0.0.1:${port}/`], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.on("error", reject);
    child.on("close", () => {
      const m = /Requests\/sec:\s+([\d.]+)/.exec(out);
      if (m === null) reject(new Error(`no Requests/sec in wrk's output:\n${out}`));
      else resolve(Number(m[1]));
    });
  });
}

const body = JSON.stringify(Array.from({ length: batch }, (_, i) => ({ unit: `u${i}`, event: "watched" })));

/** The posters: autocannon's CLI in a process of its own (so its work is not the harness's). */
function post(gw: AbgateHandle): Promise<{ events: number; errors: number; failed: string }> {
  return new Promise((resolve, reject) => {
    const args = ["-c", String(posters), "-d", String(seconds), "-m", "POST", "-H", "authorization=Bearer bench-token", "-H", "content-type=application/json", "-b", body, "--json", `http://127.0.0.1:${gw.adminPort}/v1/events`];
    const child = spawn("node_modules/.bin/autocannon", args, { stdio: ["ignore", "pipe", "ignore"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.on("error", reject);
    child.on("close", () => {
      try {
        const r = JSON.parse(out) as Record<string, number> & { statusCodeStats?: Record<string, { count: number }> };
        const failed = Object.entries(r.statusCodeStats ?? {})
          .filter(([code]) => !code.startsWith("2"))
          .map(([code, { count }]) => `${count} x ${code}`);
        if (r.errors! + r.timeouts! > 0) failed.push(`${r.errors} errors, ${r.timeouts} timeouts`);
        resolve({ events: r["2xx"]! * batch, errors: r.non2xx! + r.errors! + r.timeouts!, failed: failed.join(", ") || "none" });
      } catch (err) {
        reject(new Error(`autocannon's output is not JSON: ${out.slice(0, 200)}`, { cause: err }));
      }
    });
  });
}

const backends = await Promise.all([okBackend(), okBackend()]);
console.log(`abgate: ${abgateBin().note}`);
const gateways: Record<string, AbgateHandle> = {};
for (const mode of ["inline", "thread"] as const) {
  process.env.ABGATE_SQLITE_WRITER = mode;
  gateways[mode] = await startAbgate({
    dir: scratchDir(`abgate-bench-ingest-${mode}-`),
    backends: backends.map((b) => b.url),
    name: mode,
    extraYaml: "metrics:\n  - name: watched\n    kind: conversion\n    event: watched\n",
  });
}

const rows: { round: number; mode: string; alone: number; withPosters: number; eventsPerS: number; errors: number }[] = [];
try {
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? ["inline", "thread"] : ["thread", "inline"];
    for (const mode of order) {
      const gw = gateways[mode]!;
      const alone = await wrk(gw.port);
      const [withPosters, posted] = await Promise.all([wrk(gw.port), post(gw)]);
      rows.push({ round, mode, alone, withPosters, eventsPerS: Math.round(posted.events / seconds), errors: posted.errors });
      console.log(`round ${round} ${mode}: ${Math.round(alone)} req/s alone, ${Math.round(withPosters)} with ${posters} posters (${Math.round(posted.events / seconds)} events/s stored; failed posts: ${posted.failed})`);
    }
  }
} finally {
  for (const gw of Object.values(gateways)) await gw.stop(30_000);
  for (const b of backends) b.server.close();
}

console.log(`\n${posters} posters of ${batch}-event batches, wrk -c32, ${seconds} s each, median of ${rounds} rounds`);
console.log("writes   req/s alone   req/s with posters   ratio   events/s stored");
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
for (const mode of ["inline", "thread"]) {
  const r = rows.filter((x) => x.mode === mode);
  const alone = median(r.map((x) => x.alone));
  const withPosters = median(r.map((x) => x.withPosters));
  console.log(`${mode.padEnd(8)} ${String(Math.round(alone)).padStart(11)}   ${String(Math.round(withPosters)).padStart(18)}   ${(withPosters / alone).toFixed(3).padStart(5)}   ${String(median(r.map((x) => x.eventsPerS))).padStart(15)}`);
}
