/**
 * The client half of the proxy speaks HTTP/1.x itself (Node's llhttp parser, no http.Server): these tests hold it
 * to what http.Server and the usual proxies do, over raw sockets so that every byte on the wire is checked.
 */
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { startBackend, type Backend } from "./helpers/backends.ts";
import { testGateway } from "./helpers/gateway.ts";
import { rawRequest } from "./helpers/raw.ts";

let a: Backend;
let gw: Awaited<ReturnType<typeof testGateway>>;

before(async () => {
  a = await startBackend("a", (req, res) => {
    if (req.url?.startsWith("/slow")) {
      setTimeout(() => res.end("slow"), 60);
      return;
    }
    if (req.url?.startsWith("/until-close")) {
      // No length, no chunks: the body ends with the connection.
      res.writeHead(200, { connection: "close" });
      res.end("streamed");
      return;
    }
    const body = `${req.method} ${req.url}`;
    res.writeHead(200, { "content-type": "text/plain", "content-length": Buffer.byteLength(body) });
    res.end(req.method === "HEAD" ? undefined : body);
  });
  gw = await testGateway({ variants: [{ name: "control", url: a.url }], limits: { headersTimeoutMs: 400, requestTimeoutMs: 600, idleTimeoutMs: 800 } });
});

after(async () => {
  await gw.close();
  await a.close();
});

/** A raw connection that collects what the proxy sends and reports when the proxy closes it. */
function open(url: string): { sock: Socket; text(): string; closed: Promise<void>; waitFor(re: RegExp, ms?: number): Promise<string> } {
  const u = new URL(url);
  const sock = connect({ host: u.hostname, port: Number(u.port) });
  let buf = "";
  const waiters: { re: RegExp; resolve(s: string): void }[] = [];
  sock.on("data", (d: Buffer) => {
    buf += d.toString("latin1");
    for (const w of waiters.splice(0)) (w.re.test(buf) ? w.resolve(buf) : waiters.push(w));
  });
  sock.on("error", () => {});
  const closed = new Promise<void>((r) => sock.on("close", () => r()));
  return {
    sock,
    text: () => buf,
    closed,
    waitFor: (re, ms = 3000) =>
      new Promise<string>((resolve, reject) => {
        if (re.test(buf)) return resolve(buf);
        const t = setTimeout(() => reject(new Error(`timed out waiting for ${re} in ${JSON.stringify(buf)}`)), ms);
        waiters.push({ re, resolve: (s) => (clearTimeout(t), resolve(s)) });
      }),
  };
}

function count(text: string, re: RegExp): number {
  return (text.match(re) ?? []).length;
}

test("pipelined requests are answered in order, even when the first is the slowest", async () => {
  const c = open(gw.proxyUrl);
  c.sock.write(
    "GET /slow/1 HTTP/1.1\r\nhost: x\r\nx-user-id: p\r\n\r\n" +
      "GET /fast/2 HTTP/1.1\r\nhost: x\r\nx-user-id: p\r\n\r\n" +
      "HEAD /fast/3 HTTP/1.1\r\nhost: x\r\nx-user-id: p\r\n\r\n" +
      "GET /fast/4 HTTP/1.1\r\nhost: x\r\nx-user-id: p\r\n\r\n",
  );
  const text = await c.waitFor(/GET \/fast\/4$/);
  const bodies = [...text.matchAll(/\r\n\r\n(slow|GET \/fast\/\d)/g)].map((m) => m[1]);
  assert.deepEqual(bodies, ["slow", "GET /fast/2", "GET /fast/4"]);
  assert.equal(count(text, /HTTP\/1\.1 200 OK\r\n/g), 4);
  assert.ok(text.indexOf("content-length: 11") < text.lastIndexOf("GET /fast/4"), "the HEAD answer carries the length but no body");
  c.sock.destroy();
});

