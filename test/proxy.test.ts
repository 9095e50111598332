import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { request as httpRequest, Agent } from "node:http";
import { createHash } from "node:crypto";
import { startBackend, type Backend } from "./helpers/backends.ts";
import { selectFromStore, testGateway } from "./helpers/gateway.ts";
import { rawRequest } from "./helpers/raw.ts";

let a: Backend;
let b: Backend;
let gw: Awaited<ReturnType<typeof testGateway>>;

before(async () => {
  a = await startBackend("a", (req, res) => {
    const path = req.url ?? "/";
    if (path.startsWith("/chunked")) {
      res.writeHead(200, { "content-type": "text/plain", "x-backend": "a" });
      res.write("one,");
      setTimeout(() => {
        res.write("two,");
        res.end("three");
      }, 20);
      return;
    }
    if (path.startsWith("/hop")) {
      res.writeHead(200, { connection: "keep-alive, x-secret", "keep-alive": "timeout=5", "x-secret": "drop-me", "proxy-authenticate": "Basic", "x-kept": "yes", "content-length": "2" });
      res.end("ok");
      return;
    }
    if (path.startsWith("/status/")) {
      const code = Number(path.slice(8));
      res.writeHead(code, { "content-length": "0" });
      res.end();
      return;
    }
    if (path.startsWith("/cookies")) {
      res.setHeader("set-cookie", ["a=1", "b=2"]);
      res.end("c");
      return;
    }
    const body = JSON.stringify({ backend: "a", method: req.method, url: req.url, headers: req.headers });
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(req.method === "HEAD" ? undefined : body);
  });
  b = await startBackend("b");
  gw = await testGateway({
    variants: [
      { name: "control", weight: 1, url: a.url },
      { name: "treatment", weight: 0, url: b.url },
    ],
    allowForce: true,
    limits: { maxBodyBytes: 1024 * 1024, maxHeaderBytes: 4096 },
  });
});

after(async () => {
  await gw.close();
  await a.close();
  await b.close();
});

test("every method is forwarded with its body, and the response carries variant and request id", async () => {
  for (const method of ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]) {
    const body = method === "GET" || method === "OPTIONS" ? undefined : `payload-${method}`;
    const res = await fetch(`${gw.proxyUrl}/echo?m=${method}`, { method, body, headers: { "x-user-id": "alice" } });
    assert.equal(res.status, 200, method);
    assert.equal(res.headers.get("x-abgate-variant"), "control");
    assert.match(res.headers.get("x-abgate-request-id") ?? "", /^[A-Za-z0-9_-]+-[0-9a-z]+$/);
    const json = (await res.json()) as { method: string; url: string };
    assert.equal(json.method, method);
    assert.equal(json.url, `/echo?m=${method}`);
  }
  const last = a.requests.filter((r) => r.method === "PATCH").at(-1)!;
  assert.equal(last.body, "payload-PATCH".length);
  const head = await fetch(`${gw.proxyUrl}/echo`, { method: "HEAD", headers: { "x-user-id": "alice" } });
  assert.equal(head.status, 200);
  assert.equal(await head.text(), "");
});

test("forwardedHeaders.trustedIPs: a trusted peer's x-forwarded-proto and -host reach the replica (a TLS terminator in front); malformed ones do not", async () => {
  const behind = await testGateway({ forwardedHeaders: { trustedIPs: ["127.0.0.0/8"] }, variants: [{ name: "control", weight: 1, url: a.url }] });
  const untrusting = await testGateway({ forwardedHeaders: { trustedIPs: ["10.0.0.0/8", "::1"] }, variants: [{ name: "control", weight: 1, url: a.url }] });
  try {
    const seen = async (gateway: typeof gw, extra: Record<string, string>) => {
      const res = await fetch(`${gateway.proxyUrl}/echo`, { headers: { "x-user-id": "tls", ...extra } });
      const { headers } = (await res.json()) as { headers: Record<string, string> };
      return [headers["x-forwarded-proto"], headers["x-forwarded-host"]];
    };
    assert.deepEqual(await seen(behind, { "x-forwarded-proto": "HTTPS", "x-forwarded-host": "app.example.com" }), ["https", "app.example.com"]);
    // The last of a list: the value the nearest trusted peer added; the ones before may be the client's own.
    assert.deepEqual(await seen(behind, { "x-forwarded-proto": "http, https", "x-forwarded-host": "evil.example, app.example.com" }), ["https", "app.example.com"]);
    assert.deepEqual(await seen(behind, {}), ["http", new URL(behind.proxyUrl).host], "none given: abgate's own");
    assert.deepEqual(await seen(behind, { "x-forwarded-proto": "ht tp", "x-forwarded-host": "evil.example/path" }), ["http", new URL(behind.proxyUrl).host], "malformed: abgate's own");
    assert.deepEqual(await seen(untrusting, { "x-forwarded-proto": "https", "x-forwarded-host": "app.example.com" }), ["http", new URL(untrusting.proxyUrl).host], "127.0.0.1 is not in the list");
    // RFC 7239's Forwarded and X-Real-IP say the same things: a trusted peer's reach the replica, a client's own do not
    const other = async (gateway: typeof gw) => {
      const res = await fetch(`${gateway.proxyUrl}/echo`, { headers: { "x-user-id": "tls", forwarded: "for=1.2.3.4;proto=https;host=evil.example", "x-real-ip": "1.2.3.4" } });
      const { headers } = (await res.json()) as { headers: Record<string, string> };
      return [headers.forwarded, headers["x-real-ip"]];
    };
    assert.deepEqual(await other(behind), ["for=1.2.3.4;proto=https;host=evil.example", "1.2.3.4"]);
    assert.deepEqual(await other(untrusting), [undefined, undefined], "before, a client's Forwarded reached the replica");
  } finally {
    await behind.close();
    await untrusting.close();
  }
});

