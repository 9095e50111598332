import { cut, RequestError, shown } from "../errors.ts";
import { MAX_ABS_MEASURE, MAX_ABS_TS_MS, storableText } from "../store/rollup.ts";
import { MAX_UNIT_CHARS, type OutcomeEvent } from "../store/types.ts";

export const MAX_EVENTS_PER_REQUEST = 10_000;

/** Fields an event has (unit, event, value, ts, requestId): an object with more commas than this between its own fields is no event. */
const MAX_EVENT_COMMAS = 4;

/**
 * What is wrong with the JSON text `body` as a POST /v1/events body, found without parsing it: an array of more than
 * `maxItems` items (413), or an event with a nested array or object or with more fields than an event has (400).
 * Undefined when none of that is found (JSON.parse and parseEvents then judge it). One pass over the bytes, stopping
 * at the first problem. JSON.parse of a 16 MiB body of eight million numbers held the event loop, and with it every
 * proxied request, for about a second before the events were refused, whether the numbers were the array's items,
 * an array nested in an event, or a field repeated a million times; an events body has none of those shapes.
 */
export function eventsBodyProblem(body: Buffer, maxItems: number): { status: 400 | 413; message: string } | undefined {
  // (a byte order mark, which the body's UTF-8 decoding drops before JSON.parse, is no reason to stop looking)
  let i = skipJsonSpace(body, body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf ? 3 : 0);
  const first = body[i];
  if (first !== 0x5b /* [ */ && first !== 0x7b /* { */) return undefined;
  // depth at which an event's fields are: 2 in an array of events, 1 in a single event
  const eventDepth = first === 0x5b ? 2 : 1;
  const where = () => (first === 0x5b ? `events[${items}]` : "body");
  let depth = 0;
  let inString = false;
  let items = 0;
  let fieldCommas = 0;
  for (; i < body.length; i++) {
    const c = body[i]!;
    if (inString) {
      if (c === 0x5c /* \ */) i++;
      else if (c === 0x22 /* " */) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b /* { */) {
      depth++;
      // (an event is an object: an array in the events' place is nested too deep as well)
      if (depth > eventDepth || (depth === eventDepth && c === 0x5b)) return { status: 400, message: `${where()}: an event's fields are strings, numbers or null (found a nested ${c === 0x5b ? "array" : "object"})` };
      if (depth === eventDepth) fieldCommas = 0;
    } else if (c === 0x5d || c === 0x7d /* } */) {
      if (--depth === 0) return undefined;
    } else if (c === 0x2c /* , */) {
      if (depth === eventDepth && ++fieldCommas > MAX_EVENT_COMMAS) {
        return { status: 400, message: `${where()}: more fields than an event has (unit, event, value, ts, requestId)` };
      }
      if (depth === 1 && first === 0x5b && ++items >= maxItems) {
        // (a comma with no item after it is bad JSON, which JSON.parse refuses with a 400 soon enough)
        const j = skipJsonSpace(body, i + 1);
        if (j === body.length || body[j] === 0x5d /* ] */) return undefined;
        return { status: 413, message: `more than ${maxItems} events in one request; at most ${maxItems}` };
      }
    }
  }
  return undefined;
}
/** The index of the first byte at or after `i` that is not JSON whitespace (RFC 8259 §2: space, tab, LF, CR). */
function skipJsonSpace(body: Buffer, i: number): number {
  while (i < body.length && (body[i] === 0x20 || body[i] === 0x0a || body[i] === 0x0d || body[i] === 0x09)) i++;
  return i;
}

/** Longest request id, in UTF-16 code units: the same bound as a unit; a request id is an identifier, not a payload. */
export const MAX_REQUEST_ID_CHARS = 512;
/**
 * An ISO 8601 date-time with a zone: `2026-11-28T12:00:00Z`, `...T12:00:00.123+02:00`, `...T12:00Z`. A zone is
 * required: without one, Date.parse reads the time in the server's local zone, so the same event would be stored at
 * a different time depending on where abgate runs.
 */
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(?:Z|([+-])(\d{2}):(\d{2}))$/;
const TS_EXPECTED = "an ISO 8601 time with a zone (Z or ±hh:mm) like 2026-11-28T12:00:00Z, or milliseconds since the epoch";
const FIELDS = new Set(["unit", "event", "value", "ts", "requestId"]);
/**
 * How far ahead of this server's clock an event's time may be: clocks drift by seconds, not hours. An event dated
 * later (a local time sent as UTC, microseconds for milliseconds) would count for metrics without a window as if it
 * happened now, and for windowed ones never.
 */
