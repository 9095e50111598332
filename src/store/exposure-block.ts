import type { Exposure } from "./types.ts";

/** A unit this long or shorter, of ASCII characters other than NUL, is kept as bytes (a UUID is 36). */
export const UNIT_SLOT_CHARS = 40;

/**
 * A batch of exposures by column, as the batcher keeps them, for a store that writes them without making an object
 * and two strings of each row first (SqliteStore.writeExposureBlock). Every row of a block has its unit as ASCII
 * bytes in its slot and a request id of the proxy's form, `${idPrefix}${n.toString(36)}`, as n; the batcher makes a
 * block only of such rows (all the proxy's, unless a unit is long or not ASCII), and hands other batches over as
 * Exposure objects.
 *
 * Why: the objects and strings, and the JSON text made of them, were a good part of exposure logging's cost on one
 * core (see ExposureBlockInsert for what writing from the columns measured).
 *
 * The batcher owns the block and fills it again for its next write: a store reads it only until the promise of the
 * write that handed it over settles.
 */
export class ExposureBlock {
  rows = 0;
  readonly ts: Float64Array;
  readonly latencyMs: Float64Array;
  readonly status: Float64Array;
  /** 1 or 0 */
  readonly forced: Uint8Array;
  /** indexes into `names` */
  readonly experiment: Uint32Array;
  readonly assigned: Uint32Array;
  readonly served: Uint32Array;
  readonly replica: Uint32Array;
  /** UNIT_SLOT_CHARS bytes per row, the first unitLength[i] of them the unit's ASCII characters */
  readonly unitBytes: Buffer;
  readonly unitLength: Uint8Array;
  /** the request id's n */
  readonly requestSeq: Float64Array;
  /** experiment, variant and replica names by index (the batcher's table: indexes stay valid, names are added) */
  names: readonly string[] = [];
  /** the request ids' common start, ASCII */
  idPrefix = "";

  constructor(capacity: number, columns?: ExposureBlockColumns) {
    this.ts = columns?.ts ?? new Float64Array(capacity);
    this.latencyMs = columns?.latencyMs ?? new Float64Array(capacity);
    this.status = columns?.status ?? new Float64Array(capacity);
    this.forced = columns?.forced ?? new Uint8Array(capacity);
    this.experiment = columns?.experiment ?? new Uint32Array(capacity);
    this.assigned = columns?.assigned ?? new Uint32Array(capacity);
    this.served = columns?.served ?? new Uint32Array(capacity);
    this.replica = columns?.replica ?? new Uint32Array(capacity);
    const bytes = columns?.unitBytes;
    this.unitBytes = bytes === undefined ? Buffer.alloc(capacity * UNIT_SLOT_CHARS) : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.unitLength = columns?.unitLength ?? new Uint8Array(capacity);
    this.requestSeq = columns?.requestSeq ?? new Float64Array(capacity);
  }

  /** A copy of the block's rows, to post to another thread: every column its own buffer, to transfer. */
  toParts(): ExposureBlockParts {
    const n = this.rows;
    return {
      rows: n,
      names: [...this.names],
      idPrefix: this.idPrefix,
      ts: this.ts.slice(0, n),
      latencyMs: this.latencyMs.slice(0, n),
      status: this.status.slice(0, n),
      forced: this.forced.slice(0, n),
      experiment: this.experiment.slice(0, n),
      assigned: this.assigned.slice(0, n),
      served: this.served.slice(0, n),
      replica: this.replica.slice(0, n),
      unitBytes: new Uint8Array(this.unitBytes.subarray(0, n * UNIT_SLOT_CHARS)),
      unitLength: this.unitLength.slice(0, n),
      requestSeq: this.requestSeq.slice(0, n),
    };
  }

  static fromParts(parts: ExposureBlockParts): ExposureBlock {
    const block = new ExposureBlock(parts.rows, parts);
    block.rows = parts.rows;
    block.names = parts.names;
    block.idPrefix = parts.idPrefix;
    return block;
  }

  get capacity(): number {
    return this.ts.length;
  }

  unit(i: number): string {
    const at = i * UNIT_SLOT_CHARS;
    return this.unitBytes.toString("latin1", at, at + this.unitLength[i]!);
  }

  requestId(i: number): string {
    return this.idPrefix + this.requestSeq[i]!.toString(36);
  }

  exposure(i: number): Exposure {
    const names = this.names;
    return {
      experiment: names[this.experiment[i]!]!,
      ts: this.ts[i]!,
      requestId: this.requestId(i),
      unit: this.unit(i),
      assigned: names[this.assigned[i]!]!,
      served: names[this.served[i]!]!,
      replica: names[this.replica[i]!]!,
      status: this.status[i]!,
      latencyMs: this.latencyMs[i]!,
      forced: this.forced[i] === 1,
    };
  }

  toExposures(): Exposure[] {
    const rows = new Array<Exposure>(this.rows);
    for (let i = 0; i < this.rows; i++) rows[i] = this.exposure(i);
    return rows;
  }
}

export interface ExposureBlockColumns {
  ts: Float64Array;
  latencyMs: Float64Array;
  status: Float64Array;
  forced: Uint8Array;
  experiment: Uint32Array;
  assigned: Uint32Array;
  served: Uint32Array;
  replica: Uint32Array;
  unitBytes: Uint8Array;
  unitLength: Uint8Array;
  requestSeq: Float64Array;
}

/** A block as it crosses to another thread (structured clone). */
export interface ExposureBlockParts extends ExposureBlockColumns {
  rows: number;
  names: string[];
  idPrefix: string;
}

/** The buffers of a block's parts, to transfer rather than copy. */
export function partsBuffers(parts: ExposureBlockParts): ArrayBuffer[] {
  const { ts, latencyMs, status, forced, experiment, assigned, served, replica, unitBytes, unitLength, requestSeq } = parts;
  return [ts, latencyMs, status, forced, experiment, assigned, served, replica, unitBytes, unitLength, requestSeq].map((a) => a.buffer as ArrayBuffer);
}

/** Whether every character of `s` is ASCII other than NUL: text that reads back the same from its bytes. */
export function isPlainAscii(s: string): boolean {
  for (let k = 0; k < s.length; k++) {
    const c = s.charCodeAt(k);
    if (c === 0 || c > 0x7f) return false;
  }
  return true;
}
