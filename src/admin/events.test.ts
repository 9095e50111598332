import { test } from "node:test";
import assert from "node:assert/strict";
import { RequestError } from "../errors.ts";
import { MAX_UNIT_CHARS } from "../store/types.ts";
import { MAX_ABS_MEASURE as MAX_ABS_VALUE, MAX_ABS_TS_MS as MAX_TS_MS } from "../store/rollup.ts";
import { eventsBodyProblem, MAX_REQUEST_ID_CHARS, parseEvents, parseEventsInSlices } from "./events.ts";

const known = new Set(["watched"]);
const NOW = Date.UTC(2027, 0, 1); // after every time the tests send as valid
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

test("ts: a number of ms or an ISO string, from 1970 to an hour ahead of the server, fractional ms truncated as the stores keep them", () => {
  const ev = (ts: unknown) => ({ unit: "u", event: "watched", ts });
  const ahead = NOW + 3_600_000;
  assert.deepEqual(
    parse([ev(1e11), ev(ahead), ev(1764331200000.9), ev("2026-11-28T12:00:00.123Z"), ev("1970-01-01T00:00:00Z"), ev(null)]).map((e) => e.ts),
    [1e11, ahead, 1764331200000, 1795867200123, 0, NOW],
  );
  for (const ts of [8.7e15, 1764331200000000000, 1e300, MAX_TS_MS + 1, -1, -0.5, "1969-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z", 0, ahead + 1]) {
    refused([ev(NOW), ev(ts)], /^events\[1\]\.ts: /);
  }
  refused(ev(1e300), /^ts: .*8640000000000000/);
  // Seconds for milliseconds: the event would land in 1970, before every first exposure, and count for nothing.
  refused(ev(1_795_867_200), /^ts: milliseconds since the epoch: 1795867200 is 1970-01-21T18:51:07\.200Z; seconds instead of milliseconds\?$/);
  // Microseconds for milliseconds, or a time zone mistake: ahead of the server's clock.
  refused(ev(1_795_867_200_000_000), /^ts: a time at most an hour ahead of the server's clock: .* is \d+ days ahead of 2027-01-01T00:00:00\.000Z$/);
  refused(ev("2027-01-01T05:30:00+00:00"), /^ts: a time at most an hour ahead of the server's clock: 2027-01-01T05:30:00\.000Z is 5\.5 hours ahead/);
  refused(ev(ahead + 1), /is 61 minutes ahead/); // just past the hour: not "1 hours"
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

test("ts strings: a strict ISO 8601 date-time with a zone, read the same wherever the server runs", () => {
  const ev = (ts: unknown) => ({ unit: "u", event: "watched", ts });
  const noon = 1_795_867_200_000; // 2026-11-28T12:00:00Z
  const cases: [string, number][] = [
    ["2026-11-28T12:00:00Z", noon],
    ["2026-11-28T12:00Z", noon],
    ["2026-11-28T14:00:00+02:00", noon],
    ["2026-11-28T07:00:00.5-05:00", noon + 500],
    ["2026-11-28T12:00:00.123456789Z", noon + 123],
    ["2026-11-29T01:45:00+13:45", noon],
    ["2024-02-29T00:00:00Z", Date.UTC(2024, 1, 29)],
  ];
  assert.deepEqual(parse(cases.map(([ts]) => ev(ts))).map((e) => e.ts), cases.map(([, ms]) => ms));
  // Date.parse moves these to real times (March 2, the next day, ...): refused, naming index and field.
  for (const ts of ["2026-02-30T00:00:00Z", "2026-02-29T00:00:00Z", "2026-04-31T12:00:00Z", "2026-11-28T24:00:00Z", "2026-11-28T23:60:00Z", "2026-11-28T23:59:60Z", "2026-11-28T12:00:00+24:00", "2026-00-10T12:00:00Z"]) {
    refused([ev(NOW), ev(ts)], /^events\[1\]\.ts: a valid time/);
  }
  // Without a zone Date.parse takes the server's local zone; other shapes are not ISO 8601 date-times.
  for (const ts of ["2026-11-28T12:00:00", "2026-11-28T12:00:00.000", "2026-11-28", "2026-11-28 12:00:00Z", "2026-11-28T12:00:00+0200", "2026-11-28T12:00:00+02", "2026-11-28T12:00:00Z ", "2026-11-28t12:00:00z", "Sat, 28 Nov 2026 12:00:00 GMT", "+002026-11-28T12:00:00Z"]) {
    refused([ev(NOW), ev(ts)], /^events\[1\]\.ts: an ISO 8601 time with a zone \(Z or ±hh:mm\)/);
  }
  refused(ev("2026-11-28T12:00:00"), /^ts: an ISO 8601 time with a zone/);
  refused(ev("0070-01-01T00:00:00Z"), /^ts: a time from 1970 on/); // year 70, which Date.UTC would read as 1970
});

test("request ids: at most MAX_REQUEST_ID_CHARS characters, like units", () => {
  assert.equal(MAX_REQUEST_ID_CHARS, 512);
  assert.equal(parse({ unit: "u", event: "watched", requestId: "r".repeat(MAX_REQUEST_ID_CHARS) })[0]!.requestId!.length, MAX_REQUEST_ID_CHARS);
  refused([{ unit: "u", event: "watched" }, { unit: "u", event: "watched", requestId: "r".repeat(MAX_REQUEST_ID_CHARS + 1) }], /^events\[1\]\.requestId: at most 512 characters/);
  refused({ unit: "u", event: "watched", requestId: "r".repeat(1 << 20) }, /^requestId: at most 512 characters/);
  refused({ unit: "u", event: "watched", requestId: 7 }, /^requestId: a string/);
});

test("eventsBodyProblem refuses, without parsing, more items than allowed, nested values and more fields than an event has", () => {
  const problem = (text: string, max = 3) => eventsBodyProblem(Buffer.from(text), max);
  assert.equal(problem("[1,2,3]"), undefined);
  assert.deepEqual(problem("[1,2,3,4]"), { status: 413, message: "more than 3 events in one request; at most 3" });
  // commas in strings (escaped quotes too) and between an event's fields are not items
  assert.equal(problem(' \n [{"unit":"a,b,c","event":"x"},{"unit":"\\",\\",","event":"[,]","value":1,"ts":2,"requestId":"r"}]', 2), undefined);
  assert.equal(problem('[{"unit":"u","event":"x"},{"unit":"v","event":"y"},{"unit":"w","event":"z"}]', 2)?.status, 413);
  assert.equal(problem('{"unit":"u","event":"x","value":1,"ts":2,"requestId":"r"}', 0), undefined, "one object is one event");
  // what no events body holds: nested values, more fields than an event has
  assert.deepEqual(problem('[{"unit":"u","event":"x"},{"value":[0,0]}]'), { status: 400, message: "events[1]: an event's fields are strings, numbers or null (found a nested array)" });
  assert.deepEqual(problem("[[0,0]]"), { status: 400, message: "events[0]: an event's fields are strings, numbers or null (found a nested array)" });
  assert.deepEqual(problem('{"unit":"u","event":"x","value":{"a":1}}'), { status: 400, message: "body: an event's fields are strings, numbers or null (found a nested object)" });
  assert.deepEqual(problem('[{"a":0,"a":0,"a":0,"a":0,"a":0,"a":0}]'), { status: 400, message: "events[0]: more fields than an event has (unit, event, value, ts, requestId)" });
  assert.equal(problem("not json"), undefined);
  // A trailing comma after the last allowed item is bad JSON (JSON.parse's 400), not one item too many.
  assert.equal(problem("[1,2,3,]"), undefined);
  assert.equal(problem("[1,2,3, \n ]"), undefined);
  assert.equal(problem("[1,2,3,"), undefined);
  assert.equal(problem("[1,2,3, 4]")?.status, 413);
  // A byte order mark in front is skipped, as the body's decoding drops it before JSON.parse: it hid a 16 MiB array
  // from this check, and JSON.parse then held the event loop for a second.
  assert.equal(eventsBodyProblem(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(" [1,2,3,4]")]), 3)?.status, 413);
  assert.equal(eventsBodyProblem(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('[{"value":[0]}]')]), 3)?.status, 400);
  // the bodies that held the event loop for 0.5-1 s each: refused after a few bytes or 10,000 commas
  for (const junk of [`[${"0,".repeat(8_000_000)}0]`, `[[${"0,".repeat(7_000_000)}0]]`, `{"unit":"u","event":"w","value":[${"0,".repeat(7_000_000)}0]}`, `[{${'"a":0,'.repeat(1_400_000)}"a":0}]`]) {
    const bytes = Buffer.from(junk);
    const t0 = performance.now();
    assert.ok(eventsBodyProblem(bytes, 10_000) !== undefined, junk.slice(0, 30));
    assert.ok(performance.now() - t0 < 50, `${performance.now() - t0} ms`);
  }
});

test("parseEventsInSlices gives parseEvents' result and first error, and lets the event loop turn between slices", async () => {
  const known = new Set(["watched"]);
  const batch = Array.from({ length: 10_000 }, (_, i) => ({ unit: `u${i}`, event: "watched", value: i, ts: 1_700_000_000_000 + i }));
  let turns = 0;
  const ticker = setInterval(() => turns++, 0);
  try {
    assert.deepEqual(await parseEventsInSlices(batch, "exp", known, 1_800_000_000_000), parseEvents(batch, "exp", known, 1_800_000_000_000));
  } finally {
    clearInterval(ticker);
  }
  assert.ok(turns > 0, "the loop turned while 10,000 events were validated");
  const broken = batch.map((e, i) => (i === 7_777 ? { ...e, value: "x" } : e));
  await assert.rejects(parseEventsInSlices(broken, "exp", known, 1_800_000_000_000), /^RequestError: events\[7777\]\.value: a finite number$/);
  assert.throws(() => parseEvents(broken, "exp", known, 1_800_000_000_000), /^RequestError: events\[7777\]\.value: a finite number$/);
});