export const MAX_EVENT_AHEAD_MS = 3_600_000;
/**
 * Numbers below this (1973-03-03) are refused as seconds sent for milliseconds: such an event lands in 1970,
 * before every unit's first exposure, where the analysis would drop it without a word.
 */
const MIN_TS_MS_NUMBER = 1e11;

/**
 * Milliseconds since the epoch of an ISO 8601 date-time with a zone (fractions of a ms truncated, as the stores keep
 * whole ms); a string saying what is wrong otherwise. Not Date.parse: it moves impossible dates to real ones
 * (February 30 is stored as March 2, 24:00 as the next day) and reads a time without a zone as local time. Here every
 * field must be in range and the date must exist, checked by building it and reading it back.
 */
export function parseIsoTime(text: string): number | string {
  const m = ISO_TIME.exec(text);
  if (m === null) return TS_EXPECTED;
  const [year, month, day, hour, minute, second] = [m[1], m[2], m[3], m[4], m[5], m[6] ?? "0"].map(Number) as [number, number, number, number, number, number];
  // Truncated from the digits, not via a float, so "…00.123Z" is exactly 123 ms.
  const ms = m[7] === undefined ? 0 : Number(m[7].padEnd(3, "0").slice(0, 3));
  const offsetMin = m[8] === undefined ? 0 : (m[8] === "-" ? -1 : 1) * (Number(m[9]) * 60 + Number(m[10]));
  if (hour > 23 || minute > 59 || second > 59) return `a valid time (no such time of day in ${JSON.stringify(text)})`;
  if (m[8] !== undefined && (Number(m[9]) > 23 || Number(m[10]) > 59)) return `a valid time (no such zone offset in ${JSON.stringify(text)})`;
  // setUTCFullYear, not Date.UTC, which reads years 0 to 99 as 1900 to 1999.
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  if (date.getUTCFullYear() !== year || date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day) {
    return `a valid time (no such date in ${JSON.stringify(text)})`;
  }
  date.setUTCHours(hour, minute, second, ms);
  return date.getTime() - offsetMin * 60_000;
}

/**
 * Validate a POST /v1/events body: one object or an array of at most 10,000. All or nothing: the first invalid
 * item fails the whole request with its index and field named, so an application never half-writes a batch.
 * `knownEvents` are the event names some metric uses; anything else is refused rather than silently ignored.
 */
export function parseEvents(body: unknown, experiment: string, knownEvents: Set<string>, nowMs: number): OutcomeEvent[] {
  const { items, read } = eventReader(body, experiment, knownEvents, nowMs);
  const out: OutcomeEvent[] = new Array(items.length);
  for (let i = 0; i < items.length; i++) out[i] = read(i);
  return out;
}

/** Items validated per turn of the event loop by parseEventsInSlices: about a millisecond. */
const EVENTS_PER_SLICE = 500;

/**
 * parseEvents, a slice of items per turn of the event loop: 10,000 events took 20-75 ms to validate, a stall of the
 * proxy's thread that the admin listener shares. Same result, same first error.
 */
export async function parseEventsInSlices(body: unknown, experiment: string, knownEvents: Set<string>, nowMs: number): Promise<OutcomeEvent[]> {
  const { items, read } = eventReader(body, experiment, knownEvents, nowMs);
  const out: OutcomeEvent[] = new Array(items.length);
  for (let i = 0; i < items.length; i++) {
    if (i > 0 && i % EVENTS_PER_SLICE === 0) await new Promise<void>((resolve) => setImmediate(resolve));
    out[i] = read(i);
  }
  return out;
}

