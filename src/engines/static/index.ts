import type { Config } from "../../config/index.ts";
import { ConfigError } from "../../errors.ts";
import { EndpointSet, type Endpoint, type Engine } from "../types.ts";

/** Endpoints that already run somewhere: `url:` or `urls:` per variant. Nothing to start or watch. */
export class StaticEngine implements Engine {
  readonly kind = "static" as const;
  #set = new EndpointSet();
  #config: Config;
  constructor(config: Config) {
    this.#config = config;
  }
  async start(onProgress?: (line: string) => void): Promise<void> {
    const list: Endpoint[] = [];
    this.#config.variants.forEach((v, vi) => {
      const urls = v.urls ?? (v.url ? [v.url] : []);
      urls.forEach((raw, i) => {
        const key = v.urls ? `variants[${vi}].urls[${i}]` : `variants[${vi}].url`;
        const u = new URL(raw);
        if (u.protocol !== "http:") throw new ConfigError([{ path: key, message: `an http:// URL (got ${u.protocol})` }]);
        if (u.pathname !== "/" || u.search) throw new ConfigError([{ path: key, message: "an origin without path or query (http://host:port)" }]);
        const host = u.hostname.startsWith("[") ? u.hostname.slice(1, -1) : u.hostname;
        list.push({ id: `${v.name}-${i}`, variant: v.name, replica: i, host, port: Number(u.port || 80) });
        onProgress?.(`${v.name}-${i}: ${raw}`);
      });
    });
    this.#set.set(list);
  }
  endpoints(): Endpoint[] {
    return this.#set.get();
  }
  onChange(listener: (e: Endpoint[]) => void): () => void {
    return this.#set.onChange(listener);
  }
  async stop(): Promise<void> {}
}
