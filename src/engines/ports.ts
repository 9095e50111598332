import { createServer } from "node:net";
import { AbgateError, PortTakenError } from "../errors.ts";

/** The last TCP port. Ports are given out from `ports.base` up to here and no further (see PortAllocator). */
const LAST_PORT = 65535;

/**
 * Whether nothing listens on `port`, at any address, so that a replica can listen on it however it binds: 127.0.0.1,
 * 0.0.0.0, or `::` (what Node's `listen(PORT)` and Go's `:PORT` do). Probed by listening without a host, as Node does
 * for `listen(port)`: `::` dual-stack, which on Linux any listener on the port blocks (127.0.0.1, 0.0.0.0, another
 * IPv4 address, ::, ::1, another IPv6 address); on a host without IPv6, Node falls back to 0.0.0.0, which any IPv4
 * listener blocks. Probing 127.0.0.1 misses listeners on other addresses and 0.0.0.0 misses the IPv6-only ones, and
 * either would hand out ports that a replica listening on `::` cannot get.
 */
export function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once("error", () => resolve(false));
    server.listen({ port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

export type PortProbe = (port: number) => Promise<boolean>;

/** What PortAllocator needs of a variant: its replicas get `port`, port+1, ... when it has one. */
export interface PortVariant {
  name: string;
  replicas: number;
  port?: number;
}

/**
 * Gives each replica of one start its own port, the one policy of every engine. A variant with `port` gets exactly
 * port, port+1, ... (`claimFixed`, `claim`), and a PortTakenError when one of them is taken: it was asked for by
 * number, so it is never moved. Other replicas get ports from `base` upward (`allocate`), skipping ports already
 * handed out, `reserved` ones (abgate's own listeners, which bind only after the engine started, and other
 * experiments' replicas) and ports something listens on. Past 65535 there is an error, never a wrap to low ports: the
 * user chose `ports.base` as where replicas live (as Docker does, a range is searched and then reported exhausted).
 *
 * Both styles use it: the docker and swarm engines take every port before starting anything (`allocatePorts`), the
 * process engine claims the fixed ones first and then takes the others one by one, as each replica starts.
 */
export class PortAllocator {
  readonly #reserved: Set<number>;
  readonly #taken = new Set<number>();
  readonly #isFree: PortProbe;
  readonly #base: number;
  #next: number;

  constructor(base: number, options: { reserved?: Iterable<number>; isFree?: PortProbe } = {}) {
    this.#base = base;
    this.#next = base;
    this.#reserved = new Set(options.reserved);
    this.#isFree = options.isFree ?? portIsFree;
  }

  /** Exactly `port`, for replica `replica` of variants[variantIndex]: free now and not handed out, or PortTakenError. */
  async claim(port: number, variantIndex: number, replica: string): Promise<number> {
    const why = this.#taken.has(port)
      ? "another variant's replicas get too"
      : this.#reserved.has(port)
        ? "is reserved (for abgate's listeners, or by another experiment's replicas)"
        : (await this.#isFree(port))
          ? undefined
          : "is in use";
    if (why !== undefined) throw new PortTakenError(variantIndex, replica, port, why);
    this.#taken.add(port);
    return port;
  }

  /**
   * The ports of every variant with `port`, by variant name. Taken before any other, so that a variant listed
   * earlier without `port` cannot take one of them from base upward; a taken one fails before anything started.
   */
  async claimFixed(variants: readonly PortVariant[]): Promise<Map<string, number[]>> {
    const out = new Map<string, number[]>();
    for (const [index, v] of variants.entries()) {
      if (v.port === undefined) continue;
      const ports: number[] = [];
      for (let i = 0; i < v.replicas; i++) ports.push(await this.claim(v.port + i, index, `${v.name}-${i}`));
      out.set(v.name, ports);
    }
    return out;
  }

  /** The next free port from base upward for `replica` (named in the error when none is left up to 65535). */
  async allocate(replica: string): Promise<number> {
    let p = this.#next;
    while (p <= LAST_PORT && (this.#taken.has(p) || this.#reserved.has(p) || !(await this.#isFree(p)))) p++;
    if (p > LAST_PORT) {
      throw new AbgateError(
        `no free port for replica ${replica}: every port from ports.base (${this.#base}) to ${LAST_PORT} is in use, reserved or another replica's; set a lower ports.base`,
        "ABGATE_ERR_PORT_TAKEN",
      );
    }
    this.#taken.add(p);
    this.#next = p + 1;
    return p;
  }
}

/**
 * Every replica's port at once, by variant name in the variants' order (the docker and swarm engines): the fixed
 * ones first (see `claimFixed`), then the others from `base` upward, variant by variant.
 */
export async function allocatePorts(
  variants: readonly PortVariant[],
  base: number,
  reserved: Iterable<number> = [],
  isFree: PortProbe = portIsFree,
): Promise<Map<string, number[]>> {
  const allocator = new PortAllocator(base, { reserved, isFree });
  const fixed = await allocator.claimFixed(variants);
  const out = new Map<string, number[]>();
  for (const v of variants) {
    let ports = fixed.get(v.name);
    if (ports === undefined) {
      ports = [];
      for (let i = 0; i < v.replicas; i++) ports.push(await allocator.allocate(`${v.name}-${i}`));
    }
    out.set(v.name, ports);
  }
  return out;
}