test("HTTP/1.0 clients: closed after the answer unless they ask for keep-alive; a body of unknown length ends with the connection", async () => {
  const plain = await rawRequest(gw.proxyUrl, "GET /one HTTP/1.0\r\nx-user-id: h\r\n\r\n", 2000);
  assert.match(plain, /^HTTP\/1\.1 200 OK\r\n/);
  assert.match(plain, /connection: close\r\n/i);
  assert.match(plain, /GET \/one$/);

  const c = open(gw.proxyUrl);
  c.sock.write("GET /two HTTP/1.0\r\nx-user-id: h\r\nconnection: keep-alive\r\n\r\n");
  await c.waitFor(/GET \/two$/);
  assert.match(c.text(), /connection: keep-alive\r\n/i);
  c.sock.write("GET /three HTTP/1.0\r\nx-user-id: h\r\nconnection: keep-alive\r\n\r\n");
  await c.waitFor(/GET \/three$/);
  c.sock.destroy();

  const streamed = await rawRequest(gw.proxyUrl, "GET /until-close HTTP/1.0\r\nx-user-id: h\r\n\r\n", 2000);
  assert.match(streamed, /connection: close\r\n/i);
  assert.doesNotMatch(streamed, /transfer-encoding/i);
  assert.match(streamed, /\r\n\r\nstreamed$/);

  const chunked = await rawRequest(gw.proxyUrl, "GET /until-close HTTP/1.1\r\nhost: x\r\nx-user-id: h\r\n\r\n", 2000);
  assert.match(chunked, /transfer-encoding: chunked\r\n/i);
  assert.match(chunked, /\r\n\r\n8\r\nstreamed\r\n0\r\n\r\n$/);
});

test("Connection: close from the client ends the connection after the answer", async () => {
  const c = open(gw.proxyUrl);
  c.sock.write("GET /bye HTTP/1.1\r\nhost: x\r\nx-user-id: c\r\nconnection: close\r\n\r\nGET /never HTTP/1.1\r\nhost: x\r\n\r\n");
  await c.closed;
  assert.match(c.text(), /connection: close\r\n/i);
  assert.equal(count(c.text(), /HTTP\/1\.1 200/g), 1, "a request after Connection: close is not answered");
});

test("Expect: 100-continue gets 100 Continue, then the real answer; an HTTP/1.1 request without Host gets 400", async () => {
  const c = open(gw.proxyUrl);
  c.sock.write("POST /upload HTTP/1.1\r\nhost: x\r\nx-user-id: e\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n");
  await c.waitFor(/^HTTP\/1\.1 100 Continue\r\n\r\n/);
  c.sock.write("hello");
  await c.waitFor(/POST \/upload$/);
  c.sock.destroy();
  const noHost = await rawRequest(gw.proxyUrl, "GET / HTTP/1.1\r\nx-user-id: e\r\n\r\n");
  assert.match(noHost, /^HTTP\/1\.1 400 /);
});

test("a body that stops arriving gets 408 after requestTimeoutMs; an idle keep-alive connection is closed after idleTimeoutMs", async () => {
  const slowBody = open(gw.proxyUrl);
  const t0 = Date.now();
  slowBody.sock.write("POST /upload HTTP/1.1\r\nhost: x\r\nx-user-id: t\r\ncontent-length: 100\r\n\r\nonly part");
  await slowBody.closed;
  const bodyMs = Date.now() - t0;
  assert.match(slowBody.text(), /^HTTP\/1\.1 408 /);
  assert.ok(bodyMs >= 500 && bodyMs < 2500, `cut after ${bodyMs} ms`);

  const idle = open(gw.proxyUrl);
  idle.sock.write("GET /x HTTP/1.1\r\nhost: x\r\nx-user-id: t\r\n\r\n");
  await idle.waitFor(/GET \/x$/);
  const t1 = Date.now();
  await idle.closed;
  const idleMs = Date.now() - t1;
  assert.ok(idleMs >= 700 && idleMs < 2500, `idle connection closed after ${idleMs} ms`);
});

test("headers split over many packets and a long header list are reassembled", async () => {
  const c = open(gw.proxyUrl);
  const many = Array.from({ length: 60 }, (_, i) => `x-h${i}: v${i}\r\n`).join("");
  const req = `GET /pieces HTTP/1.1\r\nhost: x\r\nx-user-id: s\r\n${many}\r\n`;
  for (let i = 0; i < req.length; i += 7) {
    c.sock.write(req.slice(i, i + 7));
    await new Promise((r) => setImmediate(r));
  }
  await c.waitFor(/GET \/pieces$/);
  const seen = a.requests.at(-1)!;
  assert.equal(seen.headers["x-h59"], "v59");
  assert.equal(seen.headers["x-abgate-unit"], "s");
  c.sock.destroy();
});

test("a response header with a bare line feed is refused (502), not relayed", async () => {
  const { createServer } = await import("node:net");
  const evil = createServer((s) => {
    s.once("data", () => s.end("HTTP/1.1 200 OK\r\nx-a: 1\nset-cookie: injected=1\r\ncontent-length: 2\r\n\r\nok"));
  });
  await new Promise<void>((r) => evil.listen(0, "127.0.0.1", r));
  const port = (evil.address() as import("node:net").AddressInfo).port;
  const g = await testGateway({ variants: [{ name: "control", url: `http://127.0.0.1:${port}` }] });
  try {
    const res = await fetch(`${g.proxyUrl}/`, { headers: { "x-user-id": "z" } });
    assert.equal(res.status, 502);
    assert.equal(res.headers.get("set-cookie"), null);
  } finally {
    await g.close();
    evil.close();
  }
});

