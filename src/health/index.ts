export { CONNECT_CHECK, HealthTracker } from "./tracker.ts";
export type { CheckConfig, EndpointHealth, HealthChange, HealthLog, HealthState, HealthTrackerOptions } from "./tracker.ts";
export { check, connectCheck, httpCheck, httpProbe } from "./probe.ts";
export type { Probe, ProbeResult } from "./probe.ts";
