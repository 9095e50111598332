import { RequestError } from "../errors.ts";
import type { OutcomeEvent } from "../store/types.ts";

export const MAX_EVENTS_PER_REQUEST = 10_000;
const MAX_UNIT_LENGTH = 512;
const FIELDS = new Set(["unit", "event", "value", "ts", "requestId"]);

/**
 * Validate a POST /v1/events body: one object or an array of at most 10,000. All or nothing: the first invalid
 * item fails the whole request with its index and field named, so an application never half-writes a batch.
 * `knownEvents` are the event names some metric uses; anything else is refused rather than silently ignored.
 */
export function parseEvents(body: unknown, experiment: string, knownEvents: Set<string>, nowMs: number): OutcomeEvent[] {
  const items = Array.isArray(body) ? body : [body];
  if (items.length === 0) throw new RequestError("no events: send one event object or a non-empty array", 400, "ABGATE_ERR_EVENT_INVALID");
  if (items.length > MAX_EVENTS_PER_REQUEST) {
    throw new RequestError(`${items.length} events in one request; at most ${MAX_EVENTS_PER_REQUEST}`, 413, "ABGATE_ERR_EVENT_INVALID");
  }
  const out: OutcomeEvent[] = new Array(items.length);
  const where = (i: number, field: string) => (Array.isArray(body) ? `events[${i}].${field}` : field);
  const bad = (i: number, field: string, msg: string) => new RequestError(`${where(i, field)}: ${msg}`, 400, "ABGATE_ERR_EVENT_INVALID");
  for (let i = 0; i < items.length; i++) {
    const e = items[i] as Record<string, unknown>;
    if (e === null || typeof e !== "object" || Array.isArray(e)) {
      throw new RequestError(`${Array.isArray(body) ? `events[${i}]` : "body"}: expected an object like {"unit": "u1", "event": "watched"}`, 400, "ABGATE_ERR_EVENT_INVALID");
    }
    for (const k of Object.keys(e)) if (!FIELDS.has(k)) throw bad(i, k, "unknown field (expected unit, event, value, ts, requestId)");
    const { unit, event, value, ts, requestId } = e;
    if (typeof unit !== "string" || unit.length === 0) throw bad(i, "unit", "a non-empty string");
    if (unit.length > MAX_UNIT_LENGTH) throw bad(i, "unit", `at most ${MAX_UNIT_LENGTH} characters`);
    if (typeof event !== "string" || event.length === 0) throw bad(i, "event", "a non-empty string");
    if (!knownEvents.has(event)) {
      throw bad(i, "event", `unknown event "${event}"; the metrics use ${knownEvents.size ? [...knownEvents].map((x) => `"${x}"`).join(", ") : "no events"}`);
    }
    if (value !== undefined && value !== null && (typeof value !== "number" || !Number.isFinite(value))) throw bad(i, "value", "a finite number");
    let tsMs = nowMs;
    if (ts !== undefined && ts !== null) {
      if (typeof ts === "number") tsMs = ts;
      else if (typeof ts === "string" && /^\d{4}-\d{2}-\d{2}T/.test(ts)) tsMs = Date.parse(ts);
      else throw bad(i, "ts", "an ISO 8601 time like 2026-11-28T12:00:00Z, or milliseconds since the epoch");
      if (!Number.isFinite(tsMs) || tsMs < 0) throw bad(i, "ts", "a valid time");
    }
    if (requestId !== undefined && requestId !== null && typeof requestId !== "string") throw bad(i, "requestId", "a string");
    out[i] = { experiment, unit, event, value: typeof value === "number" ? value : null, ts: tsMs, requestId: typeof requestId === "string" ? requestId : null };
  }
  return out;
}