test("x-forwarded-* are set, hop-by-hop headers are dropped both ways", async () => {
  const res = await fetch(`${gw.proxyUrl}/echo`, {
    headers: { "x-user-id": "bob", "x-forwarded-for": "10.9.9.9", "x-forwarded-proto": "https", "x-forwarded-host": "evil.example", "x-abgate-variant": "forged", "proxy-authorization": "secret", te: "trailers" },
  });
  const { headers } = (await res.json()) as { headers: Record<string, string> };
  assert.equal(headers["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
  assert.equal(headers["x-forwarded-proto"], "http", "a client's own is replaced");
  assert.equal(headers["x-forwarded-host"], new URL(gw.proxyUrl).host);
  assert.equal(headers["x-abgate-variant"], "control");
  assert.equal(headers["proxy-authorization"], undefined);
  assert.equal(headers.te, undefined);
  assert.equal(headers["x-abgate-unit"], "bob");

  const hop = await fetch(`${gw.proxyUrl}/hop`, { headers: { "x-user-id": "bob" } });
  assert.equal(hop.headers.get("x-kept"), "yes");
  assert.equal(hop.headers.get("x-secret"), null);
  assert.equal(hop.headers.get("proxy-authenticate"), null);
  // the proxy announces its own keep-alive to the client; the replica's (timeout=5) is not relayed
  assert.notEqual(hop.headers.get("keep-alive"), "timeout=5");
  const cookies = await fetch(`${gw.proxyUrl}/cookies`, { headers: { "x-user-id": "bob" } });
  assert.deepEqual(cookies.headers.getSetCookie(), ["a=1", "b=2"]);
});

test("chunked responses and chunked request bodies stream through", async () => {
  const res = await fetch(`${gw.proxyUrl}/chunked`, { headers: { "x-user-id": "carol" } });
  assert.equal(await res.text(), "one,two,three");
  // a chunked request body (no content-length)
  const reply = await new Promise<string>((resolve, reject) => {
    const req = httpRequest(`${gw.proxyUrl}/upload`, { method: "POST", headers: { "x-user-id": "carol", "transfer-encoding": "chunked" } }, (r) => {
      let t = "";
      r.on("data", (c) => (t += c));
      r.on("end", () => resolve(t));
    });
    req.on("error", reject);
    req.write("a".repeat(1000));
    setTimeout(() => req.end("b".repeat(500)), 10);
  });
  assert.equal(a.requests.at(-1)!.body, 1500);
  assert.match(reply, /"method":"POST"/);
});

test("keep-alive: many requests reuse one client connection", async () => {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set<unknown>();
  for (let i = 0; i < 20; i++) {
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest(`${gw.proxyUrl}/echo`, { agent, headers: { "x-user-id": "dave" } }, (r) => {
        sockets.add(r.socket);
        r.resume();
        r.on("end", () => resolve());
      });
      req.on("error", reject);
      req.end();
    });
  }
  agent.destroy();
  assert.equal(sockets.size, 1);
});

