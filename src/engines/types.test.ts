import { test } from "node:test";
import assert from "node:assert/strict";
import { RemovalSignal } from "./types.ts";

test("RemovalSignal: fires once, to listeners present then and to those that subscribe later; unsubscribed ones hear nothing", async () => {
  const signal = new RemovalSignal();
  const heard: string[] = [];
  signal.on((why) => heard.push(`early: ${why}`));
  const off = signal.on((why) => heard.push(`gone: ${why}`));
  off();
  assert.equal(signal.fired, false);
  signal.fire("removed");
  signal.fire("again");
  assert.equal(signal.fired, true);
  assert.deepEqual(heard, ["early: removed"]);
  const late = await new Promise<string>((resolve) => signal.on(resolve));
  assert.equal(late, "removed");
});
