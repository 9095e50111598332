import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { nextTurn } from "../turn.ts";
import { allowDeferredWrites, flushDeferredWrites, writeLatin1, writeLatin1Soon } from "./direct-write.ts";

/** A connected pair: `client` is ours to write on, `peer` the server side, paused so the kernel buffers fill. */
async function pair(servers: Server[]): Promise<{ client: Socket; peer: Socket }> {
  const server = createServer({ pauseOnConnect: true });
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const accepted = once(server, "connection");
  const client = connect((server.address() as { port: number }).port, "127.0.0.1");
  await once(client, "connect");
  const [peer] = (await accepted) as [Socket];
  return { client, peer };
}

async function readAll(peer: Socket, bytes: number): Promise<string> {
  let got = "";
  peer.setEncoding("latin1");
  peer.resume();
  for await (const chunk of peer) {
    got += chunk;
    if (got.length >= bytes) break;
  }
  return got;
}

/** Every listening server of this file, closed at its end. */
const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
});

describe("writeLatin1", () => {
  it("keeps byte order when direct writes and stream writes mix, corked or not", async () => {
    const { client, peer } = await pair(servers);
    const parts: string[] = [];
    for (let i = 0; i < 200; i++) {
      const piece = `<${i}:${"é".repeat(i % 7)}>`;
      parts.push(piece);
      if (i % 3 === 0) writeLatin1(client, piece);
      else if (i % 3 === 1) client.write(piece, "latin1");
      else {
        client.cork();
        writeLatin1(client, piece);
        client.uncork();
      }
    }
    const expected = parts.join("");
    assert.equal(await readAll(peer, expected.length), expected);
    client.destroy();
    peer.destroy();
  });

  it("queues what the kernel cannot take yet, and delivers it in order once the peer reads", async () => {
    const { client, peer } = await pair(servers);
    // Far more than the loopback socket buffers hold, in pieces: the later direct writes complete asynchronously.
    const piece = "x".repeat(64 * 1024);
    let expectedLength = 0;
    for (let i = 0; i < 256; i++) {
      const tagged = `${i}`.padStart(4, "0") + piece;
      writeLatin1(client, tagged);
      expectedLength += tagged.length;
    }
    client.write("END", "latin1");
    expectedLength += 3;
    const got = await readAll(peer, expectedLength);
    assert.equal(got.length, expectedLength);
    for (let i = 0; i < 256; i++) assert.equal(got.slice(i * (piece.length + 4), i * (piece.length + 4) + 4), `${i}`.padStart(4, "0"));
    assert.ok(got.endsWith("END"));
    client.destroy();
    peer.destroy();
  });

  it("takes the stream's way on a socket that is still connecting, and the bytes still arrive", async () => {
    const server = createServer();
    servers.push(server);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const accepted = once(server, "connection");
    const client = connect((server.address() as { port: number }).port, "127.0.0.1");
    assert.ok(client.connecting);
    writeLatin1(client, "early");
    const [peer] = (await accepted) as [Socket];
    assert.equal(await readAll(peer, 5), "early");
    client.destroy();
    peer.destroy();
  });

  it("ends the socket with an error, without throwing, when the peer is gone", async () => {
    const { client, peer } = await pair(servers);
    peer.resetAndDestroy();
    const closed = new Promise((resolve) => client.once("close", resolve));
    client.on("error", () => {});
    // The reset reaches our side at some point; every write until then and after must neither throw nor hang.
    for (let i = 0; i < 50 && !client.destroyed; i++) {
      writeLatin1(client, "x".repeat(1024));
      await new Promise((r) => setImmediate(r));
    }
    client.destroy();
    await closed;
  });
});

/** Everything the peer gets until the connection ends. */
async function readToEnd(peer: Socket): Promise<string> {
  let got = "";
  peer.setEncoding("latin1");
  peer.resume();
  for await (const chunk of peer) got += chunk;
  return got;
}

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

