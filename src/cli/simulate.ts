import { readFileSync } from "node:fs";
import { join } from "node:path";
import { AbgateError, InvalidArgumentError } from "../errors.ts";
import { checkHttpUrl } from "./admin-client.ts";
import { DEFAULTS, generate, prng, watch, type Movie, type User } from "../../examples/recommender/data/synth.js";

/**
 * Synthetic users for the recommender demo and for load: each asks the proxy for recommendations, looks at
 * the list and, with a probability given by their hidden taste (examples/recommender/data/synth.js), watches
 * one movie, which is posted to the admin API as a `watched` outcome event with the minutes as its value.
 */
export interface SimulateOptions {
  /** an http(s) URL, checked as `abgate simulate --proxy` (the errors name its options) */
  proxyUrl: string;
  /** an http(s) URL, checked as `abgate simulate --admin` */
  adminUrl: string;
  /** bearer token for POST /v1/events (the admin or the ingest token) */
  token?: string;
  /** how many distinct users (units) take part; at most the data set's user count */
  users: number;
  /** total requests (default 3 per user) */
  requests?: number;
  /** stop issuing requests after this long, whatever the count */
  durationMs: number;
  /** requests in flight at once: a whole number from 1 */
  concurrency: number;
  seed: number;
  /** read users.csv and movies.csv written by data/generate.ts instead of generating the default data set */
  dataDir?: string;
  /** recommendations per request (default 10) */
  k?: number;
  /** events per POST /v1/events (default 500) */
  batchSize?: number;
  /** called about every `progressEveryMs` (default 1000) and once at the end */
  onProgress?: (p: SimulateResult) => void;
  progressEveryMs?: number;
}

export interface VariantCounts {
  requests: number;
  /** distinct users served by this variant */
  units: number;
  /** distinct users who watched at least once */
  convertedUnits: number;
  watched: number;
  minutes: number;
}

export interface SimulateResult {
  requests: number;
  ok: number;
  failed: number;
  watched: number;
  eventsPosted: number;
  elapsedMs: number;
  /** by the variant that served (x-abgate-variant) */
  byVariant: Record<string, VariantCounts>;
  /** the first few failures, for the report */
  failures: string[];
}

function parseCsvLine(line: string): string[] {
  const out: string[] = [];
  let cur = "";
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quoted) {
      if (c === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cur += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      out.push(cur);
      cur = "";
    } else cur += c;
  }
  out.push(cur);
  return out;
}

/** Users (with hidden tastes) and movies from the CSV files of data/generate.ts. */
export function readDataDir(dir: string): { users: User[]; movies: Movie[] } {
  const rows = (name: string): string[][] => {
    let text: string;
    try {
      text = readFileSync(join(dir, name), "utf8");
    } catch (cause) {
      throw new InvalidArgumentError(`cannot read ${join(dir, name)} (write it with examples/recommender/data/generate.ts)`, { cause });
    }
    return text.trim().split("\n").slice(1).map(parseCsvLine);
  };
  const users = rows("users.csv").map((r) => ({ id: r[0], taste: r.slice(1).map(Number) }));
  const movies = rows("movies.csv").map((r) => ({ id: r[0], title: r[1], minutes: Number(r[2]), popularity: Number(r[3]), genres: r.slice(4).map(Number) }));
  return { users, movies };
}

/** A recommender's answer `{ items: [{ id }] }`, or no items when the text is something else. */
function recommendations(text: string): { items?: { id: string }[] } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return {};
  }
  const items = (json as { items?: unknown } | null)?.items;
  return Array.isArray(items) ? { items: items.filter((i): i is { id: string } => typeof (i as { id?: unknown } | null)?.id === "string") } : {};
}

