export { HealthTracker } from "./tracker.ts";
export type { EndpointHealth, HealthChange, HealthLog, HealthState, HealthTrackerOptions } from "./tracker.ts";
export { httpCheck, httpProbe } from "./probe.ts";
export type { Probe, ProbeResult } from "./probe.ts";
