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
