import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import { networkInterfaces } from "node:os";
import { PortAllocator, allocatePorts, portIsFree } from "./ports.ts";

// The tests with real sockets listen on ports 31300-31399 only: below the kernel's ephemeral range (32768 up), so that
// no outgoing connection of a busy machine holds one (47300, in that range, was found taken under load).

const freeExcept = (...busy: number[]) => async (port: number) => !busy.includes(port);

/** A listener on host:port, or undefined when this host has no such address (no IPv6, say). */
function listenOn(host: string, port: number, ipv6Only = false): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", (err: NodeJS.ErrnoException) => (err.code === "EADDRNOTAVAIL" || err.code === "EAFNOSUPPORT" ? resolve(undefined) : reject(err)));
    server.listen({ host, port, ipv6Only }, () => resolve(server));
  });
}
const close = (server: Server | undefined) => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));

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

test("allocatePorts: a fixed port in use, reserved or another variant's is an error naming the key, not a silent move", async () => {
  await assert.rejects(allocatePorts([{ name: "a", replicas: 1 }, { name: "b", replicas: 2, port: 9200 }], 9100, [], freeExcept(9201)), {
    name: "PortTakenError",
    code: "ABGATE_ERR_PORT_TAKEN",
    message: "variants[1].port: replica b-1 needs port 9201, which is in use; free it, or leave port: out to let abgate choose",
  });
  await assert.rejects(allocatePorts([{ name: "a", replicas: 1, port: 9200 }], 9100, [9200], freeExcept()), {
    name: "PortTakenError",
    message: /^variants\[0\]\.port: replica a-0 needs port 9200, which is reserved \(for abgate's listeners, or by another experiment's replicas\)/,
  });
  // (config validation refuses overlapping fixed ports; the allocator must not hand one out twice either)
  await assert.rejects(allocatePorts([{ name: "a", replicas: 2, port: 9200 }, { name: "b", replicas: 1, port: 9201 }], 9100, [], freeExcept()), {
    name: "PortTakenError",
    message: "variants[1].port: replica b-0 needs port 9201, which another variant's replicas get too; free it, or leave port: out to let abgate choose",
  });
});

test("allocatePorts and PortAllocator: up to 65535 and no further, never wrapping below base", async () => {
  const probed: number[] = [];
  const isFree = async (port: number) => (probed.push(port), port !== 65534);
  await assert.rejects(allocatePorts([{ name: "a", replicas: 3 }], 65533, [], isFree), {
    code: "ABGATE_ERR_PORT_TAKEN",
    message: "no free port for replica a-2: every port from ports.base (65533) to 65535 is in use, reserved or another replica's; set a lower ports.base",
  });
  assert.deepEqual(probed, [65533, 65534, 65535]);

  probed.length = 0;
  const ports = new PortAllocator(65534, { reserved: [65535], isFree });
  await assert.rejects(ports.allocate("b-0"), { code: "ABGATE_ERR_PORT_TAKEN", message: /^no free port for replica b-0: every port from ports\.base \(65534\) to 65535/ });
  assert.deepEqual(probed, [65534], "65535 is reserved, and nothing below base is tried");
  // The last port itself is handed out
  assert.deepEqual([...(await allocatePorts([{ name: "c", replicas: 1 }], 65535, [], async () => true))], [["c", [65535]]]);
});

test("portIsFree: a listener on any address takes the port, so that a replica binding 127.0.0.1, 0.0.0.0 or :: gets it", async (t) => {
  const external = Object.values(networkInterfaces())
    .flat()
    .find((a) => a !== undefined && !a.internal && a.family === "IPv4")?.address;
  const cases: [string, string, boolean?][] = [
    ["127.0.0.1", "127.0.0.1"],
    ["0.0.0.0", "0.0.0.0"],
    [":: (dual-stack)", "::"],
    [":: (IPv6 only)", "::", true],
    ["::1", "::1"],
    ...(external ? [[`${external} (this host's)`, external] as [string, string]] : []),
  ];
  let port = 31300;
  for (const [name, host, ipv6Only] of cases) {
    const p = port++;
    assert.equal(await portIsFree(p), true, `${p} is free before the test`);
    const holder = await listenOn(host, p, ipv6Only);
    if (holder === undefined) {
      t.diagnostic(`no listener on ${name}: this host has no such address`);
      continue;
    }
    try {
      assert.equal(await portIsFree(p), false, `a listener on ${name} takes port ${p}`);
    } finally {
      await close(holder);
    }
    assert.equal(await portIsFree(p), true, `${p} is free again once the ${name} listener closed`);
    // and the probe left nothing behind: a replica can listen on it at once, on the widest address
    const replica = await listenOn("::", p);
    await close(replica);
  }
});

test("allocatePorts with the real probe: ports something listens on are skipped, and a fixed one is an error", async () => {
  const busy = await listenOn("127.0.0.1", 31323);
  const busy6 = await listenOn("::1", 31325);
  try {
    const ports = await allocatePorts(
      [
        { name: "a", replicas: 3 },
        { name: "b", replicas: 1, port: 31322 },
      ],
      31320,
      [31321],
    );
    // 31321 reserved, 31322 b's, 31323 in use (127.0.0.1), 31325 in use (::1, where the host has IPv6)
    assert.deepEqual([...ports], [["a", [31320, 31324, busy6 ? 31326 : 31325]], ["b", [31322]]]);
    await assert.rejects(allocatePorts([{ name: "a", replicas: 2, port: 31322 }], 31320), {
      name: "PortTakenError",
      message: "variants[0].port: replica a-1 needs port 31323, which is in use; free it, or leave port: out to let abgate choose",
    });
  } finally {
    await close(busy);
    await close(busy6);
  }
});

test("PortAllocator one replica at a time (the process engine): fixed ports first, then from base past reserved, claimed and busy ones", async () => {
  const busy = await listenOn("0.0.0.0", 31342);
  try {
    const ports = new PortAllocator(31340, { reserved: [31341] });
    const fixed = await ports.claimFixed([
      { name: "a", replicas: 2 },
      { name: "b", replicas: 2, port: 31343 },
    ]);
    assert.deepEqual([...fixed], [["b", [31343, 31344]]]);
    // Each call goes on where the last one ended
    assert.equal(await ports.allocate("a-0"), 31340);
    assert.equal(await ports.allocate("a-1"), 31345);
    // Claims exactly, with each reason
    const taken = (why: string, port: number) => `variants[2].port: replica c-0 needs port ${port}, which ${why}; free it, or leave port: out to let abgate choose`;
    await assert.rejects(ports.claim(31342, 2, "c-0"), { name: "PortTakenError", code: "ABGATE_ERR_PORT_TAKEN", message: taken("is in use", 31342) });
    await assert.rejects(ports.claim(31341, 2, "c-0"), {
      message: taken("is reserved (for abgate's listeners, or by another experiment's replicas)", 31341),
    });
    await assert.rejects(ports.claim(31343, 2, "c-0"), { message: taken("another variant's replicas get too", 31343) });
    await assert.rejects(ports.claim(31345, 2, "c-0"), { message: taken("another variant's replicas get too", 31345) });
    // A free port claimed is not handed out after
    assert.equal(await ports.claim(31346, 2, "c-0"), 31346);
    assert.equal(await ports.allocate("d-0"), 31347);
  } finally {
    await close(busy);
  }
});
