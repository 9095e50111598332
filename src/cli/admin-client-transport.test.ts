import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createTcpServer, type Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { AbgateError } from "../errors.ts";
import { adminCall, answers } from "./admin-client.ts";

/** Listen on a port 0 of 127.0.0.1; closing also ends the connections the server holds open. */
async function listening(server: Server | ReturnType<typeof createTcpServer>): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  server.on("connection", (s: Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A short deadline in place of the 30 s default, so that no test waits it out. */
const timeoutMs = 200;

/** The call's error, and how long it took to come. */
async function failure(promise: Promise<unknown>): Promise<{ err: AbgateError; ms: number }> {
  const started = Date.now();
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof AbgateError, String(err));
    return { err, ms: Date.now() - started };
  }
  assert.fail("the call succeeded");
}

test("an answer whose headers came but whose body stalls: the error names the request and the deadline", { timeout: 10_000 }, async (t) => {
  const server = await listening(
    createHttpServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"experiment": "x", ');
    }),
  );
  t.after(server.close);
  const { err, ms } = await failure(adminCall({ adminUrl: server.url }, "GET", "/v1/experiment", answers.experiment, undefined, { timeoutMs }));
  assert.equal(err.code, "ABGATE_ERR_ADMIN_TIMEOUT");
  assert.equal(err.message, `GET ${server.url}/v1/experiment: the answer (200) stalled: 20 bytes of its body read, not complete after 0.2 s`);
  assert.ok(ms < 5_000, `${ms} ms`);
});

test("something that accepts the connection and never answers is not called 'nothing listens'", { timeout: 10_000 }, async (t) => {
  // A bare TCP server: the connection is made, no byte ever comes back.
  const server = await listening(createTcpServer(() => {}));
  t.after(server.close);
  const { err, ms } = await failure(adminCall({ adminUrl: server.url, token: "t" }, "POST", "/v1/rollback", answers.rollback, undefined, { timeoutMs }));
  assert.equal(err.code, "ABGATE_ERR_ADMIN_TIMEOUT");
  assert.match(err.message, new RegExp(`^POST ${server.url.replaceAll(".", "\\.")}/v1/rollback: something listens at ${server.url.replaceAll(".", "\\.")} but did not answer within 0\\.2 s`));
  // a change whose answer never came may have been made
  assert.match(err.message, /whether the change was made is unknown/);
  assert.doesNotMatch(err.message, /no abgate admin API answers|is `abgate serve`/);
  assert.ok(ms < 5_000, `${ms} ms`);
});

test("nothing listening (connection refused) is told apart, at once, naming the request", { timeout: 10_000 }, async () => {
  // A port that was just free: nothing listens there.
  const probe = await listening(createTcpServer());
  await probe.close();
  const { err, ms } = await failure(adminCall({ adminUrl: probe.url }, "GET", "/v1/experiment", answers.experiment, undefined, { timeoutMs: 5_000 }));
  assert.equal(err.code, "ABGATE_ERR_ADMIN_UNREACHABLE");
  assert.equal(
    err.message,
    `no abgate admin API answers at ${probe.url}: nothing listens there (GET ${probe.url}/v1/experiment: connection refused; is \`abgate serve\` or \`abgate up\` running?)`,
  );
  assert.ok(ms < 2_000, `refused is known at once, not after the deadline: ${ms} ms`);
});

/** Answers 200 with `total` bytes of non-JSON, chunked, as fast as the client reads; counts what it could send. */
async function endless(total: number, headers: Record<string, string> = {}) {
  const state = { written: 0 };
  const server = await listening(
    createHttpServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain", ...headers });
      const chunk = Buffer.alloc(64 * 1024, "x");
      const more = (): void => {
        while (state.written < total && !res.destroyed) {
          state.written += chunk.length;
          if (!res.write(chunk)) return void res.once("drain", more);
        }
        if (state.written >= total) res.end();
      };
      more();
    }),
  );
  return { ...server, state };
}

test("a 300 MB answer is refused once it passes the cap (8 MiB by default), without reading the rest", { timeout: 20_000 }, async (t) => {
  const server = await endless(300 * 1024 * 1024);
  t.after(server.close);
  const { err } = await failure(adminCall({ adminUrl: server.url }, "GET", "/v1/experiment", answers.experiment));
  assert.equal(err.code, "ABGATE_ERR_ADMIN_ANSWER_TOO_LARGE");
  assert.equal(
    err.message,
    `GET ${server.url}/v1/experiment: the answer (200) is larger than 8 MiB (stopped reading there), far more than abgate's admin API sends: refused, the rest not read (check --admin or the config's admin.listen)`,
  );
  // what the server got out before the connection was cut: the cap plus what socket buffers hold, not 300 MB
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(server.state.written < 32 * 1024 * 1024, `${server.state.written} bytes sent`);
});

test("an answer whose content-length is over the cap is refused at once, naming the size; one under it is read", { timeout: 10_000 }, async (t) => {
  // declares 300 MB, sends 64 KiB, then stalls: refused from its headers, not after the deadline
  const declared = 300 * 1024 * 1024;
  const server = await listening(
    createHttpServer((_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": declared });
      res.write(Buffer.alloc(64 * 1024, " "));
    }),
  );
  t.after(server.close);
  const started = Date.now();
  const { err } = await failure(adminCall({ adminUrl: server.url }, "GET", "/v1/experiment", answers.experiment, undefined, { timeoutMs: 5_000, maxAnswerBytes: 1024 * 1024 }));
  assert.equal(err.code, "ABGATE_ERR_ADMIN_ANSWER_TOO_LARGE");
  assert.match(err.message, new RegExp(`^GET ${server.url.replaceAll(".", "\\.")}/v1/experiment: the answer \\(200\\) is larger than 1 MiB \\(content-length: ${declared} bytes\\)`));
  assert.ok(Date.now() - started < 2_000);

  // the cap is a limit, not a size: an abgate-shaped answer of just under it goes through
  const view = { experiment: "x", engine: "static", variants: [{ name: "control", weight: 1, replicas: [] }], padding: "" };
  view.padding = "p".repeat(2048 - JSON.stringify(view).length);
  const exact = await listening(createHttpServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(view))));
  t.after(exact.close);
  assert.equal((await adminCall({ adminUrl: exact.url }, "GET", "/v1/experiment", answers.experiment, undefined, { maxAnswerBytes: 2048 })).experiment, "x");
  await assert.rejects(adminCall({ adminUrl: exact.url }, "GET", "/v1/experiment", answers.experiment, undefined, { maxAnswerBytes: 2047 }), /is larger than 2047 bytes/);
});
