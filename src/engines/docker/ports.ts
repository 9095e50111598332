import { createServer } from "node:net";

/** Whether nothing listens on `port` (probed by binding the wildcard address, which any listener blocks). */
export function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once("error", () => resolve(false));
    server.listen({ port, host: "0.0.0.0", exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * Give each replica its own port: from the variant's `port` when set, else from `base` upward, skipping
 * ports already handed out, ports in `reserved` (the proxy's and admin's) and ports something listens on.
 */
export async function allocatePorts(
  variants: { name: string; replicas: number; port?: number }[],
  base: number,
  reserved: Iterable<number> = [],
  isFree: (port: number) => Promise<boolean> = portIsFree,
): Promise<Map<string, number[]>> {
  const taken = new Set<number>(reserved);
  const out = new Map<string, number[]>();
  let next = base;
  const claim = async (from: number): Promise<number> => {
    for (let p = from; p <= 65535; p++) {
      if (taken.has(p)) continue;
      if (await isFree(p)) {
        taken.add(p);
        return p;
      }
    }
    throw new Error(`no free port at or above ${from}`);
  };
  for (const v of variants) {
    const ports: number[] = [];
    let cursor = v.port ?? next;
    for (let i = 0; i < v.replicas; i++) {
      const p = await claim(cursor);
      ports.push(p);
      cursor = p + 1;
    }
    if (v.port === undefined) next = cursor;
    out.set(v.name, ports);
  }
  return out;
}
