/**
 * abgate/stats: pure functions on sufficient statistics. Nothing here reads the store, the clock or the network,
 * and no function throws or returns NaN on data problems: results carry an `error` code instead.
 */
export { proportionTest, meanTest, srmTest, meanAndVariance, welchOneSidedIncrease, proportionOneSidedIncrease } from "./frequentist.ts";
export { mixtureSprt, runningMinimum, DEFAULT_TAU2_STANDARDIZED, oneSidedMixtureSprt, meanIncreaseSequential, proportionIncreaseSequential } from "./sequential.ts";
export { chanceToWin } from "./bayes.ts";
export { adjustPValues } from "./multiple.ts";
export { stratifiedDifference, MIN_STRATUM_UNITS } from "./stratified.ts";
export type { Stratum, StratifiedResult } from "./stratified.ts";
export { fixedHorizonUnits, sequentialUnits } from "./power.ts";
export type { SampleSizeInput } from "./power.ts";
export {
  erf,
  erfc,
  normalPdf,
  normalCdf,
  normalSf,
  normalQuantile,
  logGamma,
  logBeta,
  incompleteBeta,
  incompleteGamma,
  studentTSf,
  studentTCdf,
  studentTPdf,
  studentTQuantile,
  chiSquareSf,
} from "./distributions.ts";
export type * from "./types.ts";
export { buildReport, guardrailStateKey, SRM_MIN_UNITS_PER_VARIANT, SEQUENTIAL_MIN_UNITS_PER_VARIANT } from "./report.ts";
export type {
  Report,
  ReportInput,
  ReportOutput,
  ReportAnalysisConfig,
  VariantSummary,
  SrmSummary,
  MetricReport,
  MetricRole,
  Comparison,
  GuardrailReport,
  Decision,
  DecisionAction,
  DataQuality,
} from "./report.ts";
export { formatReportTable } from "./format.ts";
