import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import { writeLatin1 } from "./direct-write.ts";

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

describe("writeLatin1", () => {
  const servers: Server[] = [];
  after(() => {
    for (const s of servers) s.close();
  });

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