test("oversized headers get 431, oversized bodies 413, malformed requests 400", async () => {
  const big = await rawRequest(gw.proxyUrl, `GET / HTTP/1.1\r\nhost: x\r\nx-user-id: e\r\nx-big: ${"z".repeat(8000)}\r\n\r\n`);
  assert.match(big, /^HTTP\/1\.1 431 /);
  const tooLarge = await fetch(`${gw.proxyUrl}/upload`, { method: "POST", body: Buffer.alloc(2 * 1024 * 1024), headers: { "x-user-id": "e" } });
  assert.equal(tooLarge.status, 413);
  const garbage = await rawRequest(gw.proxyUrl, "THIS IS NOT HTTP\r\n\r\n");
  assert.match(garbage, /^HTTP\/1\.1 400 /);
});

test("the unit comes from header, query or cookie; a request without one gets a cookie", async () => {
  await fetch(`${gw.proxyUrl}/echo?user=q1`);
  assert.equal(a.requests.at(-1)!.headers["x-abgate-unit"], "q1");
  await fetch(`${gw.proxyUrl}/echo`, { headers: { cookie: "other=1; abgate_uid=c1" } });
  assert.equal(a.requests.at(-1)!.headers["x-abgate-unit"], "c1");
  const res = await fetch(`${gw.proxyUrl}/echo`);
  const cookie = res.headers.get("set-cookie") ?? "";
  assert.match(cookie, /^abgate_uid=[0-9a-f-]{36}; Path=\/; Max-Age=31536000; SameSite=Lax; HttpOnly$/);
  const id = cookie.slice("abgate_uid=".length, cookie.indexOf(";"));
  assert.equal(a.requests.at(-1)!.headers["x-abgate-unit"], id);
});

