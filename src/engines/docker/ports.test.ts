import { test } from "node:test";
import assert from "node:assert/strict";
import { allocatePorts } from "./ports.ts";

const freeExcept = (...busy: number[]) => async (port: number) => !busy.includes(port);

test("allocatePorts: base upward past reserved and busy ports; fixed ports exactly, before the others take them", async () => {
  const ports = await allocatePorts(
    [
      { name: "a", replicas: 2 },
      { name: "b", replicas: 2, port: 9101 },
      { name: "c", replicas: 1 },
    ],
    9100,
    [9104],
    freeExcept(9103),
  );
  assert.deepEqual([...ports], [["a", [9100, 9105]], ["b", [9101, 9102]], ["c", [9106]]]);
});

test("allocatePorts: a fixed port in use or reserved is an error naming the key, not a silent move", async () => {
  await assert.rejects(allocatePorts([{ name: "a", replicas: 1 }, { name: "b", replicas: 2, port: 9200 }], 9100, [], freeExcept(9201)), {
    code: "ABGATE_ERR_PORT_TAKEN",
    message: "variants[1].port: replica b-1 needs port 9201, which is in use; free it, or leave port: out to let abgate choose",
  });
  await assert.rejects(allocatePorts([{ name: "a", replicas: 1, port: 9200 }], 9100, [9200], freeExcept()), {
    message: /^variants\[0\]\.port: replica a-0 needs port 9200, which is reserved \(for abgate's listeners, or by another experiment's replicas\)/,
  });
});
