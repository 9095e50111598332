// Message framing and the hops a proxy must not blur: what a client or a replica can put in a head to make abgate and
// the next hop read a message differently (RFC 9112 §3.2, §5, §6; RFC 9110 §7.6.1, §9.2.2), against real sockets.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server, type Socket } from "node:net";
import { testGateway } from "./helpers/gateway.ts";
import { rawRequest } from "./helpers/raw.ts";

/** A replica written on raw TCP: `answer` gets each request head (and whatever body bytes came with it). */
interface RawBackend {
  url: string;
  /** every request head the replica received, in order */
  heads: string[];
  close(): Promise<void>;
}

function rawBackend(answer: (head: string, socket: Socket, body: string) => void): Promise<RawBackend> {
  const heads: string[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let buffered = "";
    socket.on("data", (chunk: Buffer) => {
      buffered += chunk.toString("latin1");
      for (;;) {
        const end = buffered.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = buffered.slice(0, end);
        const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buffered.length < end + 4 + length) return;
        // An upgrade's bytes after its head belong to the tunnel: hand them over as its "body".
        const tunnel = /\r\nupgrade:/i.test(head);
        const body = tunnel ? buffered.slice(end + 4) : buffered.slice(end + 4, end + 4 + length);
        buffered = tunnel ? "" : buffered.slice(end + 4 + length);
        heads.push(head);
        answer(head, socket, body);
      }
    });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      resolve({
        url: `http://127.0.0.1:${port}`,
        heads,
        close: () =>
          new Promise<void>((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

const ok = (socket: Socket, extra = "", body = "ok") =>
  socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n${body}`);

let backend: RawBackend;
let gw: Awaited<ReturnType<typeof testGateway>>;
/** POSTs the replica acted on, by path */
const actedOn = new Map<string, number>();

before(async () => {
  backend = await rawBackend((head, socket, body) => {
    const [, method, path] = /^(\S+) (\S+)/.exec(head)!;
    if (method === "POST") actedOn.set(path, (actedOn.get(path) ?? 0) + 1);
    switch (path) {
      case "/drop":
        // Acts on the request, then drops the connection without answering (a crash, an idle-timeout race).
        return socket.destroy();
      case "/obs-fold":
        return socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\tx-folded: 2\r\n\r\nok");
      case "/space-before-colon":
        return socket.write("HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok");
      case "/connection-lists-length":
        return ok(socket, "connection: content-length\r\n");
      case "/gzip-chunked":
        return socket.write("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n");
      case "/no-content":
        return socket.write("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n");
      case "/upgrade-refused":
        return ok(socket, "", "no upgrade");
      case "/upgrade-garbage":
        return socket.write("garbage, not http\r\n\r\n");
      case "/upgrade":
        socket.write("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n");
        if (body) socket.write(`echo:${body}`);
        socket.removeAllListeners("data");
        socket.on("data", (c) => socket.write(`echo:${c.toString("latin1")}`));
        return;
      default:
        return ok(socket, "", JSON.stringify({ head, body }));
    }
  });
  gw = await testGateway({ variants: [{ name: "control", weight: 1, url: backend.url }] });
});

after(async () => {
  await gw.close();
  await backend.close();
});

test("a Connection header cannot strip Content-Length or Host from a forwarded request", async () => {
  const smuggled = "GET /admin-secret HTTP/1.1\r\nhost: x\r\n\r\n";
  const res = await rawRequest(
    gw.proxyUrl,
    `POST /echo HTTP/1.1\r\nhost: example\r\nx-user-id: u1\r\nconnection: content-length, host\r\ncontent-length: ${smuggled.length}\r\n\r\n${smuggled}`,
  );
  assert.match(res, /^HTTP\/1\.1 200/);
  const echoed = JSON.parse(res.slice(res.indexOf("\r\n\r\n") + 4)) as { head: string; body: string };
  assert.match(echoed.head, new RegExp(`\\r\\ncontent-length: ${smuggled.length}\\r\\n`, "i"));
  assert.match(echoed.head, /\r\nhost: example\r\n/i);
  assert.equal(echoed.body, smuggled, "the body arrives as this request's body");
  assert.ok(!backend.heads.some((h) => h.startsWith("GET /admin-secret")), "no second request reached the replica");
});

test("a request with two Host lines is refused with 400 and not forwarded", async () => {
  const before = backend.heads.length;
  const res = await rawRequest(gw.proxyUrl, "GET /two-hosts HTTP/1.1\r\nhost: a\r\nhost: evil\r\nx-user-id: u1\r\n\r\n");
  assert.match(res, /^HTTP\/1\.1 400/);
  assert.equal(backend.heads.length, before);
});

test("a POST the replica dropped after receiving it is answered 502, never sent twice; a GET is retried", async () => {
  // The first request leaves a pooled keep-alive connection; the POST reuses it, and the replica acts then drops it.
  const warm = await rawRequest(gw.proxyUrl, "GET /warm HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  assert.match(warm, /^HTTP\/1\.1 200/);
  const res = await rawRequest(gw.proxyUrl, "POST /drop HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\ncontent-length: 0\r\n\r\n");
  assert.match(res, /^HTTP\/1\.1 502/);
  assert.equal(actedOn.get("/drop"), 1, "the replica saw the POST once");
  await rawRequest(gw.proxyUrl, "GET /warm HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  const drops = backend.heads.filter((h) => h.startsWith("GET /drop")).length;
  await rawRequest(gw.proxyUrl, "GET /drop HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  assert.ok(backend.heads.filter((h) => h.startsWith("GET /drop")).length - drops >= 2, "an idempotent GET is tried again");
});

test("response heads abgate and the client could read differently are refused with 502", async () => {
  for (const path of ["/obs-fold", "/space-before-colon"]) {
    const res = await rawRequest(gw.proxyUrl, `GET ${path} HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n`);
    assert.match(res, /^HTTP\/1\.1 502/, path);
  }
});

test("a replica's Connection header cannot strip its Content-Length; transfer codings before chunked are kept", async () => {
  const listed = await rawRequest(gw.proxyUrl, "GET /connection-lists-length HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  assert.match(listed, /\r\ncontent-length: 2\r\n/i);
  const noContent = await rawRequest(gw.proxyUrl, "GET /no-content HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  assert.match(noContent, /^HTTP\/1\.1 204/);
  assert.doesNotMatch(noContent, /content-length/i, "a 204 carries no Content-Length");
  const gz = await rawRequest(gw.proxyUrl, "GET /gzip-chunked HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  const codings = [...gz.slice(0, gz.indexOf("\r\n\r\n")).matchAll(/\r\ntransfer-encoding: ([^\r]*)/gi)].map((m) => m[1]).join(", ");
  assert.equal(codings, "gzip, chunked");
  assert.match(gz, /\r\n\r\n2\r\nzz\r\n0\r\n\r\n$/);
});

test("an upgrade is tunnelled only after 101; a refusal ends the client's connection, garbage is a 502", async () => {
  const up = await rawRequest(
    gw.proxyUrl,
    "GET /upgrade HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nx-forwarded-for: 10.9.9.9\r\nconnection: upgrade\r\nupgrade: test\r\n\r\nping",
  );
  assert.match(up, /^HTTP\/1\.1 101/);
  assert.match(up, /echo:ping/);
  const upHead = backend.heads.find((h) => h.startsWith("GET /upgrade "))!;
  assert.match(upHead, /\r\nx-forwarded-for: 10\.9\.9\.9, 127\.0\.0\.1\r\n/);
  assert.match(upHead, /\r\nx-forwarded-host: x\r\n/);

  const before = backend.heads.length;
  const refused = await rawRequest(
    gw.proxyUrl,
    "GET /upgrade-refused HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n" +
      "GET /sneaked HTTP/1.1\r\nhost: x\r\nx-abgate-variant: forged\r\n\r\n",
  );
  assert.match(refused, /^HTTP\/1\.1 200/);
  assert.match(refused, /no upgrade/);
  assert.equal(backend.heads.length, before + 1, "the bytes after the refused upgrade never reached the replica");

  const garbage = await rawRequest(gw.proxyUrl, "GET /upgrade-garbage HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: test\r\n\r\n");
  assert.match(garbage, /^HTTP\/1\.1 502/);
});
