import { createServer } from "node:net";
import { AbgateError, PortTakenError } from "../../errors.ts";

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
 * Give each replica its own port: from `base` upward, skipping ports already handed out, ports in `reserved` (the
 * proxy's and admin's, other experiments') and ports something listens on. A variant with `port` gets exactly
 * port, port+1, ... and a PortTakenError when one of them is taken: it was asked for by number.
 */
export async function allocatePorts(
  variants: { name: string; replicas: number; port?: number }[],
  base: number,
  reserved: Iterable<number> = [],
  isFree: (port: number) => Promise<boolean> = portIsFree,
): Promise<Map<string, number[]>> {
  const held = new Set<number>(reserved);
  const taken = new Set<number>();
  const out = new Map<string, number[]>();
  // Fixed ports first, so that a variant listed earlier without `port` cannot take one of them.
  for (const [index, v] of variants.entries()) {
    if (v.port === undefined) continue;
    const ports: number[] = [];
    for (let i = 0; i < v.replicas; i++) {
      const p = v.port + i;
      const why = taken.has(p)
        ? "another variant's replicas get too"
        : held.has(p)
          ? "is reserved (for abgate's listeners, or by another experiment's replicas)"
          : (await isFree(p))
            ? undefined
            : "is in use";
      if (why !== undefined) throw new PortTakenError(index, `${v.name}-${i}`, p, why);
      taken.add(p);
      ports.push(p);
    }
    out.set(v.name, ports);
  }
  let next = base;
  for (const v of variants) {
    if (v.port !== undefined) continue;
    const ports: number[] = [];
    for (let i = 0; i < v.replicas; i++) {
      let p = next;
      while (p <= 65535 && (taken.has(p) || held.has(p) || !(await isFree(p)))) p++;
      if (p > 65535) throw new AbgateError(`no free port at or above ${next} for replica ${v.name}-${i}`, "ABGATE_ERR_PORT_TAKEN");
      taken.add(p);
      ports.push(p);
      next = p + 1;
    }
    out.set(v.name, ports);
  }
  return new Map(variants.map((v) => [v.name, out.get(v.name)!]));
}
