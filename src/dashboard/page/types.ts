/**
 * What the page receives. The server-side types are imported (type-only, erased by esbuild) so that a change to
 * the admin contract breaks the page's type check instead of the page at run time. The report is `unknown` on
 * the server, so its shape (the spec's Report JSON) is written out here with every field optional that a young
 * experiment may not have yet.
 */
import type { ExperimentView, LiveVariantStats, ReplicaView } from "../../admin/context.ts";
import type { SeriesBody, VariantSeries } from "../series.ts";

export type { ExperimentView, LiveVariantStats, ReplicaView, SeriesBody, VariantSeries };

export interface StreamMeta {
  experiment: string;
  control: string;
  variants: string[];
  metrics: { name: string; kind: string }[];
  alpha: number;
  liveIntervalMs: number;
  reportIntervalMs: number;
}

export interface LiveEvent {
  ts: number;
  experiment: ExperimentView;
  live: LiveVariantStats[];
}

export interface Interval {
  estimate: number | null;
  ci?: [number | null, number | null] | null;
}

export interface Comparison {
  variant: string;
  value?: number | null;
  units?: number;
  absolute?: Interval;
  relative?: Interval;
  pValue?: number | null;
  pValueAdjusted?: number | null;
  pValueSequential?: number | null;
  pValueSequentialAdjusted?: number | null;
  sequentialCi?: [number, number] | null;
  chanceToWin?: number | null;
  significant?: boolean;
  /** NON_STATIONARY: the always-valid intervals no longer overlap (the effect moved); no verdict then */
  sequentialError?: string | null;
  /** post-stratified over weight periods: the period-weighted values compared */
  adjusted?: { control: number | null; value: number | null; periods: number; excludedUnits: number; weights?: "units" | "precision" };
  error?: string;
}

export interface ReportMetric {
  name: string;
  kind: string;
  /** primary | secondary | guardrail */
  role?: string;
  control?: { units?: number; value?: number | null; variant?: string };
  comparisons?: Comparison[];
  error?: string;
}

export interface Report {
  experiment: string;
  generatedAt?: string;
  variants?: { name: string; weight?: number; units?: number; requests?: number }[];
  srm?: { pValue?: number | null; mismatch?: boolean; judged?: boolean; note?: string; error?: string };
  metrics?: ReportMetric[];
  /** pValueSequential null: the always-valid test has not run yet (too few units): not judged */
  guardrails?: { name: string; variant: string; ok: boolean; detail?: string; pValueSequential?: number | null }[];
  decision?: { action: string; variant?: string | null; reason?: string; unitsNeeded?: number | null };
  dataQuality?: { notes?: string[] };
}