/** The items of a body (checked for count) and a function validating the i-th, which throws the 400 naming it. */
function eventReader(body: unknown, experiment: string, knownEvents: Set<string>, nowMs: number): { items: unknown[]; read: (i: number) => OutcomeEvent } {
  const items = Array.isArray(body) ? body : [body];
  if (items.length === 0) throw new RequestError("no events: send one event object or a non-empty array", 400, "ABGATE_ERR_EVENT_INVALID");
  if (items.length > MAX_EVENTS_PER_REQUEST) {
    throw new RequestError(`${items.length} events in one request; at most ${MAX_EVENTS_PER_REQUEST}`, 413, "ABGATE_ERR_EVENT_INVALID");
  }
  const where = (i: number, field: string) => (Array.isArray(body) ? `events[${i}].${field}` : field);
  const bad = (i: number, field: string, msg: string) => new RequestError(`${where(i, field)}: ${msg}`, 400, "ABGATE_ERR_EVENT_INVALID");
  const read = (i: number): OutcomeEvent => {
    const e = items[i] as Record<string, unknown>;
    if (e === null || typeof e !== "object" || Array.isArray(e)) {
      throw new RequestError(`${Array.isArray(body) ? `events[${i}]` : "body"}: expected an object like {"unit": "u1", "event": "watched"}`, 400, "ABGATE_ERR_EVENT_INVALID");
    }
    // (the field is the client's: shown cut short, as every value echoed back is)
    for (const k of Object.keys(e)) if (!FIELDS.has(k)) throw bad(i, cut(k), "unknown field (expected unit, event, value, ts, requestId)");
    const { unit, event, value, ts, requestId } = e;
    if (typeof unit !== "string" || unit.length === 0) throw bad(i, "unit", "a non-empty string");
    if (unit.length > MAX_UNIT_CHARS) throw bad(i, "unit", `at most ${MAX_UNIT_CHARS} characters`);
    // Units the proxy can never see, and that PostgreSQL cannot store as they are (NUL is refused; lone surrogates
    // become U+FFFD, merging distinct units): refused here rather than stored differently by each store.
    if (!storableText(unit)) throw bad(i, "unit", "text without NUL or unpaired surrogates");
    if (typeof event !== "string" || event.length === 0) throw bad(i, "event", "a non-empty string");
    if (!knownEvents.has(event)) {
      throw bad(i, "event", `unknown event ${shown(event)}; the metrics use ${knownEvents.size ? [...knownEvents].map((x) => `"${x}"`).join(", ") : "no events"}`);
    }
    if (value !== undefined && value !== null) {
      if (typeof value !== "number" || !Number.isFinite(value)) throw bad(i, "value", "a finite number");
      // The store's bound (why: MAX_ABS_MEASURE), checked here to name the field in the 400.
      if (Math.abs(value) > MAX_ABS_MEASURE) throw bad(i, "value", `at most ${MAX_ABS_MEASURE} in absolute value (got ${value})`);
    }
    let tsMs = nowMs;
    if (ts !== undefined && ts !== null) {
      if (typeof ts === "number") tsMs = ts;
      else if (typeof ts === "string") {
        const parsed = parseIsoTime(ts);
        if (typeof parsed === "string") throw bad(i, "ts", parsed);
        tsMs = parsed;
      } else throw bad(i, "ts", TS_EXPECTED);
      if (!Number.isFinite(tsMs)) throw bad(i, "ts", "a valid time");
      if (tsMs < 0 || tsMs > MAX_ABS_TS_MS) throw bad(i, "ts", `a time from 1970 on, at most ${MAX_ABS_TS_MS} milliseconds since the epoch (got ${JSON.stringify(ts)})`);
      if (typeof ts === "number" && tsMs < MIN_TS_MS_NUMBER) {
        throw bad(i, "ts", `milliseconds since the epoch: ${ts} is ${new Date(tsMs).toISOString()}; seconds instead of milliseconds?`);
      }
      if (tsMs > nowMs + MAX_EVENT_AHEAD_MS) {
        throw bad(i, "ts", `a time at most an hour ahead of the server's clock: ${new Date(tsMs).toISOString()} is ${describeAhead(tsMs - nowMs)} ahead of ${new Date(nowMs).toISOString()}`);
      }
      // The stores keep whole milliseconds; truncating here too means what is parsed is what gets stored.
      tsMs = Math.trunc(tsMs);
    }
    if (requestId !== undefined && requestId !== null) {
      const expected = "a string without NUL or unpaired surrogates";
      if (typeof requestId !== "string") throw bad(i, "requestId", expected);
      // Unbounded, 10,000 events with a megabyte of request id each would be stored as they are.
      if (requestId.length > MAX_REQUEST_ID_CHARS) throw bad(i, "requestId", `at most ${MAX_REQUEST_ID_CHARS} characters (got ${requestId.length})`);
      if (!storableText(requestId)) throw bad(i, "requestId", expected);
    }
    return { experiment, unit, event, value: typeof value === "number" ? value : null, ts: tsMs, requestId: typeof requestId === "string" ? requestId : null };
  };
  return { items, read };
}

/** "61 minutes", "3.5 hours", "12 days": how far ahead an event's time is (rounded up), for the message refusing it. */
function describeAhead(ms: number): string {
  const minutes = Math.ceil(ms / 60_000);
  if (minutes < 120) return `${minutes} minutes`;
  const hours = Math.ceil(ms / 360_000) / 10;
  return hours < 48 ? `${hours} hours` : `${Math.ceil(hours / 24)} days`;
}
