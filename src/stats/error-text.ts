import type { StatsErrorCode } from "./types.ts";

/** What a statistics error code means for the reader of a report (the table and the dashboard show both). */
const TEXT: Record<StatsErrorCode, string> = {
  ZERO_UNITS: "no units in one of the two arms yet",
  TOO_FEW_UNITS: "fewer than 2 units in an arm, so no variance to test with",
  ZERO_VARIANCE: "each arm has no spread (every value the same within it: all converted, or none), so no interval can be given",
  CONTROL_RATE_ZERO: "the control's rate is 0, so there is no relative lift",
  CONTROL_MEAN_ZERO: "the control's mean is 0, so there is no relative lift",
  SINGLE_ARM: "fewer than two arms with weight",
  INVALID_INPUT: "the sums are not valid for this test",
  NON_STATIONARY: "the effect changed over time: the always-valid intervals of the reports do not overlap",
};

/** "no units in one of the two arms yet (ZERO_UNITS)"; an unknown code as it is. */
export function describeStatsError(code: string): string {
  const text = (TEXT as Record<string, string | undefined>)[code];
  return text === undefined ? code : `${text} (${code})`;
}
