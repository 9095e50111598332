import type { Config } from "../config/index.ts";

/** One running replica of a variant, as the proxy sees it: an address and nothing else. */
export interface Endpoint {
  /** stable id of the replica, `<variant>-<replica>` (e.g. `control-0`) */
  id: string;
  variant: string;
  replica: number;
  host: string;
  port: number;
}

export type EngineKind = "docker" | "swarm" | "process" | "static";

/**
 * An engine runs (or finds) the replicas of every variant and reports their endpoints. It never routes traffic
 * and the proxy never talks to it beyond this interface (as Traefik's providers only emit configuration).
 */
export interface Engine {
  readonly kind: EngineKind;
  /**
   * Build/start/find every replica. Resolves once all replicas are started (not necessarily healthy);
   * `onProgress` receives human-readable progress lines (build steps, replica starts).
   */
  start(onProgress?: (line: string) => void): Promise<void>;
  /** The endpoints that exist now. A replica that died is left out until it runs again. */
  endpoints(): Endpoint[];
  /** Called with the full list whenever it changes (replica died, restarted). Returns an unsubscribe function. */
  onChange(listener: (endpoints: Endpoint[]) => void): () => void;
  /** Stop what this engine started (process, docker up); engines that only found endpoints just stop watching. */
  stop(): Promise<void>;
  /**
   * Called (at most once) when every replica was removed from outside abgate (`abgate down`, `docker rm`), which
   * the engine does not undo: nothing is left to serve, and `up` stops as docker compose's does. A listener that
   * subscribes after that is told at once. Engines whose replicas only abgate can remove (process, static) have
   * none. Returns an unsubscribe function.
   */
  onRemoved?(listener: (why: string) => void): () => void;
  /**
   * Called each time a replica is found crash-looping (the engine's own crash-loop rule), with what it said last:
   * `up` then stops waiting for it to become healthy. Returns an unsubscribe function.
   */
  onCrashLoop?(listener: (replica: string, detail: string) => void): () => void;
  /** How a replica's last run ended (exit code, last output line), for error messages; optional. */
  lastExit?(id: string): string | undefined;
}

export type EngineFactory = (config: Config, options?: EngineOptions) => Engine;

export interface EngineOptions {
  /** log sink for engine events (crashes, restarts) */
  log?: (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;
  /** docker/swarm: adopt running containers instead of creating them (`abgate serve`) */
  adopt?: boolean;
}

/** Small helper for engines: holds listeners and the current list, and only notifies real changes. */
export class EndpointSet {
  #list: Endpoint[] = [];
  #key = "";
  #listeners = new Set<(e: Endpoint[]) => void>();
  get(): Endpoint[] {
    return this.#list;
  }
  set(list: Endpoint[]): void {
    const sorted = [...list].sort((a, b) => (a.variant === b.variant ? a.replica - b.replica : a.variant < b.variant ? -1 : 1));
    const key = sorted.map((e) => `${e.id}@${e.host}:${e.port}`).join(",");
    if (key === this.#key) return;
    this.#key = key;
    this.#list = sorted;
    for (const l of this.#listeners) l(sorted);
  }
  onChange(listener: (e: Endpoint[]) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }
}

/**
 * An engine's onRemoved: fired once, and told to listeners that subscribe later too (`up` subscribes only once it
 * serves, so a removal during its health wait must still reach it).
 */
export class RemovalSignal {
  #why: string | null = null;
  #listeners = new Set<(why: string) => void>();
  get fired(): boolean {
    return this.#why !== null;
  }
  fire(why: string): void {
    if (this.#why !== null) return;
    this.#why = why;
    for (const l of this.#listeners) l(why);
  }
  on(listener: (why: string) => void): () => void {
    const why = this.#why;
    if (why !== null) {
      queueMicrotask(() => listener(why));
      return () => {};
    }
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }
}

/** The listeners of an engine's onCrashLoop. */
export class CrashLoopSignal {
  #listeners = new Set<(replica: string, detail: string) => void>();
  fire(replica: string, detail: string): void {
    for (const l of this.#listeners) l(replica, detail);
  }
  on(listener: (replica: string, detail: string) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }
}
