import { InvalidArgumentError } from "../../errors.ts";
import type { Range } from "../types.ts";

/**
 * Shares closer than this are treated as equal. Float sums of shares drift by ~1e-16; without a tolerance a
 * rebalance would carve slivers of 1e-17 out of ranges and fragment the table.
 */
const EPSILON = 1e-12;

/**
 * A cut point on a decimal grid of 1e-12: `0.1 + 0.1 + 0.1` is 0.30000000000000004, and the table is shown to
 * users (GET /v1/experiment's `ranges`, for predicting a unit's variant) with such residue in it. The cut is rounded
 * where it is made, before any lookup uses it, so what is shown is what decides a unit's variant; the grid is 1/233
 * of a bucket step (2^-32), so a moved share is the weight shifted within 1e-12.
 */
function cutAt(x: number): number {
  return Math.round(x * 1e12) / 1e12;
}

interface Segment {
  /** null while a freed piece waits for its new owner during `rebalance` */
  owner: string | null;
  from: number;
  to: number;
}

/**
 * The sticky range table: [0,1) cut into consecutive ranges, each owned by a variant. A unit whose bucket falls in
 * a range gets that variant.
 *
 * Invariants: ranges are sorted, contiguous (each `to` is the next `from`, bit for bit), cover [0,1) exactly, are
 * non-empty, and no two adjacent ranges have the same owner (the table stays as short as it can).
 *
 * `rebalance` moves only what a weight change requires: a variant that shrank gives up its excess, and the freed
 * pieces go to variants that grew. The fraction of [0,1) that changes owner is therefore exactly the total
 * variation distance between the old and new shares, sum(max(0, old_i - new_i)), which is the least any
 * reassignment can move.
 *
 * Which pieces move is free within that bound, and is chosen so that going back to earlier weights brings units
 * back: each point of [0,1) has a home, its owner in the table the config's weights lay out (`home`). A variant that
 * shrinks gives up first what it holds of a growing variant's home (from the bottom up), then what it holds of
 * another's, and its own home last (each from the top down); a freed piece goes first to its home, if that grew,
 * then to a neighbour (so ranges merge instead of fragmenting). Without it, a variant gave up the top of its highest range whatever it had
 * borrowed: pausing a variant (weight 0) and resuming it at the same weight left 17% of all units in another variant
 * than before, each of them now exposed to two.
 */
export class RangeTable {
  #segments: Segment[];
  /** lookup arrays rebuilt on every change, so `lookup` is a binary search over a typed array */
  #ends = new Float64Array(0);
  #owners: string[] = [];
  /** where each point of [0,1) belongs: the layout of the config's weights; null: none known (pieces have no home) */
  #home: Segment[] | null = null;

  private constructor(segments: Segment[]) {
    this.#segments = segments;
    this.#index();
  }

  /** Sets the home layout (see the class comment): consecutive ranges in config order, sized by the config's shares. */
  setHome(names: readonly string[], shares: readonly number[]): void {
    this.#home = shares.some((x) => x > 0) ? RangeTable.initial(names, shares).#segments.map((x) => ({ ...x })) : null;
  }

  /** Consecutive ranges in the given order, sized by share (variants with share 0 get no range). */
  static initial(names: readonly string[], shares: readonly number[]): RangeTable {
    const segments: Segment[] = [];
    let from = 0;
    let cumulative = 0;
    const last = lastPositive(shares);
    for (let i = 0; i < names.length; i++) {
      if (!(shares[i] > 0)) continue;
      cumulative += shares[i];
      // the last owner ends at exactly 1 so float rounding never leaves a gap at the top
      const to = i === last ? 1 : Math.min(1, cutAt(cumulative));
      if (to > from) segments.push({ owner: names[i], from, to });
      from = to;
    }
    return new RangeTable(merge(segments));
  }

