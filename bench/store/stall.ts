/**
 * A stalled disk under a gateway: `abgate serve` (the bundle the other benchmarks run) with its SQLite file on a
 * small loop-mounted ext4 that is frozen (fsfreeze) for a while under load, once with the store's writes on the
 * proxy's thread (ABGATE_SQLITE_WRITER=inline) and once on a thread of their own (thread). Needs root.
 *
 *   node --import tsx bench/store/stall.ts [--freeze-ms 3000] [--clients 8]
 *
 * Load: `clients` loops, each sending the next request when the last is answered (keep-alive), from 1 s before the
 * freeze to 1 s after the thaw. Printed per mode: requests answered while frozen (and per second before it), the
 * slowest request that started while frozen, the p99 over those, and, after the stop, whether the store holds an
 * exposure for every request answered. Everything listens on 127.0.0.1; the filesystem is thawed and unmounted on
 * exit.
 */
import { createServer } from "node:http";
import { join } from "node:path";
import { parseArgs } from "node:util";
import Database from "better-sqlite3";
import { Agent, request } from "undici";
import { freezableFolder } from "../../test/helpers/freezable.ts";
import { abgateBin, startAbgate } from "../memory/harness.ts";

const { values } = parseArgs({ options: { "freeze-ms": { type: "string", default: "3000" }, clients: { type: "string", default: "8" } } });
const freezeMs = Number(values["freeze-ms"]);
const clients = Number(values.clients);

const backend = createServer((_req, res) => res.end("ok"));
await new Promise<void>((r) => backend.listen(0, "127.0.0.1", () => r()));
const backendUrl = `http://127.0.0.1:${(backend.address() as { port: number }).port}`;
console.log(`abgate: ${abgateBin().note}`);

interface Sample {
  startedMs: number;
  ms: number;
}

async function runMode(mode: "inline" | "thread") {
  const disk = freezableFolder();
  if (disk === undefined) throw new Error("needs root and a loop device");
  process.env.ABGATE_SQLITE_WRITER = mode;
  const gw = await startAbgate({ dir: disk.dir, backends: [backendUrl, backendUrl], name: mode });
  const agent = new Agent({ connections: clients });
  const samples: Sample[] = [];
  let stop = false;
  let n = 0;
  const loop = async () => {
    while (!stop) {
      const startedMs = performance.now();
      const res = await request(`http://127.0.0.1:${gw.port}/`, { dispatcher: agent, headers: { "x-user-id": `u${n++}` } });
      await res.body.text();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
      samples.push({ startedMs, ms: performance.now() - startedMs });
    }
  };
  const t0 = performance.now();
  const loops = Array.from({ length: clients }, loop);
  await new Promise((r) => setTimeout(r, 1000));
  const frozenAt = performance.now();
  disk.freeze();
  await new Promise((r) => setTimeout(r, freezeMs));
  disk.thaw();
  const thawedAt = performance.now();
  await new Promise((r) => setTimeout(r, 1000));
  stop = true;
  await Promise.all(loops);
  await agent.close();
  await gw.stop(30_000);
  const db = new Database(join(disk.dir, `${mode}.db`), { readonly: true });
  const stored = (db.prepare("SELECT count(*) AS n FROM exposures WHERE unit LIKE 'u%'").get() as { n: number }).n;
  db.close();
  disk.dispose();
  const before = samples.filter((s) => s.startedMs < frozenAt && s.startedMs >= t0);
  const during = samples.filter((s) => s.startedMs >= frozenAt && s.startedMs < thawedAt);
  const answeredDuring = samples.filter((s) => s.startedMs + s.ms >= frozenAt && s.startedMs + s.ms < thawedAt).length;
  const ms = during.map((s) => s.ms).sort((a, b) => a - b);
  return {
    mode,
    perSecondBefore: Math.round(before.length / ((frozenAt - t0) / 1000)),
    answeredDuring,
    slowestDuringMs: ms.length > 0 ? ms[ms.length - 1]! : NaN,
    p99DuringMs: ms.length > 0 ? ms[Math.min(ms.length - 1, Math.floor(ms.length * 0.99))]! : NaN,
    answered: samples.length,
    stored,
  };
}

const results = [];
for (const mode of ["inline", "thread"] as const) results.push(await runMode(mode));
backend.close();
console.log(`\nfrozen for ${freezeMs} ms, ${clients} clients`);
console.log("writes   req/s before   answered while frozen   slowest started while frozen   p99 of those   answered   stored");
for (const r of results) {
  console.log(
    `${r.mode.padEnd(8)} ${String(r.perSecondBefore).padStart(12)}   ${String(r.answeredDuring).padStart(21)}   ${r.slowestDuringMs.toFixed(1).padStart(25)} ms   ${r.p99DuringMs.toFixed(1).padStart(9)} ms   ${String(r.answered).padStart(8)}   ${String(r.stored).padStart(6)}`,
  );
}
