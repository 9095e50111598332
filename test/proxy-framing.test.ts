// Message framing and the hops a proxy must not blur: what a client or a replica can put in a head to make abgate and
// the next hop read a message differently (RFC 9112 §3.2, §5, §6; RFC 9110 §7.6.1, §9.2.2), against real sockets.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { admin, selectFromStore, testGateway } from "./helpers/gateway.ts";
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

/** Bytes that differ from one seed to another at every offset. */
function patterned(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i % 251) + seed;
  return b;
}

const ok = (socket: Socket, extra = "", body = "ok") =>
  socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n${body}`);

let backend: RawBackend;
let gw: Awaited<ReturnType<typeof testGateway>>;
/** POSTs the replica acted on, by path */
const actedOn = new Map<string, number>();
/** bytes that reached the replica right behind a refused upgrade's head (they must not) */
const sentEarly: string[] = [];

before(async () => {
  backend = await rawBackend((head, socket, body) => {
    // (this replica reads bodies by Content-Length only: a chunked body's bytes come here as a "head", not answered)
    const line = /^(\S+) (\S+)/.exec(head);
    if (line === null) return;
    const [, method, path] = line;
    if (method === "POST") actedOn.set(path, (actedOn.get(path) ?? 0) + 1);
    const pattern = /^\/pattern\/(\d+)\/(\d+)$/.exec(path!);
    if (pattern !== null) {
      // a sized body of `length` bytes made from `seed`, head and body in one write
      const body = patterned(Number(pattern[1]), Number(pattern[2]));
      return socket.write(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n`), body]));
    }
    switch (path) {
      case "/drop":
        // Acts on the request, then drops the connection without answering (a crash, an idle-timeout race).
        return socket.destroy();
      case "/obs-fold":
        return socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\tx-folded: 2\r\n\r\nok");
      case "/cut-chunked":
        socket.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
        return void setTimeout(() => socket.destroy(), 50);
      case "/space-in-name":
        return socket.write("HTTP/1.1 200 OK\r\ncontent-ty pe: text/plain\r\ncontent-length: 2\r\n\r\nok");
      case "/control-in-name":
        return socket.write("HTTP/1.1 200 OK\r\ncontent-length\x0b: 99\r\ncontent-length: 2\r\n\r\nok");
      case "/space-before-colon":
        return socket.write("HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok");
      case "/connection-lists-length":
        return ok(socket, "connection: content-length\r\n");
      case "/gzip-chunked":
        return socket.write("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n");
      case "/no-content":
        return socket.write("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n");
      case "/upgrade-refused":
        if (body) sentEarly.push(body);
        return ok(socket, "", "no upgrade");
      case "/upgrade-refused-kept":
        // A refusal that keeps its connection open, with connection fields of its own (and a body even for HEAD).
        return socket.write("HTTP/1.1 401 Unauthorized\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nx-hop: 1\r\nx-end-to-end: 1\r\ncontent-length: 4\r\n\r\nnope");
      case "/slow":
        return void setTimeout(() => ok(socket, "", "slow"), 300);
      case "/event-stream":
        // A stream's head, then its first event 600 ms later, then its end.
        socket.write("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
        return void setTimeout(() => socket.write("d\r\ndata: first\n\n\r\n0\r\n\r\n"), 600);
      case "/dated":
        return ok(socket, "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
      case "/dated-caps":
        return ok(socket, "Vary: x\r\nDATE: Sun, 06 Nov 1994 08:49:37 GMT\r\nLink: </a>\r\n");
      case "/early-hints":
        // interim answers: a 103 with a hop-by-hop field, a 100 nobody asked this client about, then the answer
        socket.write("HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nkeep-alive: timeout=5\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n");
        return void setTimeout(() => ok(socket), 100);
      case "/split-sized":
        // A sized answer's head and body in two writes, as uvicorn and h11 send them.
        socket.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n");
        return void setTimeout(() => socket.write("ok"), 20);
      case "/silent-stream":
        // A head, then nothing: the stream stays silent past responseTimeoutMs.
        return void socket.write("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
      case "/own-abgate-headers":
        return ok(socket, "X-Abgate-Variant: treatment\r\nx-abgate-request-id: forged\r\nx-abgate-other: kept\r\n");
      case "/upgrade-split":
        // the 101's status line cut across two TCP segments
        socket.write("HTTP/1.1 101 Swit");
        return void setTimeout(() => socket.write("ching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\nhello"), 30);
      case "/upgrade-hints":
        // an interim 103 Early Hints before the 101
        return socket.write("HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\nhello");
      case "/upgrade-silent":
        return;
      case "/upgrade-lf":
        // lines ending in a lone LF, and the replica's own copies of abgate's headers
        return socket.write("HTTP/1.1 101 Switching Protocols\nconnection: upgrade\nupgrade: test\nx-abgate-variant: forged\n\nhello");
      case "/upgrade-partial-close":
        socket.write("HTTP/1.1 101 Swit");
        return void setTimeout(() => socket.destroy(), 20);
      case "/upgrade-close":
        return socket.destroy();
      case "/upgrade-folded":
        return socket.write("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\nx-abgate-variant: forged\r\n  x-injected: 1\r\n\r\n");
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
  // One replica plays every hostile part here: its failures must not eject it for the tests after them (passive
  // health has its own tests).
  gw = await testGateway({ variants: [{ name: "control", weight: 1, url: backend.url }], limits: { ejectAfterFailures: 1000 } });
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

test("a request line with another major HTTP version is refused with 505 and not forwarded", async () => {
  const before = backend.heads.length;
  for (const version of ["2.0", "3.1", "0.9"]) {
    const res = await rawRequest(gw.proxyUrl, `GET /v${version} HTTP/${version}\r\nhost: x\r\nx-user-id: u1\r\n\r\n`);
    // llhttp itself refuses versions it does not know (400); 2.0 it parses, and abgate refuses it
    assert.match(res, version === "2.0" ? /^HTTP\/1\.1 505 HTTP Version Not Supported\r\n/ : /^HTTP\/1\.1 (505|400) /, version);
    assert.match(res, /connection: close/i);
  }
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
  for (const path of ["/obs-fold", "/space-before-colon", "/space-in-name", "/control-in-name"]) {
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
  // An HTTP/1.0 client knows no transfer codings (RFC 9112 §6.1): it would take the gzip bytes for the resource.
  const gz10 = await rawRequest(gw.proxyUrl, "GET /gzip-chunked HTTP/1.0\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  assert.match(gz10, /^HTTP\/1\.1 502/);
  assert.match(gz10, /HTTP\/1\.0 client cannot read/);
  const head10 = await rawRequest(gw.proxyUrl, "HEAD /gzip-chunked HTTP/1.0\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  assert.match(head10, /^HTTP\/1\.1 200/, "a bodiless answer is passed on");
  assert.doesNotMatch(head10, /transfer-encoding/i, "without the coding");
  const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { replicas: { health: string }[] }[] };
  assert.deepEqual(view.variants.flatMap((v) => v.replicas.map((r) => r.health)).filter((h) => h !== "healthy"), [], "the replica answered well: not held against it");
});

test("a WebSocket upgrade is tunnelled only after 101; a refusal ends the client's connection, garbage is a 502", async () => {
  const up = await rawRequest(
    gw.proxyUrl,
    "GET /upgrade HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nx-forwarded-for: 10.9.9.9\r\nconnection: upgrade\r\nupgrade: websocket\r\nproxy-authorization: Basic c2VjcmV0\r\n\r\nping",
  );
  assert.match(up, /^HTTP\/1\.1 101/);
  assert.match(up, /echo:ping/, "bytes sent right behind the handshake reach the replica after its 101");
  const upHead = backend.heads.find((h) => h.startsWith("GET /upgrade "))!;
  assert.match(upHead, /\r\nx-forwarded-for: 10\.9\.9\.9, 127\.0\.0\.1\r\n/);
  assert.match(upHead, /\r\nx-forwarded-host: x\r\n/);
  assert.match(upHead, /\r\nx-abgate-unit: u1(\r\n|$)/, "the unit, as a plain request carries it");
  assert.match(upHead, /\r\nupgrade: websocket\r\n/i);
  assert.doesNotMatch(upHead, /proxy-authorization/i, "hop-by-hop headers stay with abgate");

  const before = backend.heads.length;
  const refused = await rawRequest(
    gw.proxyUrl,
    "GET /upgrade-refused HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n" +
      "GET /sneaked HTTP/1.1\r\nhost: x\r\nx-abgate-variant: forged\r\n\r\n",
  );
  assert.match(refused, /^HTTP\/1\.1 200/);
  assert.match(refused, /\r\nconnection: close\r\n/i, "the client is told the connection ends with the refusal");
  assert.match(refused, /no upgrade/);
  assert.match(refused, /\r\ndate: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\r\n/, "a replica's answer without a Date gets abgate's (RFC 9110 §6.6.1), as on plain requests");
  assert.equal(backend.heads.length, before + 1, "the bytes after the refused upgrade never reached the replica");
  assert.deepEqual(sentEarly, [], "nothing was sent behind the handshake before the replica's answer");

  const garbage = await rawRequest(gw.proxyUrl, "GET /upgrade-garbage HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
  assert.match(garbage, /^HTTP\/1\.1 502/);
});

test("a refused handshake's answer loses the replica's connection fields and ends the client's connection at its end, HEAD's with its head", async () => {
  const handshake = (method: string) =>
    `${method} /upgrade-refused-kept HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`;
  for (const method of ["GET", "HEAD"]) {
    const startedMs = Date.now();
    // (rawRequest returns when abgate closes, or after 3 s of silence)
    const answer = await rawRequest(gw.proxyUrl, handshake(method), 3000);
    assert.ok(Date.now() - startedMs < 2000, `${method}: the connection ended with the answer, not when the replica or a timeout closed it`);
    const [head, body] = answer.split("\r\n\r\n");
    assert.match(head!, /^HTTP\/1\.1 401/);
    assert.equal(head!.match(/^connection:/gim)?.length, 1, `${method}: one Connection field, abgate's: ${head}`);
    assert.match(head!, /\r\nconnection: close\r\n/);
    assert.doesNotMatch(head!, /keep-alive|x-hop/i, "hop-by-hop fields, and those the replica's Connection names, are the replica's own (RFC 9110 §7.6.1)");
    assert.match(head!, /\r\nx-end-to-end: 1(\r\n|$)/);
    assert.match(head!, /\r\ncontent-length: 4(\r\n|$)/);
    assert.equal(body, method === "HEAD" ? "" : "nope", "an answer to HEAD has no content (RFC 9110 §9.3.2)");
  }
});

test("an absolute-form target goes on as origin-form, with its authority as Host (RFC 9112 §3.2.2)", async () => {
  for (const [target, path, host] of [
    ["http://other.example/p/../q?x=1#frag", "/p/../q?x=1", "other.example"],
    ["http://user:pw@other.example:8080?y=2", "/?y=2", "other.example:8080"],
    ["HTTPS://Other.Example", "/", "Other.Example"],
    ["http://a@b@other.example/x", "/x", "other.example"],
  ]) {
    const answer = await rawRequest(gw.proxyUrl, `GET ${target} HTTP/1.1\r\nhost: a\r\nx-user-id: u1\r\nconnection: close\r\n\r\n`);
    const { head } = JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)) as { head: string };
    assert.ok(head.startsWith(`GET ${path} HTTP/1.1\r\n`), head);
    assert.match(head, new RegExp(`\r\nhost: ${host.replace(".", "\\.")}\r\n`), head);
    assert.doesNotMatch(head, /\r\nhost: a\r\n/i, head);
    assert.match(head, new RegExp(`\r\nx-forwarded-host: ${host.replace(".", "\\.")}\r\n`), head);
  }
  const options = await rawRequest(gw.proxyUrl, "OPTIONS http://other.example HTTP/1.1\r\nhost: a\r\nx-user-id: u1\r\nconnection: close\r\n\r\n");
  assert.ok(JSON.parse(options.slice(options.indexOf("\r\n\r\n") + 4)).head.startsWith("OPTIONS * HTTP/1.1\r\n"));
  // HTTP/1.0 without a Host line: the authority is its one Host line (no replica address beside it)
  const old = await rawRequest(gw.proxyUrl, "GET http://other.example/p HTTP/1.0\r\nx-user-id: u1\r\n\r\n");
  const oldHead = (JSON.parse(old.slice(old.indexOf("\r\n\r\n") + 4)) as { head: string }).head;
  assert.equal(oldHead.match(/\r\nhost: /gi)?.length, 1, oldHead);
  assert.match(oldHead, /\r\nhost: other\.example\r\n/);
  // HTTP/1.1 without a Host line is still a 400, whatever the target says
  assert.match(await rawRequest(gw.proxyUrl, "GET http://other.example/ HTTP/1.1\r\nx-user-id: u1\r\n\r\n"), /^HTTP\/1\.1 400 /);
});

test("a replica's own x-abgate-variant and x-abgate-request-id are replaced by abgate's, not sent beside them", async () => {
  const res = await fetch(`${gw.proxyUrl}/own-abgate-headers`, { headers: { "x-user-id": "u1" } });
  await res.arrayBuffer();
  assert.equal(res.headers.get("x-abgate-variant"), "control");
  assert.notEqual(res.headers.get("x-abgate-request-id"), "forged");
  assert.doesNotMatch(res.headers.get("x-abgate-request-id")!, /,/, "one value, not two joined");
  assert.equal(res.headers.get("x-abgate-other"), "kept");
});

test("an upgrade's answer may come in pieces and after interim 1xx heads; a timeout is one 504 and one exposure", async () => {
  const handshake = (path: string) => `GET ${path} HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`;
  for (const path of ["/upgrade-split", "/upgrade-hints"]) {
    const answer = await rawRequest(gw.proxyUrl, handshake(path), 300);
    assert.match(answer, /^HTTP\/1\.1 101 Switching Protocols\r\n/, path);
    assert.match(answer, /\r\nx-abgate-variant: control\r\n/, path);
    assert.match(answer, /\r\n\r\nhello$/, path);
  }
  const lf = await rawRequest(gw.proxyUrl, handshake("/upgrade-lf"), 300);
  assert.match(lf, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
  assert.match(lf, /\r\nupgrade: test\r\n/, "passed on with CRLFs");
  assert.match(lf, /\r\nx-abgate-variant: control\r\n/);
  assert.doesNotMatch(lf, /forged/, "the replica's own x-abgate-variant is dropped");
  assert.match(lf, /\r\n\r\nhello$/);
  const slow = await testGateway({ variants: [{ name: "control", url: backend.url }], limits: { responseTimeoutMs: 300, ejectAfterFailures: 1000 } });
  try {
    assert.match(await rawRequest(slow.proxyUrl, handshake("/upgrade-silent"), 1500), /^HTTP\/1\.1 504 /);
    // closed before the head was complete, or without a byte: a 502 for the client and an exposure, not silence
    assert.match(await rawRequest(slow.proxyUrl, handshake("/upgrade-partial-close"), 1000), /^HTTP\/1\.1 502 /);
    assert.match(await rawRequest(slow.proxyUrl, handshake("/upgrade-close"), 1000), /^HTTP\/1\.1 502 /);
    // a folded line (which would continue abgate's own header) is refused as the upstream parser refuses it
    assert.match(await rawRequest(slow.proxyUrl, handshake("/upgrade-folded"), 1000), /^HTTP\/1\.1 502 /);
    const metrics = await (await fetch(`${slow.adminUrl}/metrics`)).text();
    assert.match(metrics, /^abgate_requests_total\{[^}]*status="504"[^}]*\} 1$/m);
    assert.match(metrics, /^abgate_requests_total\{[^}]*status="502"[^}]*\} 3$/m);
  } finally {
    await slow.close();
  }
});

test("a client that leaves during an upgrade's handshake is a 499, and does not count against the replica", async () => {
  const handshake = `GET /upgrade-silent HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`;
  const slow = await testGateway({ variants: [{ name: "control", url: backend.url }], limits: { responseTimeoutMs: 5000, ejectAfterFailures: 2 } });
  try {
    for (let i = 0; i < 4; i++) {
      const sock = connect({ host: "127.0.0.1", port: Number(new URL(slow.proxyUrl).port) });
      await new Promise<void>((resolve) => sock.once("connect", resolve));
      sock.write(handshake);
      await new Promise((r) => setTimeout(r, 100));
      sock.destroy();
    }
    await new Promise((r) => setTimeout(r, 200));
    const metrics = await (await fetch(`${slow.adminUrl}/metrics`)).text();
    assert.match(metrics, /^abgate_requests_total\{[^}]*status="499"[^}]*\} 4$/m);
    assert.doesNotMatch(metrics, /status="502"/);
    const res = await fetch(`${slow.proxyUrl}/after`, { headers: { "x-user-id": "u1" } });
    assert.equal(res.status, 200, "the replica was not ejected");
    await res.arrayBuffer();
  } finally {
    await slow.close();
  }
});

