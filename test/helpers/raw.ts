import { connect } from "node:net";

/** Send raw bytes to host:port and collect everything until the server closes or `idleMs` passes without data. */
export function rawRequest(url: string, payload: string | Buffer, idleMs = 500): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = connect({ host: u.hostname, port: Number(u.port) });
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout;
    const done = () => {
      clearTimeout(timer);
      sock.destroy();
      resolve(Buffer.concat(chunks).toString("latin1"));
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(done, idleMs);
    };
    sock.on("connect", () => {
      sock.write(payload);
      arm();
    });
    sock.on("data", (c: Buffer) => {
      chunks.push(c);
      arm();
    });
    sock.on("end", done);
    sock.on("error", (err) => (chunks.length ? done() : reject(err)));
  });
}
