import { randomFillSync } from "node:crypto";
import { halfSipHash64 } from "./halfsiphash.ts";

/**
 * Remembers, for recently seen units, what the database is known to hold (an upper bound of the first exposure time,
 * a variant it has seen, whether it is multi), so that the common case — a known unit seen again later in the same
 * variant — costs no database write at all.
 *
 * Safe with several writers on one database: the database row only ever moves its first exposure earlier and its
 * multi flag from 0 to 1, so once an entry's claims hold they hold for good, and an exposure is skipped only if it
 * is no earlier than the entry's time and its variant is one the database has seen for the unit (or the unit is
 * already multi), so applying it could not change the row. Entries come only from committed writes: either the row
 * a write returned, or the delta a write applied, which after its upsert the row is known to be no later than and
 * to have seen (its first variant, or multi). `remember` merges what it is told with what the entry knew: the
 * earlier time, and multi once two different variants are known to have been seen. Forgetting an entry is always
 * safe: it only costs a redundant upsert.
 *
 * Why not a Map keyed by the unit: it is looked up once per exposure, in the proxy's process, and in a proxy under
 * load whatever holds 10,000 units is out of the CPU caches by the time a batch is written, so each lookup waits for
 * memory, and for the page tables too when the units are spread over many pages. Stubbing the lookup out raised a
 * loaded proxy's throughput by 2-10% (same-core A/B pairs, bench/proxy/ab.sh). So a unit is known here by a 64-bit
 * fingerprint, and its entry is 16 bytes: a bucket of four entries is one 64-byte cache line, and 10,000 units take
 * 1 MiB. The table of 64-byte slots it replaces, which held the units' characters, took 4 MiB for them (16 at most,
 * against 4 now), and kept longer units and other characters in a Map, an object per unit for the collector to mark.
 * Stubbing that table's lookup out gained 4.7% (req/s; 5.2% per CPU-second, same-core pairs, bench/proxy/ab.sh).
 * Against it, this table with a fast seeded hash gained 1.1% (0.8%; 12 pairs); with the keyed hash below, 0.1%
 * (0.4%; 10 pairs), within the pairs' noise. So its gain is memory and one structure for every unit; the lookup, now
 * mostly the hash, still costs about 2% of a loaded proxy (stubbed out: 1.7% req/s with the fast hash).
 *
 * A fingerprint stands for its unit, so two units with the same one would be taken for each other: the second's
 * exposures skipped as if its row were there. The fingerprint is HalfSipHash-1-3, a keyed pseudo-random function,
 * keyed by 64 bits drawn at random for each cache, so a client cannot choose a unit that passes for another, and the
 * chance that a new unit matches one of the four in its bucket by accident is 4 / 2^64 (about 2e-19): over a billion
 * new units, 2e-10.
 */
export class UnitCache {
  readonly #maxEntries: number;
  readonly #seedA: number;
  readonly #seedB: number;
  readonly #tables = new Map<string, UnitTable>();
  #lastExperiment: string | null = null;
  #lastTable: UnitTable | undefined;
  /** variant names by id, for the entries (an entry holds a variant as a 15-bit id) */
  readonly #variantIds = new Map<string, number>();
  #lastVariant: string | null = null;
  #lastVariantId = -1;
  /** the last fingerprint computed: its two hashes (int32), kept here because a pair returned would be allocated */
  readonly #fp = new Int32Array(2);

  /**
   * maxEntries: how many units to remember per experiment, about (see UnitTable), for the last MAX_EXPERIMENTS
   * experiments written; 0 disables the cache. seeds: the fingerprint's two keys (random unless a test gives them).
   */
  constructor(maxEntries = 100_000, seeds?: readonly [number, number]) {
    this.#maxEntries = maxEntries;
    const [a, b] = seeds ?? randomFillSync(new Uint32Array(2));
    this.#seedA = a! | 0;
    this.#seedB = b! | 0;
  }

  covers(experiment: string, unit: string, ts: number, variant: string): boolean {
    return this.#covers(experiment, unit, 0, unit.length, ts, variant);
  }

  /** `covers` of the unit whose ASCII characters are bytes[start] to bytes[start + length - 1] (same fingerprint). */
  coversBytes(experiment: string, bytes: Uint8Array, start: number, length: number, ts: number, variant: string): boolean {
    return this.#covers(experiment, bytes, start, length, ts, variant);
  }

