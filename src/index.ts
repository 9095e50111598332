export * from "./errors.ts";
export * from "./config/index.ts";
export type { Engine, Endpoint, EngineKind } from "./engines/types.ts";
export type { Strategy, StrategyKind, Range } from "./strategies/types.ts";
export type { Store, Exposure, OutcomeEvent, ExperimentAggregates } from "./store/types.ts";
