import { FNV1A32_OFFSET, FNV1A32_PRIME, fmix32 } from "../strategies/fnv.ts";

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
 * load a Map of 10,000 units is out of the CPU caches by the time a batch is written, so each lookup waits for
 * several cache misses (the hash bucket, the entry, the key string to compare, the value object). Stubbing the
 * lookup out raised a loaded proxy's throughput by 2-10% (same-core A/B pairs, bench/proxy/ab.sh); this table
 * recovered about 3% of it (median of 6 pairs), and keeps no object per unit for the old generation's GC to mark.
 * Here a unit of at most INLINE_UNIT_CHARS Latin-1 characters (user ids, UUIDs) lives in one 64-byte slot of a
 * typed array, its characters included, so a lookup hashes the unit, reads the adjacent slots of its bucket and
 * compares the stored characters: a miss or two instead of four. Longer units, or units with other characters, go
 * to a Map as before.
 */
export class UnitCache {
  readonly #maxEntries: number;
  readonly #tables = new Map<string, UnitTable>();
  readonly #maps = new Map<string, UnitMap>();
  #lastExperiment: string | null = null;
  #lastTable: UnitTable | undefined;
  /** variant names by id, for the slots (a slot holds a variant as a 16-bit id) */
  readonly #variantIds = new Map<string, number>();
  #lastVariant: string | null = null;
  #lastVariantId = -1;

  /**
   * maxEntries: how many units to remember per experiment, about (see UnitTable), for the last MAX_EXPERIMENTS
   * experiments written; 0 disables the cache.
   */
  constructor(maxEntries = 100_000) {
    this.#maxEntries = maxEntries;
  }

