import { createServer } from "node:net";

/** True when nothing listens on host:port (we can bind it). */
export function portFree(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * Hands out ports for replicas: a variant's own `port` upward, else from `base` upward, skipping ports in use
 * and ports already handed out in this run.
 */
export class PortAllocator {
  #next: number;
  #taken = new Set<number>();
  constructor(base: number) {
    this.#next = base;
  }
  reserve(port: number): void {
    this.#taken.add(port);
  }
  release(port: number): void {
    this.#taken.delete(port);
  }
  async allocate(preferred?: number): Promise<number> {
    let p = preferred ?? this.#next;
    for (let tries = 0; tries < 2000; tries++, p++) {
      if (p > 65535) p = 1024;
      if (this.#taken.has(p)) continue;
      if (await portFree(p)) {
        this.#taken.add(p);
        if (preferred === undefined) this.#next = p + 1;
        return p;
      }
    }
    throw new Error(`no free port found from ${preferred ?? this.#next}`);
  }
}
