export { loadConfig, parseConfig, validateConfig, expandEnv, parseHostPort } from "./load.ts";
export { SENDABLE_TOKEN } from "./schema.ts";
export type { Config, HostPort } from "./load.ts";
export type { VariantConfig, HealthConfig, MetricConfig } from "./schema.ts";