  /** A table from a persisted list; throws InvalidArgumentError when it does not cover [0,1) contiguously. */
  static fromRanges(ranges: readonly Range[]): RangeTable {
    if (!Array.isArray(ranges) || ranges.length === 0) throw new InvalidArgumentError("a range table needs at least one range");
    let expectedFrom = 0;
    const segments: Segment[] = [];
    for (const [i, r] of ranges.entries()) {
      if (typeof r?.variant !== "string" || typeof r.from !== "number" || typeof r.to !== "number") {
        throw new InvalidArgumentError(`range ${i} must be {variant: string, from: number, to: number}`);
      }
      if (r.from !== expectedFrom) {
        throw new InvalidArgumentError(`range ${i} (${r.variant}) starts at ${r.from}, expected ${expectedFrom}: ranges must be contiguous from 0`);
      }
      if (!(r.to > r.from) || r.to > 1) {
        throw new InvalidArgumentError(`range ${i} (${r.variant}) must satisfy from < to <= 1, got [${r.from}, ${r.to})`);
      }
      segments.push({ owner: r.variant, from: r.from, to: r.to });
      expectedFrom = r.to;
    }
    if (expectedFrom !== 1) throw new InvalidArgumentError(`ranges must end at 1, the last ends at ${expectedFrom}`);
    return new RangeTable(merge(segments));
  }