  covers(experiment: string, unit: string, ts: number, variant: string): boolean {
    if (this.#maxEntries <= 0) return false;
    const h = inlineHash(unit);
    if (h < 0) return this.#map(experiment, false)?.covers(unit, ts, variant) ?? false;
    const table = this.#table(experiment, false);
    if (table === undefined) return false;
    const id = this.#variantIds.get(variant);
    // A variant never remembered: the unit cannot have been seen in it.
    return table.covers(unit, h, ts, id ?? -1);
  }

  remember(experiment: string, unit: string, firstTs: number, firstVariant: string, multi: boolean): void {
    if (this.#maxEntries <= 0) return;
    const h = inlineHash(unit);
    if (h < 0) {
      this.#map(experiment, true)!.remember(unit, firstTs, firstVariant, multi);
      return;
    }
    this.#table(experiment, true)!.remember(unit, h, firstTs, this.#variantId(firstVariant), multi);
  }

  /** units remembered, over all experiments */
  get size(): number {
    let n = 0;
    for (const t of this.#tables.values()) n += t.size;
    for (const m of this.#maps.values()) n += m.size;
    return n;
  }

  #table(experiment: string, create: boolean): UnitTable | undefined {
    if (experiment !== this.#lastExperiment || (this.#lastTable === undefined && create)) {
      this.#lastExperiment = experiment;
      this.#lastTable = recentlyUsed(this.#tables, experiment, create ? () => new UnitTable(this.#maxEntries) : null);
    }
    return this.#lastTable;
  }

  /** The map of an experiment's long units. */
  #map(experiment: string, create: boolean): UnitMap | undefined {
    return recentlyUsed(this.#maps, experiment, create ? () => new UnitMap(this.#maxEntries) : null);
  }

  #variantId(variant: string): number {
    if (variant === this.#lastVariant) return this.#lastVariantId;
    let id = this.#variantIds.get(variant);
    if (id === undefined) {
      // Variant names come from configs: a few per experiment. Past 65,535 of them the cache stops learning new
      // ones (their units are simply not remembered), rather than mixing ids up.
      if (this.#variantIds.size >= 0xffff) return -1;
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

/**
 * An experiment's entry of `byExperiment`, made the most recently used (Maps iterate in insertion order), or made
 * with `make` when it has none (and `make` is given), forgetting the least recently used past MAX_EXPERIMENTS. A
 * gateway writes one experiment; a store shared by several keeps the structures of the last few it wrote to, so
 * memory stays bounded (MAX_EXPERIMENTS tables of up to 16 MiB at the default size).
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

/** Longest unit kept in a slot: 44 characters (a UUID is 36). */
export const INLINE_UNIT_CHARS = 44;
const SLOT_BYTES = 64;
/**
 * Byte offsets in a slot: ts (float64) at 0, hash (uint32) at 8, variant id (uint16) at 12, flags at 14, length + 1
 * at 15 (0: a free slot), when it was written (uint32, a counter) at 16, the unit's characters from 20.
 */
const HASH_AT = 8;
const VARIANT_AT = 12;
const FLAGS_AT = 14;
const LENGTH_AT = 15;
const WRITTEN_AT = 16;
const KEY_AT = 20;
const MULTI = 1;
/** Slots per bucket: 256 bytes, four cache lines the CPU fetches in two pairs. */
const BUCKET_SLOTS = 4;
/** Slots a table starts with (64 KiB); it doubles whenever it is a quarter full, up to its maximum. */
const INITIAL_SLOTS = 1024;

/**
 * FNV-1a (32 bits) of a unit that fits in a slot, finished with MurmurHash3's fmix32 so that the low bits, which pick
 * the bucket, depend on every character; -1 when the unit does not fit (too long, or a character above U+00FF).
 */
export function inlineHash(unit: string): number {
  const n = unit.length;
  if (n > INLINE_UNIT_CHARS) return -1;
  // Over the characters themselves (each one byte here), not their UTF-8 bytes as fnv1a32 hashes: only this
  // table needs to agree with itself.
  let h = FNV1A32_OFFSET;
  for (let i = 0; i < n; i++) {
    const c = unit.charCodeAt(i);
    if (c > 0xff) return -1;
    h = Math.imul(h ^ c, FNV1A32_PRIME);
  }
  return fmix32(h);
}

/**
 * One experiment's units, in an open-addressing table of 64-byte slots in one ArrayBuffer. A unit's bucket is the
 * group of BUCKET_SLOTS adjacent slots its hash picks; a unit lives in any of them, and when all are taken by other
 * units it takes the one written least recently. The table doubles whenever it is a quarter full, until it has
 * maxSlots (the smallest power of two at least twice maxEntries). So it forgets a little, and more near maxEntries:
 * with units filling 25% of the slots about 0.4% of buckets overflow, at 50% about 5% (Poisson).
 */
class UnitTable {
  readonly #maxSlots: number;
  #slots = 0;
  #f64 = new Float64Array(0);
  #u32 = new Uint32Array(0);
  #u16 = new Uint16Array(0);
  #u8 = new Uint8Array(0);
  size = 0;
  #writes = 0;

  constructor(maxEntries: number) {
    let max = BUCKET_SLOTS;
    while (max < 2 * maxEntries) max *= 2;
    this.#maxSlots = max;
    this.#allocate(Math.min(max, INITIAL_SLOTS));
  }

  #allocate(slots: number): void {
    const buf = new ArrayBuffer(slots * SLOT_BYTES);
    this.#slots = slots;
    this.#f64 = new Float64Array(buf);
    this.#u32 = new Uint32Array(buf);
    this.#u16 = new Uint16Array(buf);
    this.#u8 = new Uint8Array(buf);
  }

  /** The slot holding `unit` (whose hash is h), or -1. */
  #find(unit: string, h: number): number {
    const u8 = this.#u8;
    const n = unit.length;
    const first = h & (this.#slots - BUCKET_SLOTS);
    for (let s = first; s < first + BUCKET_SLOTS; s++) {
      const at = s * SLOT_BYTES;
      if (u8[at + LENGTH_AT] !== n + 1 || this.#u32[(at + HASH_AT) >> 2] !== h) continue;
      let i = 0;
      while (i < n && u8[at + KEY_AT + i] === unit.charCodeAt(i)) i++;
      if (i === n) return s;
    }
    return -1;
  }

  covers(unit: string, h: number, ts: number, variantId: number): boolean {
    const s = this.#find(unit, h);
    if (s < 0) return false;
    const at = s * SLOT_BYTES;
    return ts >= this.#f64[at >> 3]! && ((this.#u8[at + FLAGS_AT]! & MULTI) !== 0 || this.#u16[(at + VARIANT_AT) >> 1] === variantId);
  }

  remember(unit: string, h: number, ts: number, variantId: number, multi: boolean): void {
    if (variantId < 0) return;
    let s = this.#find(unit, h);
    if (s >= 0) {
      const at = s * SLOT_BYTES;
      const knownTs = this.#f64[at >> 3]!;
      const knownMulti = (this.#u8[at + FLAGS_AT]! & MULTI) !== 0;
      const knownVariant = this.#u16[(at + VARIANT_AT) >> 1]!;
      this.#write(s, unit, h, Math.min(knownTs, ts), variantId, multi || knownMulti || knownVariant !== variantId);
      return;
    }
    // A quarter full: double (below the maximum), so that buckets average at most one unit and few overflow.
    // Growing on the first full bucket instead took every table to its maximum (a few buckets always overflow
    // early): 16 MiB for 10,000 units, whose lookups then touched many more pages.
    if (this.size >= this.#slots / 4 && this.#slots < this.#maxSlots) this.#grow();
    s = this.#freeSlot(h);
    if (s < 0) {
      // Every slot of the bucket holds another unit: the new unit takes the one written least recently (written
      // counts wrap after 2^32 writes: then this choice is off for a while, which costs nothing but redundant
      // upserts).
      const first = h & (this.#slots - BUCKET_SLOTS);
      s = first;
      for (let t = first + 1; t < first + BUCKET_SLOTS; t++) {
        if (this.#u32[(t * SLOT_BYTES + WRITTEN_AT) >> 2]! < this.#u32[(s * SLOT_BYTES + WRITTEN_AT) >> 2]!) s = t;
      }
      this.size--;
    }
    this.size++;
    this.#write(s, unit, h, ts, variantId, multi);
  }

  #freeSlot(h: number): number {
    const first = h & (this.#slots - BUCKET_SLOTS);
    for (let s = first; s < first + BUCKET_SLOTS; s++) if (this.#u8[s * SLOT_BYTES + LENGTH_AT] === 0) return s;
    return -1;
  }

  #write(s: number, unit: string, h: number, ts: number, variantId: number, multi: boolean): void {
    const u8 = this.#u8;
    const at = s * SLOT_BYTES;
    this.#f64[at >> 3] = ts;
    this.#u32[(at + HASH_AT) >> 2] = h;
    this.#u16[(at + VARIANT_AT) >> 1] = variantId;
    u8[at + FLAGS_AT] = multi ? MULTI : 0;
    u8[at + LENGTH_AT] = unit.length + 1;
    this.#u32[(at + WRITTEN_AT) >> 2] = this.#writes++;
    for (let i = 0; i < unit.length; i++) u8[at + KEY_AT + i] = unit.charCodeAt(i);
  }

  #grow(): void {
    const old = this.#u8;
    const oldU32 = this.#u32;
    const oldSlots = this.#slots;
    this.#allocate(oldSlots * 2);
    // A bucket's units go to the two buckets their hashes pick with one more bit: at most BUCKET_SLOTS per new
    // bucket, so each finds a free slot.
    for (let s = 0; s < oldSlots; s++) {
      const at = s * SLOT_BYTES;
      if (old[at + LENGTH_AT] === 0) continue;
      const to = this.#freeSlot(oldU32[(at + HASH_AT) >> 2]!);
      this.#u8.set(old.subarray(at, at + SLOT_BYTES), to * SLOT_BYTES);
    }
  }
}

interface UnitMapEntry {
  ts: number;
  variant: string;
  multi: boolean;
}

/**
 * One experiment's units that do not fit in a slot, in a Map (in insertion order, so evicting the first key
 * evicts the unit written least recently).
 */
class UnitMap {
  readonly #max: number;
  readonly #map = new Map<string, UnitMapEntry>();

  constructor(maxEntries: number) {
    this.#max = maxEntries;
  }

  get size(): number {
    return this.#map.size;
  }

  covers(unit: string, ts: number, variant: string): boolean {
    const c = this.#map.get(unit);
    return c !== undefined && ts >= c.ts && (c.multi || c.variant === variant);
  }

  remember(unit: string, firstTs: number, firstVariant: string, multi: boolean): void {
    const map = this.#map;
    const known = map.get(unit);
    let ts = firstTs;
    if (known !== undefined) {
      if (known.ts < ts) ts = known.ts;
      multi ||= known.multi || known.variant !== firstVariant;
      // Delete and set again to make the unit the most recently written.
      map.delete(unit);
    }
    map.set(unit, { ts, variant: firstVariant, multi });
    if (map.size > this.#max) map.delete(map.keys().next().value as string);
  }
}
