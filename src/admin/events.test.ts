import { test } from "node:test";
import assert from "node:assert/strict";
import { RequestError } from "../errors.ts";
import { MAX_UNIT_CHARS } from "../store/types.ts";
import { MAX_ABS_VALUE, MAX_TS_MS, parseEvents } from "./events.ts";

const known = new Set(["watched"]);
const NOW = 1_764_331_200_000;
const parse = (body: unknown) => parseEvents(body, "exp", known, NOW);

function refused(body: unknown, re: RegExp): void {
  assert.throws(
    () => parse(body),
    (err: unknown) => err instanceof RequestError && err.status === 400 && err.code === "ABGATE_ERR_EVENT_INVALID" && re.test(err.message),
    JSON.stringify(body),
  );
}

test("units: up to MAX_UNIT_CHARS characters, the limit the store's types share with the proxy", () => {
  assert.equal(MAX_UNIT_CHARS, 512);
  assert.equal(parse({ unit: "u".repeat(MAX_UNIT_CHARS), event: "watched" })[0]!.unit.length, MAX_UNIT_CHARS);
  refused([{ unit: "u", event: "watched" }, { unit: "u".repeat(MAX_UNIT_CHARS + 1), event: "watched" }], /^events\[1\]\.unit: at most 512 characters/);
});

test("values: |value| up to 1e150, beyond it refused with the index and field", () => {
  const ok = parse([{ unit: "u", event: "watched", value: MAX_ABS_VALUE }, { unit: "u", event: "watched", value: -MAX_ABS_VALUE }]);
  assert.deepEqual(ok.map((e) => e.value), [1e150, -1e150]);
  for (const value of [1e200, -1e200, 1.0000001e150, Number.MAX_VALUE]) refused([{ unit: "u", event: "watched" }, { unit: "u", event: "watched", value }], /^events\[1\]\.value: at most 1e\+150/);
  refused({ unit: "u", event: "watched", value: 1e151 }, /^value: /);
});

test("ts: 0..8.64e15 ms (the Date range) as a number or an ISO string, fractional ms truncated as the stores keep them", () => {
  const ev = (ts: unknown) => ({ unit: "u", event: "watched", ts });
  assert.deepEqual(parse([ev(0), ev(MAX_TS_MS), ev(1764331200000.9), ev("2026-11-28T12:00:00.123Z"), ev(null)]).map((e) => e.ts), [0, 8.64e15, 1764331200000, 1795867200123, NOW]);
  for (const ts of [8.7e15, 1764331200000000000, 1e300, MAX_TS_MS + 1, -1, -0.5, "1969-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z"]) {
    refused([ev(1), ev(ts)], /^events\[1\]\.ts: /);
  }
  refused(ev(1e300), /^ts: .*8640000000000000/);
  for (const ts of ["2026-13-45T99:00:00Z", "9999-99-99T00:00:00Z"]) refused([ev(ts)], /^events\[0\]\.ts: a valid time/);
});

test("one value out of range fails the whole batch, naming its index", () => {
  const batch = [...Array.from({ length: 5 }, () => ({ unit: "u", event: "watched", value: 1 })), { unit: "u", event: "watched", value: 1e200 }];
  refused(batch, /^events\[5\]\.value/);
});

test("units and request ids with NUL or an unpaired surrogate are refused (PostgreSQL cannot store them as they are)", () => {
  refused([{ unit: "a\u0000b", event: "watched" }], /^events\[0\]\.unit: text without NUL or unpaired surrogates/);
  refused([{ unit: "a\ud800b", event: "watched" }], /^events\[0\]\.unit: text without NUL/);
  refused([{ unit: "\udfff", event: "watched" }], /^events\[0\]\.unit: text without NUL/);
  refused([{ unit: "u", event: "watched", requestId: "r\u0000" }], /^events\[0\]\.requestId: a string without NUL/);
  assert.equal(parse({ unit: "zoë-😀", event: "watched" })[0]!.unit, "zoë-😀", "pairs are fine");
});