  /** The owner of `bucket` (in [0,1)). Binary search; allocates nothing. */
  lookup(bucket: number): string {
    const ends = this.#ends;
    let lo = 0;
    let hi = ends.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bucket < ends[mid]) hi = mid;
      else lo = mid + 1;
    }
    return this.#owners[lo];
  }

  /** A copy of the table. */
  ranges(): Range[] {
    return this.#segments.map((s) => ({ variant: s.owner!, from: s.from, to: s.to }));
  }

  /** Total length owned by each variant. */
  lengths(): Map<string, number> {
    const out = new Map<string, number>();
    for (const s of this.#segments) out.set(s.owner!, (out.get(s.owner!) ?? 0) + (s.to - s.from));
    return out;
  }

  /**
   * Move ownership so that each variant owns `shares[name]` of [0,1) (owners missing from `shares` go to 0),
   * moving the least possible fraction. `shares` must sum to 1 (within rounding).
   */
  rebalance(shares: ReadonlyMap<string, number>): void {
    const current = this.lengths();
    // Cut at the home's boundaries, so that each piece has one home (merge() joins them again at the end).
    const segments = splitAt(this.#segments, this.#home);
    const homeOf = (s: Segment): string | null => (this.#home === null ? null : homeAt(this.#home, s.from));
    const deficit = new Map<string, number>();
    for (const [owner, target] of shares) {
      const d = target - (current.get(owner) ?? 0);
      if (d > EPSILON) deficit.set(owner, d);
    }
    const needs = (owner: string | null | undefined): owner is string => owner != null && (deficit.get(owner) ?? 0) > EPSILON;

    // 1. Variants that shrank free their excess: what they hold of a growing variant's home first (from the bottom
    //    up), then of another variant's home, then their own (from the top down).
    for (const [owner, length] of current) {
      const target = shares.get(owner) ?? 0;
      if (target <= 0) {
        for (const s of segments) if (s.owner === owner) s.owner = null;
        continue;
      }
      let excess = length - target;
      if (excess <= EPSILON) continue;
      const rank = (s: Segment): number => {
        const home = homeOf(s);
        return home === null || home === owner ? 2 : needs(home) ? 0 : 1;
      };
      // A growing variant's home is given back from the bottom up: the bottom of its home is what it kept longest
      // (it was freed last, from the top down), so what it gets back borders what it still has.
      const order = segments.filter((s) => s.owner === owner).sort((a, b) => rank(a) - rank(b) || (rank(a) === 0 ? a.from - b.from : b.from - a.from));
      for (const s of order) {
        if (excess <= EPSILON) break;
        const len = s.to - s.from;
        if (len <= excess + EPSILON) {
          s.owner = null;
          excess -= len;
        } else if (rank(s) === 0) {
          const cut = cutAt(s.from + excess);
          segments.splice(segments.indexOf(s), 0, { owner: null, from: s.from, to: cut });
          s.from = cut;
          excess = 0;
        } else {
          const cut = cutAt(s.to - excess);
          segments.splice(segments.indexOf(s) + 1, 0, { owner: null, from: cut, to: s.to });
          s.to = cut;
          excess = 0;
        }
      }
    }

    // 2. Variants that grew take the freed pieces: a piece goes home first, if its home grew (from the piece's
    //    start, which borders the home's other pieces when it was freed whole), then to a neighbour.
    const pieces = merge(segments, homeOf);
    /** Gives the free piece at `i` to `owner`, or its first part, as much as owner's deficit; the rest stays free. */
    const give = (i: number, owner: string): void => {
      const s = pieces[i]!;
      const d = deficit.get(owner)!;
      const len = s.to - s.from;
      if (d >= len - EPSILON) {
        s.owner = owner;
        deficit.set(owner, d - len);
      } else {
        const cut = cutAt(s.from + d);
        pieces.splice(i, 1, { owner, from: s.from, to: cut }, { owner: null, from: cut, to: s.to });
        deficit.set(owner, 0);
      }
    };
    if (this.#home !== null) {
      for (let i = 0; i < pieces.length; i++) {
        const home = pieces[i]!.owner === null ? homeOf(pieces[i]!) : null;
        if (needs(home)) give(i, home);
      }
    }
    for (let i = 0; i < pieces.length; i++) {
      const s = pieces[i];
      if (s.owner !== null) continue;
      const left = i > 0 ? pieces[i - 1].owner : null;
      const right = i + 1 < pieces.length ? pieces[i + 1].owner : null;
      let owner: string | undefined = needs(left) ? left : needs(right) ? right : undefined;
      if (owner === undefined) for (const [name] of deficit) if (needs(name)) { owner = name; break; }
      if (owner === undefined) {
        // only rounding residue is left: give it to whoever borders it (never a variant going to 0, those
        // have no ranges left)
        owner = left ?? right ?? firstPositive(shares);
        s.owner = owner;
        continue;
      }
      // (a rest left free is looked at again in the next iteration)
      give(i, owner);
    }
    this.#segments = merge(pieces);
    this.#index();
  }

  #index(): void {
    this.#ends = Float64Array.from(this.#segments, (s) => s.to);
    this.#owners = this.#segments.map((s) => s.owner!);
  }
}

/** The segments cut at every boundary of `home` (copies; `home` null: just copies). */
function splitAt(segments: readonly Segment[], home: readonly Segment[] | null): Segment[] {
  if (home === null) return segments.map((s) => ({ ...s }));
  const out: Segment[] = [];
  let h = 0;
  for (const s of segments) {
    let from = s.from;
    while (h < home.length && home[h]!.to <= from) h++;
    for (let k = h; k < home.length && home[k]!.to < s.to; k++) {
      if (home[k]!.to > from) {
        out.push({ owner: s.owner, from, to: home[k]!.to });
        from = home[k]!.to;
      }
    }
    out.push({ owner: s.owner, from, to: s.to });
  }
  return out;
}

/** The home owner of point `x` of [0,1). */
function homeAt(home: readonly Segment[], x: number): string | null {
  for (const h of home) if (x < h.to) return h.owner;
  return home[home.length - 1]?.owner ?? null;
}

/**
 * Drop empty segments and join neighbours with the same owner. Free (null) pieces join only within one home when
 * `homeOf` tells the homes, so that each still has one.
 */
function merge(segments: Segment[], homeOf?: (s: Segment) => string | null): Segment[] {
  const out: Segment[] = [];
  for (const s of segments) {
    if (!(s.to > s.from)) continue;
    const prev = out[out.length - 1];
    if (prev && prev.owner === s.owner && (s.owner !== null || homeOf === undefined || homeOf(prev) === homeOf(s))) prev.to = s.to;
    else out.push({ ...s });
  }
  return out;
}

function lastPositive(shares: readonly number[]): number {
  for (let i = shares.length - 1; i >= 0; i--) if (shares[i] > 0) return i;
  return -1;
}

function firstPositive(shares: ReadonlyMap<string, number>): string {
  for (const [name, share] of shares) if (share > 0) return name;
  throw new InvalidArgumentError("shares must have a positive entry");
}