describe("writeLatin1Soon", () => {
  it("sends at the end of the event loop's turn, not before", async () => {
    const { client, peer } = await pair(servers);
    allowDeferredWrites(client);
    writeLatin1Soon(client, "one");
    writeLatin1Soon(client, "two");
    // Nothing reached the kernel yet: the bytes written so far are none.
    assert.equal(client.bytesWritten, 0);
    await turn();
    assert.equal(client.bytesWritten, 6);
    assert.equal(await readAll(peer, 6), "onetwo");
    client.destroy();
    peer.destroy();
  });

  it("sends at once when 16 sockets wait, so a long turn does not hold the first answers to its end", async () => {
    const pairs = await Promise.all(Array.from({ length: 16 }, () => pair(servers)));
    for (const p of pairs) allowDeferredWrites(p.client);
    for (let i = 0; i < 15; i++) writeLatin1Soon(pairs[i]!.client, "x");
    assert.deepEqual(pairs.map((p) => p.client.bytesWritten), new Array(16).fill(0));
    writeLatin1Soon(pairs[15]!.client, "x");
    assert.deepEqual(pairs.map((p) => p.client.bytesWritten), new Array(16).fill(1));
    // What comes after in the same turn waits for the turn's end as before.
    writeLatin1Soon(pairs[0]!.client, "y");
    assert.equal(pairs[0]!.client.bytesWritten, 1);
    await turn();
    assert.equal(pairs[0]!.client.bytesWritten, 2);
    for (const p of pairs) {
      p.client.destroy();
      p.peer.destroy();
    }
  });

  it("sends what waits before a slice of a long job queued earlier in the turn (src/turn.ts)", async () => {
    const { client, peer } = await pair(servers);
    allowDeferredWrites(client);
    // The slice's turn was asked for first, as a store's next slice is, in the turn before.
    const seenBySlice = nextTurn().then(() => client.bytesWritten);
    writeLatin1Soon(client, "answer");
    assert.equal(await seenBySlice, 6);
    client.destroy();
    peer.destroy();
  });

  it("a write that throws at the turn's end destroys its socket only; the others' answers still leave", async () => {
    const a = await pair(servers);
    const b = await pair(servers);
    allowDeferredWrites(a.client);
    allowDeferredWrites(b.client);
    const handle = (a.client as unknown as { _handle: { writeLatin1String(): number } })._handle;
    handle.writeLatin1String = () => {
      throw new Error("broken handle");
    };
    const failure = once(a.client, "error");
    writeLatin1Soon(a.client, "lost");
    writeLatin1Soon(b.client, "kept");
    assert.equal(((await failure) as [Error])[0].message, "broken handle");
    b.client.end();
    assert.equal(await readToEnd(b.peer), "kept");
    a.peer.destroy();
    b.peer.destroy();
  });

  it("sends what waits before a later write or end of the same socket, so the bytes keep their order", async () => {
    const { client, peer } = await pair(servers);
    allowDeferredWrites(client);
    writeLatin1Soon(client, "head;");
    client.write("body;", "latin1");
    writeLatin1Soon(client, "next;");
    client.end("last");
    assert.equal(await readToEnd(peer), "head;body;next;last");
    peer.destroy();
  });

  it("sends what waits before the FIN of destroySoon", async () => {
    const { client, peer } = await pair(servers);
    allowDeferredWrites(client);
    writeLatin1Soon(client, "answer");
    client.destroySoon();
    assert.equal(await readToEnd(peer), "answer");
    peer.destroy();
  });

  it("drops what waits for a socket destroyed before the turn ends, without an error", async () => {
    const { client, peer } = await pair(servers);
    allowDeferredWrites(client);
    const errors: Error[] = [];
    client.on("error", (e) => errors.push(e));
    writeLatin1Soon(client, "lost");
    client.destroy();
    flushDeferredWrites();
    await turn();
    assert.deepEqual(errors, []);
    assert.equal(await readToEnd(peer), "");
    peer.destroy();
  });

  it("keeps each socket's bytes in order whatever the mix of deferred, direct, stream and corked writes and turns", async () => {
    // Each step is one write to one of two sockets, or a turn of the event loop.
    const step = fc.oneof(
      fc.record({ socket: fc.integer({ min: 0, max: 1 }), way: fc.constantFrom("soon", "direct", "stream", "corked") }),
      fc.constant("turn" as const),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 60 }), async (steps) => {
        const pairs = [await pair(servers), await pair(servers)];
        for (const p of pairs) allowDeferredWrites(p.client);
        const expected = ["", ""];
        let n = 0;
        for (const st of steps) {
          if (st === "turn") {
            await turn();
            continue;
          }
          const { client } = pairs[st.socket]!;
          const piece = `<${n++}${"é".repeat(n % 3)}>`;
          expected[st.socket] += piece;
          if (st.way === "soon") writeLatin1Soon(client, piece);
          else if (st.way === "direct") writeLatin1(client, piece);
          else if (st.way === "stream") client.write(piece, "latin1");
          else {
            client.cork();
            client.write(piece, "latin1");
            client.uncork();
          }
        }
        for (const p of pairs) p.client.end();
        const got = await Promise.all(pairs.map((p) => readToEnd(p.peer)));
        for (const p of pairs) p.peer.destroy();
        assert.deepEqual(got, expected);
      }),
      { numRuns: 40 },
    );
  });
});
