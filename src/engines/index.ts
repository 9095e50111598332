import type { Config } from "../config/index.ts";
import type { Engine, EngineOptions } from "./types.ts";
import { StaticEngine } from "./static/index.ts";
import { ProcessEngine, type ProcessEngineOptions } from "./process/index.ts";

export type { Engine, Endpoint, EngineOptions } from "./types.ts";

/** The one switch that picks an engine. Docker and swarm load lazily: dockerode is not needed for the others. */
export async function createEngine(config: Config, options: EngineOptions & ProcessEngineOptions = {}): Promise<Engine> {
  switch (config.engine) {
    case "static":
      return new StaticEngine(config);
    case "process":
      return new ProcessEngine(config, options);
    case "docker": {
      const { DockerEngine } = await import("./docker/index.ts");
      return new DockerEngine(config, options);
    }
    case "swarm": {
      const { SwarmEngine } = await import("./swarm/index.ts");
      return new SwarmEngine(config, options);
    }
  }
}

/**
 * The replicas a config asks for, by the id every engine gives them (`variant-i`), for the engines that start
 * replicas. An engine lists only those that run; these also name the ones that crashed or never started, for the
 * health wait, the experiment view and the health metric. Static endpoints are the config itself: none here.
 */
export function configuredReplicas(config: Config): { id: string; variant: string; replica: number }[] {
  if (config.engine === "static") return [];
  return config.variants.flatMap((v) => Array.from({ length: v.replicas }, (_, i) => ({ id: `${v.name}-${i}`, variant: v.name, replica: i })));
}