test("a request refused on its head (417, 413 by its content-length) is not assigned: the strategy never sees its unit, and no exposure records it", async () => {
  const calls: string[] = [];
  const assign = gw.strategy.assign.bind(gw.strategy);
  gw.strategy.assign = (unit, madeUp) => {
    calls.push(unit);
    return assign(unit, madeUp);
  };
  try {
    const expect = await rawRequest(gw.proxyUrl, "GET /echo HTTP/1.1\r\nhost: x\r\nx-user-id: refused-417\r\nexpect: bogus\r\n\r\n");
    assert.match(expect, /^HTTP\/1\.1 417 /);
    const big = await rawRequest(gw.proxyUrl, `POST /upload HTTP/1.1\r\nhost: x\r\nx-user-id: refused-413\r\ncontent-length: ${2 * 1024 * 1024}\r\n\r\n`);
    assert.match(big, /^HTTP\/1\.1 413 /);
    for (const answer of [expect, big]) assert.doesNotMatch(answer, /x-abgate-variant/i);
    await (await fetch(`${gw.proxyUrl}/echo`, { headers: { "x-user-id": "served" } })).arrayBuffer();
    assert.deepEqual(calls, ["served"]);
    // (the batcher writes within 100 ms; the refused requests came first)
    const query = "SELECT unit FROM exposures WHERE unit LIKE 'refused-%' OR unit = 'served'";
    for (let i = 0; i < 100 && selectFromStore(gw, query).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    const rows = selectFromStore(gw, query) as { unit: string }[];
    assert.deepEqual(rows.map((r) => r.unit), ["served"]);
  } finally {
    gw.strategy.assign = assign;
  }
});

test("the strategy is told which units the proxy made up (the bandit keeps those apart), for requests and upgrades", async () => {
  const calls: [string, boolean | undefined][] = [];
  const assign = gw.strategy.assign.bind(gw.strategy);
  gw.strategy.assign = (unit, madeUp) => {
    calls.push([unit, madeUp]);
    return assign(unit, madeUp);
  };
  try {
    await (await fetch(`${gw.proxyUrl}/echo`, { headers: { "x-user-id": "h1" } })).arrayBuffer();
    await (await fetch(`${gw.proxyUrl}/echo?user=q1`)).arrayBuffer();
    await (await fetch(`${gw.proxyUrl}/echo`, { headers: { cookie: "abgate_uid=c1" } })).arrayBuffer();
    const res = await fetch(`${gw.proxyUrl}/echo`);
    await res.arrayBuffer();
    const made = /abgate_uid=([^;]+)/.exec(res.headers.get("set-cookie") ?? "")![1]!;
    const upgrade = (unitHeader: string) =>
      rawRequest(gw.proxyUrl, `GET /ws HTTP/1.1\r\nhost: x\r\n${unitHeader}connection: Upgrade\r\nupgrade: websocket\r\n\r\n`, 200);
    await upgrade("x-user-id: w1\r\n");
    await upgrade("");
    assert.deepEqual(calls.slice(0, 5), [["h1", false], ["q1", false], ["c1", false], [made, true], ["w1", false]]);
    assert.equal(calls.length, 6);
    assert.match(calls[5]![0], /^[0-9a-f-]{36}$/);
    assert.equal(calls[5]![1], true);
  } finally {
    delete (gw.strategy as { assign?: unknown }).assign;
  }
});

test("a UTF-8 unit in a header or cookie is the same unit as in the query string", async () => {
  await fetch(`${gw.proxyUrl}/echo?user=${encodeURIComponent("zoë-😀")}`);
  const fromQuery = a.requests.at(-1)!.headers["x-abgate-unit"];
  assert.equal(fromQuery, encodeURIComponent("zoë-😀"));
  await rawRequest(gw.proxyUrl, Buffer.concat([Buffer.from("GET /echo HTTP/1.1\r\nhost: x\r\nx-user-id: "), Buffer.from("zoë-😀"), Buffer.from("\r\n\r\n")]));
  assert.equal(a.requests.at(-1)!.headers["x-abgate-unit"], fromQuery);
  await rawRequest(gw.proxyUrl, Buffer.concat([Buffer.from("GET /echo HTTP/1.1\r\nhost: x\r\ncookie: abgate_uid="), Buffer.from("zoë-😀"), Buffer.from("\r\n\r\n")]));
  assert.equal(a.requests.at(-1)!.headers["x-abgate-unit"], fromQuery);
  // Bytes that are not UTF-8 are kept as they came, one character per byte.
  await rawRequest(gw.proxyUrl, Buffer.concat([Buffer.from("GET /echo HTTP/1.1\r\nhost: x\r\nx-user-id: a"), Buffer.from([0xff]), Buffer.from("\r\n\r\n")]));
  assert.equal(a.requests.at(-1)!.headers["x-abgate-unit"], encodeURIComponent("a\u00ff"));
  // The characters encodeURIComponent keeps go as they are; one more of any other kind, and the unit is escaped.
  for (const unit of ["AZaz09-_.!~*'()", "a b", "a%b", "a/b", "a+b", "a;b", "a\"b"]) {
    await (await fetch(`${gw.proxyUrl}/echo`, { headers: { "x-user-id": unit } })).arrayBuffer();
    assert.equal(a.requests.at(-1)!.headers["x-abgate-unit"], encodeURIComponent(unit), unit);
  }
});

test("a unit longer than events accept, or with a NUL, is refused with 400, not recorded", async () => {
  const long = "u".repeat(513);
  const res = await fetch(`${gw.proxyUrl}/echo`, { headers: { "x-user-id": long } });
  assert.equal(res.status, 400);
  assert.match(await res.text(), /unit longer than 512 characters/);
  const nul = await fetch(`${gw.proxyUrl}/echo?user=a%00b`);
  assert.equal(nul.status, 400);
  assert.match(await nul.text(), /unit contains NUL/);
  const ok = await fetch(`${gw.proxyUrl}/echo`, { headers: { "x-user-id": "u".repeat(512) } });
  assert.equal(ok.status, 200);
  await ok.text();
});

test("a forced variant is honoured when allowed, and an unknown one is refused", async () => {
  const res = await fetch(`${gw.proxyUrl}/echo`, { headers: { "x-user-id": "f", "x-abgate-force-variant": "treatment" } });
  assert.equal(res.headers.get("x-abgate-variant"), "treatment");
  assert.equal(((await res.json()) as { backend: string }).backend, "b");
  const bad = await fetch(`${gw.proxyUrl}/echo`, { headers: { "x-user-id": "f", "x-abgate-force-variant": "nope" } });
  assert.equal(bad.status, 400);
  assert.match(((await bad.json()) as { error: string }).error, /unknown variant "nope"/);
});

test("status codes and large bodies pass through unchanged", async () => {
  for (const code of [201, 204, 301, 404, 418]) {
    const res = await fetch(`${gw.proxyUrl}/status/${code}`, { headers: { "x-user-id": "g" }, redirect: "manual" });
    assert.equal(res.status, code);
  }
  const payload = Buffer.alloc(900 * 1024, 7);
  const res = await fetch(`${gw.proxyUrl}/upload`, { method: "POST", body: payload, headers: { "x-user-id": "g" } });
  assert.equal(res.status, 200);
  assert.equal(a.requests.at(-1)!.body, payload.length);
  assert.ok(createHash("sha1").update(payload).digest("hex"));
});
