import { describeStatsError } from "./error-text.ts";
import { fmt, fmtP, fmtPct, fmtSignedPct, type Comparison, type MetricReport, type Report } from "./report.ts";

/** Columns padded to their widest cell; numbers right-aligned. */
function table(header: string[], rows: string[][], rightAligned: boolean[]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (rightAligned[i] ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

function valueOf(metric: MetricReport, x: number | null): string {
  if (x === null) return "n/a";
  if (metric.kind === "conversion" || metric.kind === "error_rate") return fmtPct(x);
  if (metric.kind === "latency") return `${fmt(x)} ms`;
  return fmt(x);
}

function absolute(metric: MetricReport, c: Comparison): string {
  const a = c.absolute;
  if (a.estimate === null) return "n/a";
  const proportion = metric.kind === "conversion" || metric.kind === "error_rate";
  const unit = metric.kind === "latency" ? " ms" : "";
  const show = (x: number) => (proportion ? `${x >= 0 ? "+" : ""}${fmt(x * 100)} pp` : `${x >= 0 ? "+" : ""}${fmt(x)}${unit}`);
  return a.ci ? `${show(a.estimate)} [${show(a.ci[0])}, ${show(a.ci[1])}]` : show(a.estimate);
}

function relative(c: Comparison): string {
  const r = c.relative;
  if (r.estimate === null) return "n/a";
  return r.ci ? `${fmtSignedPct(r.estimate)} [${fmtSignedPct(r.ci[0])}, ${fmtSignedPct(r.ci[1])}]` : fmtSignedPct(r.estimate);
}

/** The report as readable plain text, for `abgate report` (the JSON form is `--json`). */
export function formatReportTable(report: Report): string {
  const out: string[] = [];
  const confidence = `${Number(((1 - report.analysis.alpha) * 100).toPrecision(3))}%`;
  out.push(`Experiment ${report.experiment} — report at ${report.generatedAt}`);
  out.push("");
  out.push(
    ...table(
      ["variant", "weight", "units", "requests", "fallback"],
      report.variants.map((v) => [v.name + (v.name === report.control ? " (control)" : ""), fmt(v.weight), String(v.units), String(v.requests), String(v.fallbackRequests)]),
      [false, true, true, true, true],
    ),
  );
  out.push("");
  out.push(`Sample ratio: ${report.srm.mismatch ? "MISMATCH — " : ""}${report.srm.note}`);
  const dq = report.dataQuality;
  const count = (n: number, what: string, plural = `${what}s`) => `${n} ${n === 1 ? what : plural}`;
  out.push(`Data quality: ${count(dq.forcedRequests, "forced request")}, ${count(dq.multiVariantUnits, "unit")} in several variants, ${count(dq.fallbackRequests, "fallback request")}`);
  for (const m of report.metrics) {
    out.push("");
    out.push(`Metric ${m.name} (${m.kind}, ${m.role})`);
    const rows = [[report.control ?? "control", String(m.control.units), valueOf(m, m.control.value), "", "", "", "", "", "", ""]];
    for (const c of m.comparisons) {
      rows.push([
        c.variant,
        String(c.units),
        valueOf(m, c.value),
        absolute(m, c),
        relative(c),
        fmtP(c.pValue),
        fmtP(c.pValueAdjusted),
        fmtP(c.pValueSequentialAdjusted),
        c.chanceToWin === null ? "" : c.chanceToWin > 0.999 && c.chanceToWin < 1 ? ">99.9%" : c.chanceToWin < 0.001 && c.chanceToWin > 0 ? "<0.1%" : fmtPct(c.chanceToWin),
        c.significant ? "yes" : c.sequentialError === "NON_STATIONARY" ? "no (unstable)" : "no",
      ]);
    }
    out.push(
      ...table(
        // latency and error rate are per request: their n counts requests
        ["variant", m.kind === "latency" || m.kind === "error_rate" ? "requests" : "units", "value", `difference [${confidence} CI]`, `relative [${confidence} CI]`, "p", "p adj", "p seq", "P(win)", "significant"],
        rows,
        [false, true, true, false, false, true, true, true, true, false],
      ).map((l) => `  ${l}`),
    );
    if (m.role !== "guardrail") for (const c of m.comparisons) if (c.error) out.push(`  note: ${c.variant}: ${describeStatsError(c.error)}`);
    // The table's values pool every period; its difference, p and chance to win do not, when the weights changed.
    const counted = m.kind === "latency" || m.kind === "error_rate" ? "requests" : "units";
    for (const c of m.comparisons) {
      const a = c.adjusted;
      if (!a) continue;
      const within = a.periods === 1 ? "within the one weight period that has both" : `within each of ${a.periods} weight periods, weighted by their ${a.weights === "precision" ? "precision" : counted}`;
      const left = a.excludedUnits > 0 ? ` (${a.excludedUnits} ${counted} of periods without both left out)` : "";
      out.push(`  note: ${c.variant} is compared with ${report.control ?? "the control"} ${within}: ${valueOf(m, a.value)} vs ${valueOf(m, a.control)}${left}; the values above pool every period`);
    }
  }
  if (report.guardrails.length > 0) {
    out.push("");
    out.push("Guardrails");
    out.push(...table(["metric", "variant", "status", "detail"], report.guardrails.map((g) => [g.name, g.variant, g.ok ? "ok" : "BROKEN", g.detail]), [false, false, false, false]).map((l) => `  ${l}`));
  }
  if (dq.notes.length > 0) {
    out.push("");
    for (const n of dq.notes) out.push(`Note: ${n}`);
  }
  out.push("");
  const d = report.decision;
  out.push(`Decision: ${d.action.toUpperCase()}${d.variant ? ` ${d.variant}` : ""}`);
  out.push(`  ${d.reason}`);
  out.push("");
  out.push(
    `p: fixed-horizon; p adj: ${report.analysis.correction}-adjusted; p seq: always-valid (mSPRT, tau2 = ${report.analysis.tau2}·σ²), ${report.analysis.correction}-adjusted; significant: p seq < ${report.analysis.alpha} and the always-valid interval, intersected over every report, excludes 0 (unstable: those intervals no longer overlap).`,
  );
  return out.join("\n") + "\n";
}
