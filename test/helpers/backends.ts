import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface Backend {
  server: Server;
  port: number;
  url: string;
  requests: { method: string; url: string; headers: IncomingMessage["headers"]; body: number }[];
  close(): Promise<void>;
}

/** A real HTTP server on port 0 that answers with `handler` (default: its name and the request line as JSON). */
export async function startBackend(name: string, handler?: (req: IncomingMessage, res: ServerResponse) => void): Promise<Backend> {
  const requests: Backend["requests"] = [];
  const server = createServer((req, res) => {
    let body = 0;
    req.on("data", (c: Buffer) => (body += c.length));
    req.on("end", () => {
      requests.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      if (handler) return handler(req, res);
      const text = JSON.stringify({ backend: name, method: req.method, url: req.url, body });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
      res.end(text);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/**
 * A port where connecting does not complete: a listener (perl's, since Node accepts every connection itself) that
 * never accepts, whose queue this fills, so that the kernel drops further SYNs and a connect waits until its
 * timeout, as with a replica whose accept queue is full.
 */
export async function startUnacceptingListener(): Promise<{ url: string; close(): void }> {
  const { spawn } = await import("node:child_process");
  const { connect } = await import("node:net");
  const perl = spawn("perl", ["-MIO::Socket::INET", "-e", '$s = IO::Socket::INET->new(Listen => 0, LocalAddr => "127.0.0.1:0") or die "$!"; $| = 1; print $s->sockport, "\\n"; sleep 600'], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const port = Number(await new Promise<string>((resolve, reject) => {
    perl.stdout.once("data", (d: Buffer) => resolve(d.toString()));
    perl.once("exit", (code) => reject(new Error(`perl exited (${code}) before listening`)));
  }));
  const fillers: import("node:net").Socket[] = [];
  for (let i = 0; i < 64; i++) {
    const s = connect(port, "127.0.0.1");
    s.on("error", () => {});
    fillers.push(s);
    const connected = await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => resolve(false), 300);
      s.once("connect", () => {
        clearTimeout(t);
        resolve(true);
      });
    });
    if (!connected) {
      return {
        url: `http://127.0.0.1:${port}`,
        close() {
          for (const f of fillers) f.destroy();
          perl.kill("SIGKILL");
        },
      };
    }
  }
  perl.kill("SIGKILL");
  for (const f of fillers) f.destroy();
  throw new Error("startUnacceptingListener: every connection completed; the kernel did not drop SYNs of a full queue");
}
