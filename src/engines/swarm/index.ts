import type { Config } from "../../config/index.ts";
import { AbgateError } from "../../errors.ts";
import type { Endpoint, Engine, EngineOptions } from "../types.ts";

/**
 * `engine: swarm` is part of the config contract but not built yet: it fails at start with a clear message
 * rather than at import, so every other engine keeps working.
 */
export class SwarmEngine implements Engine {
  readonly kind = "swarm" as const;
  constructor(_config: Config, _options: EngineOptions = {}) {}
  async start(): Promise<void> {
    throw new AbgateError("engine: swarm is not available in this version of abgate; use engine: docker on a single host", "ABGATE_ERR_ENGINE_UNSUPPORTED");
  }
  endpoints(): Endpoint[] {
    return [];
  }
  onChange(): () => void {
    return () => {};
  }
  async stop(): Promise<void> {}
}