/** Run the simulation. Never throws for failed requests (they are counted); throws for bad options. */
export async function simulate(opts: SimulateOptions): Promise<SimulateResult> {
  // As the admin commands check --admin: a mistyped URL failed only as every request failing (exit 1).
  checkHttpUrl("--proxy", opts.proxyUrl, "abgate's proxy", "http://127.0.0.1:8080");
  checkHttpUrl("--admin", opts.adminUrl, "abgate's admin API", "http://127.0.0.1:8081");
  // Refused like --users: 0 ran, as 1 (requests in flight were floored to 1 and a fraction rounded down).
  if (!Number.isInteger(opts.concurrency) || opts.concurrency < 1) throw new InvalidArgumentError(`concurrency must be a positive integer (got ${opts.concurrency})`);
  const data = opts.dataDir ? readDataDir(opts.dataDir) : generate({ seed: DEFAULTS.seed });
  if (!Number.isInteger(opts.users) || opts.users < 1) throw new InvalidArgumentError(`users must be a positive integer (got ${opts.users})`);
  if (opts.users > data.users.length) {
    throw new InvalidArgumentError(`users must be at most ${data.users.length}, the users the models know (got ${opts.users})`);
  }
  const totalRequests = opts.requests ?? opts.users * 3;
  const k = opts.k ?? 10;
  const batchSize = opts.batchSize ?? 500;
  const rand = prng(opts.seed);
  const users = data.users.slice(0, opts.users);
  const movies = new Map(data.movies.map((m) => [m.id, m]));
  const started = Date.now();
  const deadline = started + opts.durationMs;
  const auth: Record<string, string> = opts.token ? { authorization: `Bearer ${opts.token}` } : {};

  const result: SimulateResult = { requests: 0, ok: 0, failed: 0, watched: 0, eventsPosted: 0, elapsedMs: 0, byVariant: {}, failures: [] };
  const unitsByVariant = new Map<string, Set<string>>();
  const convertedByVariant = new Map<string, Set<string>>();
  const variant = (name: string): VariantCounts => (result.byVariant[name] ??= { requests: 0, units: 0, convertedUnits: 0, watched: 0, minutes: 0 });
  const fail = (why: string): void => {
    result.failed++;
    if (result.failures.length < 10) result.failures.push(why);
  };

  let pending: { unit: string; event: string; value: number; requestId?: string; ts: string }[] = [];
  let posting: Promise<void> = Promise.resolve();
  let postError: Error | undefined;
  const flush = (): Promise<void> => {
    if (pending.length === 0) return posting;
    const batch = pending;
    pending = [];
    // one POST at a time, in order: the admin API stores a batch all-or-nothing
    posting = posting.then(async () => {
      try {
        const res = await fetch(new URL("/v1/events", opts.adminUrl), {
          method: "POST",
          headers: { "content-type": "application/json", ...auth },
          body: JSON.stringify(batch),
          signal: AbortSignal.timeout(30_000),
        });
        const text = await res.text();
        if (!res.ok) throw new Error(`POST /v1/events answered ${res.status}: ${text.slice(0, 200)}`);
        result.eventsPosted += batch.length;
      } catch (err) {
        postError ??= err as Error;
      }
    });
    return posting;
  };

  let issued = 0;
  const worker = async (): Promise<void> => {
    while (issued < totalRequests && Date.now() < deadline && !postError) {
      issued++;
      const user = users[Math.floor(rand() * users.length)];
      result.requests++;
      let res: Response;
      let body: { items?: { id: string }[] };
      try {
        res = await fetch(`${opts.proxyUrl.replace(/\/+$/, "")}/recommend?user=${encodeURIComponent(user.id)}&k=${k}`, {
          headers: { "x-user-id": user.id },
          signal: AbortSignal.timeout(10_000),
        });
        const text = await res.text();
        if (res.status < 200 || res.status >= 300) {
          fail(`GET /recommend for ${user.id}: ${res.status} ${text.slice(0, 120)}`);
          continue;
        }
        // Another service than the demo's recommenders answers as it likes: a success all the same, with no
        // recommendations to watch (so no events), as the README says; it was counted a failure, and exit 1.
        body = recommendations(text);
      } catch (err) {
        fail(`GET /recommend for ${user.id}: ${(err as Error).message}`);
        continue;
      }
      result.ok++;
      const served = res.headers.get("x-abgate-variant") ?? "(unknown)";
      const v = variant(served);
      v.requests++;
      let seen = unitsByVariant.get(served);
      if (!seen) unitsByVariant.set(served, (seen = new Set()));
      seen.add(user.id);
      const recs = (body.items ?? []).map((i) => movies.get(i.id)).filter((m): m is Movie => m !== undefined);
      const w = watch(user, recs, rand);
      if (!w) continue;
      result.watched++;
      v.watched++;
      v.minutes += w.minutes;
      let conv = convertedByVariant.get(served);
      if (!conv) convertedByVariant.set(served, (conv = new Set()));
      conv.add(user.id);
      pending.push({ unit: user.id, event: "watched", value: w.minutes, requestId: res.headers.get("x-abgate-request-id") ?? undefined, ts: new Date().toISOString() });
      if (pending.length >= batchSize) void flush();
    }
  };

  const snapshot = (): SimulateResult => {
    for (const [name, set] of unitsByVariant) variant(name).units = set.size;
    for (const [name, set] of convertedByVariant) variant(name).convertedUnits = set.size;
    result.elapsedMs = Date.now() - started;
    return { ...result, byVariant: structuredClone(result.byVariant), failures: [...result.failures] };
  };
  const every = opts.progressEveryMs ?? 1000;
  const ticker = opts.onProgress ? setInterval(() => opts.onProgress!(snapshot()), every) : undefined;
  try {
    await Promise.all(Array.from({ length: Math.min(opts.concurrency, totalRequests) }, worker));
    await flush();
  } finally {
    if (ticker) clearInterval(ticker);
  }
  if (postError) throw new AbgateError(`posting outcome events failed: ${postError.message}`, "ABGATE_ERR_SIMULATE", { cause: postError });
  const final = snapshot();
  opts.onProgress?.(final);
  return final;
}
