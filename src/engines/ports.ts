import { createServer } from "node:net";
import { AbgateError, PortTakenError } from "../errors.ts";

/** True when nothing listens on host:port (we can bind it). */
export function portFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * Hands out ports for replicas from `base` upward, skipping ports in use, reserved, or already handed out in this
 * run. A variant's fixed `port:` is claimed exactly (`claim`), never moved: see PortTakenError.
 */
export class PortAllocator {
  #next: number;
  #taken = new Set<number>();
  constructor(base: number) {
    this.#next = base;
  }
  /** Keeps `port` from being handed out (abgate's listeners). */
  reserve(port: number): void {
    this.#taken.add(port);
  }
  /** Exactly `port` (a variant's fixed one), which must be free now; it is not handed out again. */
  async claim(port: number, variantIndex: number, replica: string): Promise<number> {
    if (!(await portFree(port))) throw new PortTakenError(variantIndex, replica, port, "is in use");
    this.#taken.add(port);
    return port;
  }
  async allocate(): Promise<number> {
    let p = this.#next;
    for (let tries = 0; tries < 2000; tries++, p++) {
      if (p > 65535) p = 1024;
      if (this.#taken.has(p)) continue;
      if (await portFree(p)) {
        this.#taken.add(p);
        this.#next = p + 1;
        return p;
      }
    }
    throw new AbgateError(`no free port found from ${this.#next}`, "ABGATE_ERR_PORT_TAKEN");
  }
}