test("a WebSocket handshake gets a plain request's checks: a unit cookie, and 400 for two Hosts, a body, no Host", async () => {
  const noUnit = await rawRequest(gw.proxyUrl, "GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
  assert.match(noUnit, /^HTTP\/1\.1 101/);
  assert.match(noUnit, /\r\nset-cookie: abgate_uid=[0-9a-f-]{36}; /i, "a client with no unit gets the cookie, as for any request");
  const before = backend.heads.length;
  for (const [why, request] of [
    ["two Host lines", "GET /upgrade HTTP/1.1\r\nhost: a\r\nhost: evil\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"],
    ["a body", "GET /upgrade HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\ncontent-length: 3\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nabc"],
    ["no Host", "GET /upgrade HTTP/1.1\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"],
  ]) {
    assert.match(await rawRequest(gw.proxyUrl, request), /^HTTP\/1\.1 400/, why);
  }
  assert.equal(backend.heads.length, before, "none reached the replica");
});

test("an h2c upgrade offer is answered as a plain HTTP/1.1 request: body forwarded, Upgrade dropped, connection kept", async () => {
  const u = new URL(gw.proxyUrl);
  const sock = connect(Number(u.port), u.hostname);
  let got = "";
  sock.on("data", (d: Buffer) => (got += d.toString("latin1")));
  const answers = async (n: number) => {
    const deadline = Date.now() + 3000;
    while ((got.match(/HTTP\/1\.1 /g) ?? []).length < n || !got.endsWith("}")) {
      if (Date.now() > deadline) throw new Error(`no answer ${n}: ${JSON.stringify(got)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  sock.write("POST /h2c HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\ncontent-length: 3\r\n\r\nabc");
  await answers(1);
  assert.match(got, /^HTTP\/1\.1 200/);
  const echoed = JSON.parse(got.slice(got.indexOf("\r\n\r\n") + 4)) as { head: string; body: string };
  assert.equal(echoed.body, "abc");
  assert.doesNotMatch(echoed.head, /upgrade|http2-settings/i);
  sock.write("GET /after HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  await answers(2);
  assert.match(got, /GET \/after HTTP\/1\.1/, "the next request on the same connection is answered");
  sock.destroy();

  // Pipelined right behind the offer, in one packet: not parsed there, so the connection ends after the first
  // answer (and says so), for the client to send it again; it is never left hanging.
  const pipelined = await rawRequest(
    gw.proxyUrl,
    "GET /h2c-1 HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n" +
      "GET /h2c-2 HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n",
    2000,
  );
  assert.match(pipelined, /^HTTP\/1\.1 200[^]*\r\nconnection: close\r\n/i);
});

test("CONNECT is answered 405 and the connection closed", async () => {
  const u = new URL(gw.proxyUrl);
  const sock = connect(Number(u.port), u.hostname);
  let got = "";
  sock.on("data", (d: Buffer) => (got += d.toString("latin1")));
  sock.on("error", () => {});
  const closed = new Promise((r) => sock.on("close", r));
  sock.write("CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n");
  // The default timeouts are long (10 s and more): only closing after the answer ends it this soon.
  await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error("still open after 3 s")), 3000))]);
  assert.match(got, /^HTTP\/1\.1 405 /);
});

test("a chunked request llhttp refuses in the read of its head is answered with its request id; a whole one before bad bytes is served", async () => {
  const chunked = (path: string, body: string) => `POST ${path} HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\ntransfer-encoding: chunked\r\n\r\n${body}`;
  const served = await rawRequest(gw.proxyUrl, `${chunked("/whole-then-garbage", "3\r\nabc\r\n0\r\n\r\n")}GARBAGE\r\n\r\n`, 1000);
  assert.match(served, /^HTTP\/1\.1 200 /, "the whole request before the garbage is answered (it was dropped, with a bare 400)");
  assert.match(served, /"head":"POST \/whole-then-garbage /);

  const refused = await rawRequest(gw.proxyUrl, chunked("/bad-chunk", "zz\r\n"), 1000);
  assert.match(refused, /^HTTP\/1\.1 400 /);
  assert.match(refused, /\r\nx-abgate-request-id: \S+\r\n/, "as when the bad chunk comes in a later read");
  assert.match(refused, /"code":"ABGATE_ERR_BAD_REQUEST"/);
  assert.match(refused, /\r\nconnection: close\r\n/);
  assert.ok(!backend.heads.some((h) => h.startsWith("POST /bad-chunk ")), "nothing of it reached a replica");
});

test("an upgrade or CONNECT behind pipelined requests waits for their answers, then goes as it would alone (RFC 9112 §9.3.2)", async () => {
  const plain = (path: string) => `GET ${path} HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n`;
  const upgrade = "GET /upgrade HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
  // In one write: two requests (the first slow: still being answered when the upgrade is read), the upgrade, and
  // the new protocol's first bytes.
  const tunnelled = await rawRequest(gw.proxyUrl, `${plain("/slow")}${plain("/second")}${upgrade}ping`, 1500);
  const answers = tunnelled.split(/(?=HTTP\/1\.1 )/);
  assert.deepEqual(answers.map((a) => a.slice(0, 12)), ["HTTP/1.1 200", "HTTP/1.1 200", "HTTP/1.1 101"], tunnelled);
  assert.match(answers[0]!, /\r\n\r\nslow$/);
  assert.match(answers[1]!, /GET \/second /);
  assert.match(answers[2]!, /\r\n\r\necho:ping$/, "the bytes behind the handshake reach the replica after its 101");
  // CONNECT behind a request: that one's answer, then the 405, then the end of the connection.
  const startedMs = Date.now();
  const refused = await rawRequest(gw.proxyUrl, `${plain("/slow")}CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n`, 3000);
  assert.deepEqual(refused.split(/(?=HTTP\/1\.1 )/).map((a) => a.slice(0, 12)), ["HTTP/1.1 200", "HTTP/1.1 405"]);
  assert.ok(Date.now() - startedMs < 2500, "the connection ended after the 405");
});

test("a response head that comes alone reaches the client at once (a stream's first event may be seconds away); a stream then silent past responseTimeoutMs is cut, not turned into a 504", async () => {
  const u = new URL(gw.proxyUrl);
  const sock = connect(Number(u.port), u.hostname);
  const arrivals: { ms: number; text: string }[] = [];
  const t0 = performance.now();
  sock.on("data", (d: Buffer) => arrivals.push({ ms: performance.now() - t0, text: d.toString("latin1") }));
  const closed = new Promise((r) => sock.on("close", r));
  sock.write("GET /event-stream HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: close\r\n\r\n");
  await closed;
  assert.match(arrivals[0]!.text, /^HTTP\/1\.1 200 OK\r\n[^]*content-type: text\/event-stream\r\n[^]*\r\n\r\n$/, "the head, alone");
  assert.ok(arrivals[0]!.ms < 400, `the head came ${arrivals[0]!.ms.toFixed(0)} ms after the request; the event 600 ms after`);
  assert.match(arrivals.map((a) => a.text).join(""), /data: first\n\n\r\n0\r\n\r\n$/);

  // A sized answer whose head came alone still goes out in one write, with its body: only a body without a length
  // (chunked, or until close) is what a stream looks like.
  const sized = connect(Number(u.port), u.hostname);
  const reads: string[] = [];
  sized.on("data", (d: Buffer) => reads.push(d.toString("latin1")));
  const sizedClosed = new Promise((r) => sized.on("close", r));
  sized.write("GET /split-sized HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nconnection: close\r\n\r\n");
  await sizedClosed;
  assert.equal(reads.length, 1, `head and body in one write: ${JSON.stringify(reads)}`);
  assert.match(reads[0]!, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nok$/);

  const short = await testGateway({ variants: [{ name: "control", weight: 1, url: backend.url }], limits: { responseTimeoutMs: 300 } });
  try {
    const reply = await rawRequest(short.proxyUrl, "GET /silent-stream HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n", 1500);
    assert.match(reply, /^HTTP\/1\.1 200 OK\r\n/, "the 200 the replica sent, not a 504 after it");
    assert.equal((reply.match(/HTTP\/1\.1 /g) ?? []).length, 1, reply);
    assert.doesNotMatch(reply, /\r\n0\r\n\r\n$/, "cut, not ended as if whole");
  } finally {
    await short.close();
  }
});

test("every answer has a Date: a replica's that lacks one gets abgate's, a replica's own is kept alone, abgate's own answers carry one", async () => {
  const dateLines = (reply: string) => reply.slice(0, reply.indexOf("\r\n\r\n")).split("\r\n").filter((l) => /^date:/i.test(l));
  const undated = await rawRequest(gw.proxyUrl, "GET /undated HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n");
  const [line] = dateLines(undated);
  assert.equal(dateLines(undated).length, 1, undated);
  assert.ok(Math.abs(Date.parse(line!.slice(6)) - Date.now()) < 5000, line);
  assert.match(line!, /^date: \w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/, "IMF-fixdate");
  assert.deepEqual(dateLines(await rawRequest(gw.proxyUrl, "GET /dated HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n")), ["Date: Sun, 06 Nov 1994 08:49:37 GMT"]);
  assert.deepEqual(dateLines(await rawRequest(gw.proxyUrl, "GET /dated-caps HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n")), ["DATE: Sun, 06 Nov 1994 08:49:37 GMT"]);
  const refused = await rawRequest(gw.proxyUrl, `GET / HTTP/1.1\r\nhost: x\r\nx-user-id: ${"u".repeat(600)}\r\n\r\n`);
  assert.match(refused, /^HTTP\/1\.1 400 /);
  assert.equal(dateLines(refused).length, 1, refused);
});

test("interim answers (103 Early Hints) reach an HTTP/1.1 client before the answer, without hop-by-hop fields; not a 100, and nothing for HTTP/1.0", async () => {
  const reply = await rawRequest(gw.proxyUrl, "GET /early-hints HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n", 1000);
  assert.match(reply, /^HTTP\/1\.1 103 Early Hints\r\nlink: <\/a\.css>; rel=preload\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
  assert.doesNotMatch(reply, /keep-alive: timeout|100 Continue/);
  const old = await rawRequest(gw.proxyUrl, "GET /early-hints HTTP/1.0\r\nhost: x\r\nx-user-id: u1\r\n\r\n", 1000);
  assert.match(old, /^HTTP\/1\.1 200 OK\r\n/, "RFC 9110 §15.2: no 1xx to an HTTP/1.0 client");
});

test("a pipelined request over maxBodyBytes is refused in its turn, after the answer before it, and is neither assigned nor recorded", async () => {
  const limited = await testGateway({ variants: [{ name: "control", weight: 1, url: backend.url }], limits: { maxBodyBytes: 100 } });
  const calls: string[] = [];
  const assign = limited.strategy.assign.bind(limited.strategy);
  limited.strategy.assign = (unit, madeUp) => {
    calls.push(unit);
    return assign(unit, madeUp);
  };
  try {
    const big = "x".repeat(200);
    const reply = await rawRequest(
      limited.proxyUrl,
      "GET /slow HTTP/1.1\r\nhost: x\r\nx-user-id: first\r\n\r\n" +
        `POST /upload HTTP/1.1\r\nhost: x\r\nx-user-id: too-big\r\ntransfer-encoding: chunked\r\n\r\n${big.length.toString(16)}\r\n${big}\r\n0\r\n\r\n`,
      1500,
    );
    const statuses = [...reply.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1]);
    assert.deepEqual(statuses, ["200", "413"], "answers in request order");
    // Its whole body came while it waited, so no variant ever saw it: the 413 names none, and nothing records it.
    assert.doesNotMatch(reply.slice(reply.lastIndexOf("HTTP/1.1 413")), /x-abgate-variant/i);
    assert.deepEqual(calls, ["first"]);
    // (the batcher writes within 100 ms of a row; both answers are out, so both rows would be waiting by now)
    const query = "SELECT unit, status FROM exposures ORDER BY ts";
    for (let i = 0; i < 100 && selectFromStore(limited, query).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 250));
    assert.deepEqual(selectFromStore(limited, query), [{ unit: "first", status: 200 }]);
  } finally {
    limited.strategy.assign = assign;
    await limited.close();
  }
});

test("a request that expects 100-continue and is refused before its body ends the connection, which cannot be read on", async () => {
  const before = backend.heads.length;
  // A unit longer than abgate accepts: refused (400) before any 100 Continue. The client then sends no body but its
  // next request, which a kept-alive connection would read as this request's body.
  const reply = await rawRequest(
    gw.proxyUrl,
    `POST /x HTTP/1.1\r\nhost: x\r\nx-user-id: ${"u".repeat(600)}\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n`,
    2000,
  );
  assert.match(reply, /^HTTP\/1\.1 400 [^]*\r\nconnection: close\r\n/i);
  assert.doesNotMatch(reply, /100 Continue/);
  assert.equal(backend.heads.length, before);
});

test("a request whose last transfer coding is not chunked gets 400 and never reaches a replica, even over a pooled connection", async () => {
  // a pooled connection to the replica, on which a head would go out at once
  assert.match(await rawRequest(gw.proxyUrl, "GET /warm HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\n\r\n"), /^HTTP\/1\.1 200/);
  // (a tab after chunked: llhttp refuses it after the head, and Node trims it from the value abgate sees)
  for (const coding of ["gzip", "xchunked", "chunked, gzip", "chunked\t", "gzip, chunked \t"]) {
    const before = backend.heads.length;
    const res = await rawRequest(gw.proxyUrl, `DELETE /refused HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\ntransfer-encoding: ${coding}\r\n\r\n`);
    assert.match(res, /^HTTP\/1\.1 400 /, coding);
    assert.equal((res.match(/HTTP\/1\.1 /g) ?? []).length, 1, `one answer: ${res}`);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(backend.heads.slice(before), [], `${coding}: nothing reached the replica`);
  }
});

test("a refused WebSocket handshake whose body is still coming is read off and closed, and does not hold a stop", async () => {
  const u = new URL(gw.proxyUrl);
  const handshake = "GET /ws HTTP/1.1\r\nhost: x\r\nx-user-id: u1\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 200000\r\n\r\n";
  const fds = () => readdirSync("/proc/self/fd").length;
  const fdsBefore = fds();
  for (let i = 0; i < 20; i++) {
    const sock = connect(Number(u.port), u.hostname);
    let got = "";
    sock.on("data", (d: Buffer) => (got += d.toString("latin1")));
    sock.on("error", () => {});
    const closed = new Promise<void>((r) => sock.on("close", () => r()));
    sock.write(handshake);
    sock.write(Buffer.alloc(200_000, 0x61));
    sock.end();
    await closed;
    assert.match(got, /^HTTP\/1\.1 400 /);
  }
  // abgate's side of each is closed too (it runs in this process): no file descriptor left behind
  for (let i = 0; fds() > fdsBefore + 2; i++) {
    assert.ok(i < 100, `${fds() - fdsBefore} file descriptors more than before`);
    await new Promise((r) => setTimeout(r, 20));
  }

  // One that stays open and silent: a stop cuts it instead of waiting for it forever.
  const { testGateway: start } = await import("./helpers/gateway.ts");
  const other = await start({ variants: [{ name: "control", url: backend.url }] });
  const held = connect(Number(new URL(other.proxyUrl).port), "127.0.0.1");
  held.on("error", () => {});
  await new Promise<void>((r) => held.on("connect", () => r()));
  held.write(handshake);
  held.write(Buffer.alloc(100_000, 0x61));
  await new Promise((r) => setTimeout(r, 200));
  const s0 = Date.now();
  await other.close();
  assert.ok(Date.now() - s0 < 3000, `stopped in ${Date.now() - s0} ms`);
  held.destroy();
});

test("an answer cut off mid-body ends the client's connection with a reset, so that a close-delimited body does not look whole", async () => {
  const u = new URL(gw.proxyUrl);
  for (const version of ["1.0", "1.1"]) {
    const sock = connect(Number(u.port), u.hostname);
    let got = "";
    sock.on("data", (d: Buffer) => (got += d.toString("latin1")));
    const ending = new Promise<string>((resolve) => {
      sock.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
      sock.on("end", () => resolve("FIN"));
    });
    sock.write(`GET /cut-chunked HTTP/${version}\r\nhost: x\r\nx-user-id: u1\r\n\r\n`);
    assert.equal(await ending, "ECONNRESET", `HTTP/${version}: ${JSON.stringify(got)}`);
    assert.match(got, /^HTTP\/1\.1 200 [^]*hello/);
    sock.destroy();
  }
});

test("a body streamed to a slow client arrives intact while other answers flow through the same process", async () => {
  // Body pieces of 16 KiB and more are copied into pooled buffers that the upstream side reads into again once the
  // client's socket has written them: one given back early would be overwritten by another replica's bytes.
  const big = 8_000_000;
  const slow = connect({ host: "127.0.0.1", port: Number(new URL(gw.proxyUrl).port) });
  await new Promise<void>((resolve) => slow.once("connect", () => resolve()));
  slow.pause();
  slow.write(`GET /pattern/${big}/1 HTTP/1.1\r\nhost: x\r\nx-user-id: slow\r\nconnection: close\r\n\r\n`);
  const chunks: Buffer[] = [];
  const whole = new Promise<Buffer>((resolve, reject) => {
    slow.on("data", (c: Buffer) => {
      chunks.push(c);
      slow.pause(); // one read at a time (see `reading`)
    });
    slow.on("end", () => resolve(Buffer.concat(chunks)));
    slow.on("error", reject);
  });
  let busy = true;
  const others = (async () => {
    for (let i = 0; busy; i++) {
      const seed = 5 + (i % 50);
      // (bigger than one read: its first pieces are pooled too, and take the buffers given back)
      const res = await fetch(`${gw.proxyUrl}/pattern/200000/${seed}`, { headers: { "x-user-id": `fast-${i}` } });
      assert.ok(Buffer.from(await res.arrayBuffer()).equals(patterned(200000, seed)), `fast body ${i}`);
    }
  })();
  const reading = setInterval(() => slow.resume(), 2);
  try {
    const got = await whole;
    const bodyAt = got.indexOf("\r\n\r\n") + 4;
    assert.match(got.subarray(0, bodyAt).toString("latin1"), /^HTTP\/1\.1 200 /);
    assert.equal(got.length - bodyAt, big);
    assert.ok(got.subarray(bodyAt).equals(patterned(big, 1)), "the slow client's body is intact");
  } finally {
    clearInterval(reading);
    busy = false;
    await others;
    slow.destroy();
  }
});

test("2,400 pipelined requests answered at once behind one in flight are all answered, in order (no stack overflow)", async () => {
  const down = await testGateway({
    allowForce: true,
    fallback: "reject",
    variants: [
      { name: "control", weight: 0, url: backend.url },
      // nothing listens there: unhealthy after its first check, so its requests get 503 at once
      { name: "down", weight: 1, url: "http://127.0.0.1:9", health: { path: "/health", intervalMs: 50, timeoutMs: 50, rise: 1, fall: 1 } },
    ],
  });
  try {
    for (let i = 0; i < 100; i++) {
      const view = (await (await admin(down, "GET", "/v1/experiment")).json()) as { variants: { name: string; replicas: { health: string }[] }[] };
      if (view.variants.find((v) => v.name === "down")!.replicas.every((r) => r.health !== "healthy")) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    // one read's worth (26 bytes each): each answered while the one before it finished, which recursed before
    const first = "GET /slow HTTP/1.1\r\nhost: x\r\nx-abgate-force-variant: control\r\n\r\n";
    const reply = await rawRequest(down.proxyUrl, first + "GET / HTTP/1.1\r\nHost:a\r\n\r\n".repeat(2400), 2000);
    const statuses = [...reply.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => m[1]);
    assert.equal(statuses.length, 2401);
    assert.equal(statuses[0], "200");
    assert.deepEqual([...new Set(statuses.slice(1))], ["503"]);
  } finally {
    await down.close();
  }
});

test("a client that pipelines and never reads is not read from once its answers back up, and is cut after idleTimeoutMs", async () => {
  const idle = await testGateway({ variants: [{ name: "control", weight: 1, url: backend.url }], limits: { idleTimeoutMs: 1500 } });
  try {
    const socket = connect(Number(new URL(idle.proxyUrl).port), "127.0.0.1");
    await new Promise<void>((r) => socket.once("connect", () => r()));
    socket.pause(); // reads nothing
    // refused at once (a unit with a NUL: 400), as many as it will take, for 3 s
    const chunk = "GET /?user=%00 HTTP/1.1\r\nhost: a\r\n\r\n".repeat(2000);
    let sent = 0;
    let closed = false;
    socket.on("close", () => (closed = true));
    socket.on("error", () => {});
    const until = Date.now() + 3_000;
    while (Date.now() < until && !closed) {
      if (socket.write(chunk)) sent += chunk.length;
      else await Promise.race([new Promise((r) => socket.once("drain", r)), new Promise((r) => setTimeout(r, 100))]);
    }
    // before: it read all it was sent (27 MB in 4.5 s in a review) and kept every answer
    assert.ok(sent < 20_000_000, `${sent} bytes of requests taken`);
    for (let i = 0; i < 60 && !closed; i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(closed, "cut once it had not read for idleTimeoutMs");
    socket.destroy();
  } finally {
    await idle.close();
  }
});