test("request smuggling shapes are refused with 400 before anything reaches a replica; a coded chunked body keeps its coding", async () => {
  const before = a.requests.length;
  for (const attack of [
    "POST /cl-te HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    "POST /cl-cl HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabcde",
    "POST /te-not-last HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "GET /folded HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n  b\r\n\r\n",
    "GET /bare-lf HTTP/1.1\nhost: x\n\n",
  ]) {
    const reply = await rawRequest(gw.proxyUrl, attack);
    assert.match(reply, /^HTTP\/1\.1 400 /, attack);
    assert.equal(count(reply, /HTTP\/1\.1 /g), 1, `one answer only: ${attack}`);
  }
  assert.equal(a.requests.length, before, "no replica saw any of them");

  const coded = await rawRequest(gw.proxyUrl, "POST /coded HTTP/1.1\r\nhost: x\r\nx-user-id: g\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 1000);
  assert.match(coded, /POST \/coded$/);
  const seen = a.requests.at(-1)!;
  assert.equal(seen.headers["transfer-encoding"], "gzip, chunked");
  assert.equal(seen.body, 3);
});

test("a chunked body's trailers stay with it, not on the next request; abgate's own answers to HEAD have no body; HTTP/1.0 with Transfer-Encoding is closed after", async () => {
  const before = a.requests.length;
  const trailed = await rawRequest(
    gw.proxyUrl,
    "POST /a HTTP/1.1\r\nhost: x\r\nx-user-id: alice\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-user-id: victim\r\nx-injected: 1\r\n\r\n" +
      "GET /b HTTP/1.1\r\nhost: x\r\nx-user-id: bob\r\nconnection: close\r\n\r\n",
    1000,
  );
  assert.equal(count(trailed, /HTTP\/1\.1 200 /g), 2, trailed);
  const [first, second] = a.requests.slice(before);
  assert.deepEqual([first?.url, first?.body], ["/a", 3]);
  assert.equal(second?.url, "/b", "not /a/b: the trailers' parts did not start the next request");
  assert.equal(second?.headers["x-user-id"], "bob");
  assert.equal(second?.headers["x-injected"], undefined);

  // RFC 9110 §9.3.2: with a body, the next answer would be read as this one's end
  const head = await rawRequest(gw.proxyUrl, "HEAD /?user=a%00b HTTP/1.1\r\nhost: x\r\n\r\nGET /next HTTP/1.1\r\nhost: x\r\nx-user-id: n\r\nconnection: close\r\n\r\n", 1000);
  assert.match(head, /^HTTP\/1\.1 400 [^]*?\r\ncontent-length: [1-9]\d*\r\n(?:[^\r]+\r\n)*\r\nHTTP\/1\.1 200 /, head);
  assert.match(head, /GET \/next$/);

  // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing: the connection ends after it
  const ten = open(gw.proxyUrl);
  ten.sock.write("POST /ten HTTP/1.0\r\nhost: x\r\nx-user-id: u\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  await ten.closed;
  assert.match(ten.text(), /^HTTP\/1\.1 200 [^]*\r\nconnection: close\r\n[^]*POST \/ten$/);
});

test("a Host value that no host and port could be is refused with 400 before any replica sees it (RFC 9112 §3.2)", async () => {
  const before = a.requests.length;
  for (const host of ["a b@@", "evil.example/path", "x\"y", "bad\\host", "é.example"]) {
    const res = await rawRequest(gw.proxyUrl, Buffer.from(`GET /h HTTP/1.1\r\nhost: ${host}\r\nx-user-id: h\r\n\r\n`, "utf8"));
    assert.match(res, /^HTTP\/1\.1 400 [^]*invalid Host header/, host);
  }
  assert.equal(a.requests.length, before, "no replica saw any of them");
  for (const host of ["example.com", "example.com:8080", "127.0.0.1:9", "[::1]:80", "xn--bcher-kva.example", ""]) {
    const res = await rawRequest(gw.proxyUrl, `GET /h HTTP/1.1\r\nhost: ${host}\r\nx-user-id: h\r\nconnection: close\r\n\r\n`);
    assert.match(res, /^HTTP\/1\.1 200 /, JSON.stringify(host));
  }
});