  #covers(experiment: string, unit: string | Uint8Array, start: number, length: number, ts: number, variant: string): boolean {
    if (this.#maxEntries <= 0) return false;
    const table = this.#table(experiment, false);
    if (table === undefined) return false;
    // A variant never remembered (-1): the unit cannot have been seen in it, though it may be multi.
    const id = this.#variantId(variant, false);
    this.#fingerprint(unit, start, length);
    return table.covers(this.#fp[0]!, this.#fp[1]!, ts, id);
  }

  remember(experiment: string, unit: string, firstTs: number, firstVariant: string, multi: boolean): void {
    if (this.#maxEntries <= 0) return;
    const id = this.#variantId(firstVariant, true);
    if (id < 0) return;
    this.#fingerprint(unit);
    this.#table(experiment, true)!.remember(this.#fp[0]!, this.#fp[1]!, firstTs, id, multi);
  }

  /** units remembered, over all experiments */
  get size(): number {
    let n = 0;
    for (const t of this.#tables.values()) n += t.size;
    return n;
  }

  /** Sets #fp to the unit's fingerprint: its HalfSipHash-1-3, keyed by the two seeds (see halfsiphash.ts for why). */
  #fingerprint(unit: string | Uint8Array, start = 0, length = unit.length): void {
    halfSipHash64(this.#seedA, this.#seedB, unit, 1, 3, this.#fp, start, length);
  }

  #table(experiment: string, create: boolean): UnitTable | undefined {
    if (experiment !== this.#lastExperiment || (this.#lastTable === undefined && create)) {
      this.#lastExperiment = experiment;
      this.#lastTable = recentlyUsed(this.#tables, experiment, create ? () => new UnitTable(this.#maxEntries) : null);
    }
    return this.#lastTable;
  }

  /** The variant's id; -1 when it has none (and `create` is false, or there are too many). */
  #variantId(variant: string, create: boolean): number {
    if (variant === this.#lastVariant) return this.#lastVariantId;
    let id = this.#variantIds.get(variant);
    if (id === undefined) {
      // Variant names come from configs: a few per experiment. Past MAX_VARIANTS of them the cache stops learning
      // new ones (their units are simply not remembered), rather than mixing ids up.
      if (!create || this.#variantIds.size >= MAX_VARIANTS) return -1;
      id = this.#variantIds.size;
      this.#variantIds.set(variant, id);
    }
    this.#lastVariant = variant;
    this.#lastVariantId = id;
    return id;
  }
}

/** Experiments remembered at once; remembering units of one more forgets the one used least recently. */
const MAX_EXPERIMENTS = 4;
/** Variant ids fit in 15 bits of an entry, stored plus one so that 0 marks a free entry. */
const MAX_VARIANTS = 0x7fff;

/**
 * An experiment's entry of `byExperiment`, made the most recently used (Maps iterate in insertion order), or made
 * with `make` when it has none (and `make` is given), forgetting the least recently used past MAX_EXPERIMENTS. A
 * gateway writes one experiment; a store shared by several keeps the tables of the last few it wrote to, so
 * memory stays bounded (MAX_EXPERIMENTS tables of up to 4 MiB at the default size).
 */
function recentlyUsed<V>(byExperiment: Map<string, V>, experiment: string, make: (() => V) | null): V | undefined {
  let value = byExperiment.get(experiment);
  if (value !== undefined) {
    byExperiment.delete(experiment);
  } else if (make !== null) {
    if (byExperiment.size >= MAX_EXPERIMENTS) byExperiment.delete(byExperiment.keys().next().value as string);
    value = make();
  } else {
    return undefined;
  }
  byExperiment.set(experiment, value);
  return value;
}

/**
 * An entry is four 32-bit words: the fingerprint's two hashes, then the time of the first exposure (whole ms, as
 * 44 bits: up to the year 2527) as its low 32 bits and, in the last word, its high 12 bits, the variant id plus one
 * (15 bits, 0: a free entry) and the multi flag.
 */
const WORDS = 4;
const TS_HIGH_BITS = 12;
const MAX_TS = 2 ** (32 + TS_HIGH_BITS);
const VARIANT_SHIFT = TS_HIGH_BITS;
const VARIANT_MASK = 0x7fff;
const MULTI_BIT = 1 << 27;
const TS_HIGH_MASK = (1 << TS_HIGH_BITS) - 1;
/** Entries per bucket: 64 bytes, one cache line. */
const BUCKET_ENTRIES = 4;
const BUCKET_WORDS = BUCKET_ENTRIES * WORDS;
/** Entries a table starts with (16 KiB); it doubles whenever it is a quarter full, up to its maximum. */
const INITIAL_ENTRIES = 1024;

/**
 * One experiment's units, in an open-addressing table of buckets of four entries in one Int32Array. A unit's bucket
 * is the one its first hash picks; a bucket keeps its entries in the order they were last written, the latest
 * first, so a unit found again is usually in its first entry and, when all four are taken, a new unit takes the
 * place of the one written least recently. The table doubles whenever it is a quarter full, until it has maxEntries
 * (the smallest power of two at least twice the maxEntries asked for). So it forgets a little, and more near its
 * size: with units filling 25% of the entries about 0.4% of buckets overflow, at 50% about 5% (Poisson).
 */
class UnitTable {
  readonly #maxEntries: number;
  #entries = 0;
  #words = new Int32Array(0);
  size = 0;

  constructor(maxEntries: number) {
    let max = BUCKET_ENTRIES;
    while (max < 2 * maxEntries) max *= 2;
    this.#maxEntries = max;
    this.#allocate(Math.min(max, INITIAL_ENTRIES));
  }

  #allocate(entries: number): void {
    this.#entries = entries;
    this.#words = new Int32Array(entries * WORDS);
  }

  /** The first word of the bucket of a unit whose first hash is a. */
  #bucketAt(a: number): number {
    return (a & (this.#entries - BUCKET_ENTRIES)) * WORDS;
  }

  /** The first word of the entry of the unit (a, b), or -1. */
  #find(a: number, b: number): number {
    const w = this.#words;
    const first = this.#bucketAt(a);
    for (let at = first; at < first + BUCKET_WORDS; at += WORDS) {
      if (w[at] === a && w[at + 1] === b && w[at + 3] !== 0) return at;
    }
    return -1;
  }

  /** The time of the entry at `at`, from its two words. */
  #tsAt(at: number): number {
    return (this.#words[at + 3]! & TS_HIGH_MASK) * 2 ** 32 + (this.#words[at + 2]! >>> 0);
  }

  #isMulti(at: number): boolean {
    return (this.#words[at + 3]! & MULTI_BIT) !== 0;
  }

  /** The variant id of the entry at `at`, plus one (0: a free entry). */
  #variantAt(at: number): number {
    return (this.#words[at + 3]! >>> VARIANT_SHIFT) & VARIANT_MASK;
  }

  covers(a: number, b: number, ts: number, variantId: number): boolean {
    const at = this.#find(a, b);
    return at >= 0 && ts >= this.#tsAt(at) && (this.#isMulti(at) || this.#variantAt(at) === variantId + 1);
  }

  remember(a: number, b: number, ts: number, variantId: number, multi: boolean): void {
    // A time an entry cannot hold (a clock set before 1970, or past 2527) is not remembered: forgetting is safe.
    // (rounded up first: an entry's time is an upper bound, and 2^44 - 0.5 would round up out of range)
    ts = Math.ceil(ts);
    if (!(ts >= 0 && ts < MAX_TS)) return;
    let at = this.#find(a, b);
    if (at >= 0) {
      multi ||= this.#isMulti(at) || this.#variantAt(at) !== variantId + 1;
      this.#write(at, a, b, Math.min(this.#tsAt(at), ts), variantId, multi);
      return;
    }
    // A quarter full: double (below the maximum), so that buckets average at most one unit and few overflow.
    // Growing on the first full bucket instead took every table to its maximum (a few buckets always overflow
    // early), whose lookups then touched many more pages.
    if (this.size >= this.#entries / 4 && this.#entries < this.#maxEntries) this.#grow();
    at = this.#bucketAt(a) + BUCKET_WORDS - WORDS;
    // The bucket's last entry is free or the one written least recently: the new unit takes its place.
    if (this.#words[at + 3] === 0) this.size++;
    this.#write(at, a, b, ts, variantId, multi);
  }

  /**
   * Makes room at the front of the bucket of the entry at `at`, moving the entries before it back one (over it);
   * returns the front's first word.
   */
  #toFront(at: number): number {
    const w = this.#words;
    const first = at - (at % BUCKET_WORDS);
    // (by hand: copyWithin is a call into the runtime, for at most twelve words)
    for (let j = at - 1; j >= first; j--) w[j + WORDS] = w[j]!;
    return first;
  }

  /** Writes the entry at `at`, moved to the front of its bucket. */
  #write(at: number, a: number, b: number, ts: number, variantId: number, multi: boolean): void {
    const w = this.#words;
    const first = this.#toFront(at);
    w[first] = a;
    w[first + 1] = b;
    w[first + 2] = ts % 2 ** 32; // (stored as int32: read back with >>> 0)
    w[first + 3] = Math.floor(ts / 2 ** 32) | ((variantId + 1) << VARIANT_SHIFT) | (multi ? MULTI_BIT : 0);
  }

  #grow(): void {
    const old = this.#words;
    this.#allocate(this.#entries * 2);
    // A bucket's units go to the two buckets their first hashes pick with one more bit: at most BUCKET_ENTRIES per
    // new bucket. Taken in reverse order, each goes to the front of its new bucket, so each keeps its order.
    const w = this.#words;
    for (let bucket = 0; bucket < old.length; bucket += BUCKET_WORDS) {
      for (let at = bucket + BUCKET_WORDS - WORDS; at >= bucket; at -= WORDS) {
        if (old[at + 3] === 0) continue;
        const first = this.#toFront(this.#bucketAt(old[at]!) + BUCKET_WORDS - WORDS);
        for (let j = 0; j < WORDS; j++) w[first + j] = old[at + j]!;
      }
    }
  }
}
