import { useEffect, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import { ApiError, checkToken, fetchSeries, loadToken, promote, putWeights, rollback, saveToken } from "./api.ts";
import { Chart, PALETTE } from "./chart.tsx";
import { describeStatsError } from "../../stats/error-text.ts";
import { fmtBucketMs, fmtShare, fmtCi, fmtDiff, fmtMs, fmtNum, fmtP, fmtPct, fmtSignedPct, fmtTime, fmtValue, significance, wilsonInterval } from "./format.ts";
import { ReportHistory, Timeline } from "./timeline.ts";
import type { Comparison, LiveEvent, LiveVariantStats, Report, ReportMetric, StreamMeta } from "./types.ts";

const WEEK_MS = 7 * 24 * 3600_000;
/** How often the charts ask for new minutes; a minute bucket changes slowly, the live table covers the seconds. */
const SERIES_POLL_MS = 5_000;

/** paused: the tab is hidden, and its stream closed until it is shown again */
type Connection = "connecting" | "live" | "reconnecting" | "paused";
/** Silence on the event stream past this (or three live intervals, if longer) means it is not live. */
const MIN_STALE_AFTER_MS = 5_000;

export function App() {
  const [meta, setMeta] = useState<StreamMeta | null>(null);
  const [live, setLive] = useState<LiveEvent | null>(null);
  const [report, setReport] = useState<Report | null>(null);
  const [connection, setConnection] = useState<Connection>("connecting");
  const [failures, setFailures] = useState<Record<string, string>>({});
  const [token, setToken] = useState<string | null>(() => loadToken());
  // A token kept from earlier in this tab is checked again: abgate may have restarted with another one, and the page
  // said "unlocked" until the first change failed.
  const recheckToken = useRef(() => {
    const saved = loadToken();
    if (saved === null) return;
    checkToken(saved)
      .then((ok) => {
        if (!ok) {
          // (only the token checked: one entered meanwhile stays)
          if (loadToken() === saved) saveToken(null);
          setToken((t) => (t === saved ? null : t));
        }
      })
      .catch(() => undefined);
  });
  useEffect(() => recheckToken.current(), []);
  const timeline = useRef(new Timeline()).current;
  const history = useRef(new ReportHistory()).current;
  const [seriesVersion, setSeriesVersion] = useState(0);
  /** a fetch of the series now (set by the series poll) */
  const refetchSeries = useRef<(() => void) | null>(null);
  /** when the last live numbers came (this page's clock): their age goes on growing while none come */
  const liveReceivedAtMs = useRef(0);
  const [, setTick] = useState(0);

  useEffect(() => {
    let source: EventSource | null = null;
    // A stream can also go silent without closing (a dropped network, a wedged host), which EventSource never
    // notices: with no event for this long the page calls itself not live and opens a new stream.
    let staleAfterMs = MIN_STALE_AFTER_MS;
    let lastEventAtMs = Date.now();
    /** the last live numbers' time (the server's clock): a new stream replays the last ones, maybe old */
    let lastLiveTs = -Infinity;
    /** which gateway run the numbers come from: after a restart on another store or experiment, the charts start over */
    let runOf: string | null = null;
    const open = () => {
      source?.close();
      const s = new EventSource("/v1/stream");
      source = s;
      const on = <T,>(event: string, fn: (data: T) => void) =>
        s.addEventListener(event, (e) => {
          lastEventAtMs = Date.now();
          fn(JSON.parse((e as MessageEvent<string>).data) as T);
        });
      // Live only once live numbers arrive: an open stream alone does not make the table current.
      s.onerror = () => setConnection("reconnecting");
      on<StreamMeta>("meta", (m) => {
        staleAfterMs = Math.max(MIN_STALE_AFTER_MS, 3 * m.liveIntervalMs);
        setMeta(m);
      });
      on<LiveEvent>("live", (data) => {
        // Live only on other numbers than those shown: a reconnect to a server whose live loop is stuck (a store
        // read hanging) replays the same frame, which would otherwise pass for live every few seconds. (Not "newer":
        // a server clock stepped back would keep the page from ever being live again.)
        if (data.ts !== lastLiveTs) {
          lastLiveTs = data.ts;
          setConnection("live");
        }
        const run = `${data.experiment.experiment}\u0000${data.experiment.startedAt}`;
        if (runOf !== null && run !== runOf) {
          // Another run: its series and reports replace this one's (incremental fetches would keep the old minutes),
          // and a token kept in the tab is checked again (the new run may have another: the page said "unlocked").
          timeline.reset();
          history.reset();
          refetchSeries.current?.();
          recheckToken.current();
        }
        runOf = run;
        document.title = `abgate · ${data.experiment.experiment}`;
        liveReceivedAtMs.current = Date.now();
        setLive(data);
        setFailures(({ live: _gone, ...rest }) => rest);
      });
      on<Report>("report", (data) => {
        history.add(Date.now(), data);
        setReport(data);
        setFailures(({ report: _gone, ...rest }) => rest);
      });
      on<{ source: string; message: string }>("failure", (f) => setFailures((all) => ({ ...all, [f.source]: f.message })));
    };
    // A hidden tab lets its stream go: a browser gives a host 6 connections, and each open tab's stream held one,
    // so a sixth tab left every request of the others waiting (the report, the controls' changes).
    const onVisibility = () => {
      if (document.hidden) {
        source?.close();
        source = null;
        setConnection("paused");
      } else {
        lastEventAtMs = Date.now();
        setConnection("reconnecting");
        open();
      }
    };
    document.addEventListener("visibilitychange", onVisibility);
    if (!document.hidden) open();
    else setConnection("paused");
    const watchdog = setInterval(() => {
      setTick((t) => t + 1);
      if (document.hidden || Date.now() - lastEventAtMs <= staleAfterMs) return;
      setConnection("reconnecting");
      lastEventAtMs = Date.now();
      open();
    }, 1000);
    return () => {
      clearInterval(watchdog);
      document.removeEventListener("visibilitychange", onVisibility);
      source?.close();
    };
  }, []);

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let generation = 0;
    const poll = async () => {
      const mine = generation;
      try {
        const resume = timeline.resumeFromMs();
        const body = await fetchSeries(resume ?? Date.now() - WEEK_MS, resume === null);
        // (a fetch begun before a reset belongs to the old run)
        if (mine === generation) {
          timeline.merge(body);
          setSeriesVersion((v) => v + 1);
        }
        setFailures(({ series: _gone, ...rest }) => rest);
      } catch (err) {
        setFailures((all) => ({ ...all, series: (err as Error).message }));
      }
      if (!stopped && mine === generation) timer = setTimeout(poll, document.hidden ? SERIES_POLL_MS * 10 : SERIES_POLL_MS);
    };
    refetchSeries.current = () => {
      generation++;
      clearTimeout(timer);
      setSeriesVersion((v) => v + 1);
      void poll();
    };
    void poll();
    return () => {
      stopped = true;
      refetchSeries.current = null;
      clearTimeout(timer);
    };
  }, []);

  const experimentName = meta?.experiment ?? live?.experiment.experiment ?? "experiment";
  const variants = live?.experiment.variants.map((v) => v.name) ?? meta?.variants ?? [];
  const control = live?.experiment.control ?? meta?.control ?? variants[0] ?? "control";

  return (
    <>
      <a class="skip" href="#controls">
        Skip to controls
      </a>
      <header class="top">
        <h1>
          abgate <span class="experiment">{experimentName}</span>
        </h1>
        <ConnectionBadge connection={connection} />
        {live && (
          <p class="facts">
            engine <b>{live.experiment.engine}</b> · strategy <b>{live.experiment.strategy}</b> · fallback{" "}
            <b>{live.experiment.fallback}</b> · since <b>{fmtTime(live.experiment.startedAt)}</b> · {fmtNum(live.experiment.counts.requests)} requests,{" "}
            {fmtNum(live.experiment.counts.exposures)} exposures, {fmtNum(live.experiment.counts.events)} events
            {live.experiment.counts.storeError && (
              <span class="bad" data-testid="store-error">
                {" "}
                ({live.experiment.counts.readAt ? `counts as read at ${fmtTime(live.experiment.counts.readAt)}` : "the store has not been read yet"}; the store: {live.experiment.counts.storeError})
              </span>
            )}
          </p>
        )}
      </header>
      {Object.keys(failures).length > 0 && (
        <div class="alert" role="alert">
          {Object.entries(failures).map(([source, message]) => (
            <p key={source}>
              Could not refresh the {source}: {message}
            </p>
          ))}
        </div>
      )}
      <main>
        <section aria-labelledby="variants-h" class="card wide">
          <h2 id="variants-h">Variants</h2>
          <VariantsTable live={live} report={report} stale={connection !== "live"} />
        </section>
        <Decision report={report} reportIntervalMs={meta?.reportIntervalMs} now={live === null ? undefined : live.ts + (Date.now() - liveReceivedAtMs.current)} />
        <Controls token={token} setToken={setToken} live={live} variants={variants} control={control} />
        <section aria-labelledby="traffic-h" class="card wide">
          <h2 id="traffic-h">Traffic</h2>
          <TrafficCharts timeline={timeline} variants={variants} version={seriesVersion} />
        </section>
        <Metrics report={report} meta={meta} timeline={timeline} history={history} variants={variants} control={control} version={seriesVersion} />
      </main>
      <footer class="muted">
        {report?.generatedAt ? `Report generated ${fmtTime(report.generatedAt)}.` : "Waiting for the first report…"} Raw data:{" "}
        <a href="/v1/report">report JSON</a>, <a href="/v1/experiment">experiment JSON</a>.
      </footer>
    </>
  );
}

function ConnectionBadge({ connection }: { connection: Connection }) {
  const text = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", paused: "paused (tab hidden)" }[connection];
  return (
    <p class={`badge conn-${connection}`} role="status" aria-live="polite" data-connection={connection}>
      <span aria-hidden="true">●</span> {text}
    </p>
  );
}

function Decision({ report, reportIntervalMs, now }: { report: Report | null; reportIntervalMs?: number; now?: number }) {
  const decision = report?.decision;
  const srm = report?.srm;
  // A report replayed on joining, or the last one while new ones fail, is not the present: say how old it is.
  const generatedMs = report?.generatedAt ? Date.parse(report.generatedAt) : NaN;
  const ageS = now !== undefined && Number.isFinite(generatedMs) ? Math.max(0, Math.round((now - generatedMs) / 1000)) : undefined;
  const old = ageS !== undefined && reportIntervalMs !== undefined && ageS * 1000 > 3 * reportIntervalMs;
  return (
    <section aria-labelledby="decision-h" class="card decision">
      <h2 id="decision-h">Decision</h2>
      {ageS !== undefined && (
        <p class={old ? "bad" : "muted"} data-testid="report-age">
          {old ? "Out of date: " : ""}report of {fmtTime(report!.generatedAt!)}, {ageS < 120 ? `${ageS} s` : `${Math.round(ageS / 60)} min`} ago
        </p>
      )}
      {decision ? (
        <p class={`action action-${decision.action}`} data-testid="decision">
          <b>{decision.action}</b>
          {decision.variant ? ` ${decision.variant}` : ""}
        </p>
      ) : (
        <p class="muted">No report yet.</p>
      )}
      {decision?.reason && <p class="reason">{decision.reason}</p>}
      {decision?.action === "continue" && typeof decision.unitsNeeded === "number" && (
        <p class="muted">About {fmtNum(decision.unitsNeeded)} more units needed at the observed difference.</p>
      )}
      <h3>Sample ratio</h3>
      {srm ? (
        srm.mismatch ? (
          <p class="bad" data-testid="srm">
            <b>Mismatch</b> ({pText(srm.pValue)}): traffic does not follow the weights; fix assignment before trusting any result.
          </p>
        ) : srm.judged === false ? (
          <p class="muted" data-testid="srm">
            Not judged yet{srm.note ? `: ${srm.note}` : "."}
          </p>
        ) : (
          <p class="good" data-testid="srm">
            OK ({pText(srm.pValue)}){srm.error ? ` — ${srm.error}` : ""}
          </p>
        )
      ) : (
        <p class="muted">—</p>
      )}
      <Guardrails report={report} />
      {(report?.dataQuality?.notes ?? []).length > 0 && (
        <>
          <h3>Data quality</h3>
          <ul class="notes">
            {report!.dataQuality!.notes!.map((n) => (
              <li key={n}>{n}</li>
            ))}
          </ul>
        </>
      )}
    </section>
  );
}

/** "p = 0.041" or "p < 0.001" */
function pText(p: number | null | undefined): string {
  const text = fmtP(p);
  return text.startsWith("<") ? `p ${text}` : `p = ${text}`;
}

/**
 * A box that scrolls sideways when its table is wider than the screen. Focusable and named (role region), so that
 * keyboard users can scroll it too: a box that only a mouse or a finger can scroll hides the columns past its edge
 * from everyone else (WCAG 2.1.1; axe's scrollable-region-focusable).
 */
function ScrollBox({ label, stale = false, children }: { label: string; stale?: boolean; children: ComponentChildren }) {
  return (
    <div class={stale ? "scroll stale" : "scroll"} data-stale={stale ? "true" : undefined} role="region" aria-label={label} tabIndex={0}>
      {children}
    </div>
  );
}

/**
 * `stale`: the event stream is down (abgate stopped or unreachable). The last numbers stay on screen, greyed and
 * dated, rather than passing for the present: a replica shown healthy may be gone by now.
 */
function VariantsTable({ live, report, stale }: { live: LiveEvent | null; report: Report | null; stale: boolean }) {
  if (!live) return <p class="muted">Waiting for live data…</p>;
  const stats = new Map<string, LiveVariantStats>(live.live.map((s) => [s.variant, s]));
  const units = new Map((report?.variants ?? []).map((v) => [v.name, v.units]));
  const totalWeight = live.experiment.variants.reduce((sum, v) => sum + v.weight, 0);
  return (
    <ScrollBox label="Variants table" stale={stale}>
      {stale && (
        <p class="stale-note" data-testid="stale">
          Not live: as of {fmtTime(live.ts)}. Health, rates and counts are from then, until abgate answers again.
        </p>
      )}
      <table class="variants">
        <caption class="sr-only">Each variant's weight, replicas and live traffic</caption>
        <thead>
          <tr>
            <th scope="col">Variant</th>
            <th scope="col">Weight</th>
            <th scope="col">Replicas</th>
            <th scope="col" class="num">
              Req/s
            </th>
            <th scope="col" class="num" title="over the 9 whole seconds before now; a latency bucket's upper edge (past the last bucket, a lower bound)">
              p50
            </th>
            <th scope="col" class="num" title="over the 9 whole seconds before now; a latency bucket's upper edge (past the last bucket, a lower bound)">
              p99
            </th>
            <th scope="col" class="num">
              Errors
            </th>
            <th scope="col" class="num" title="proxied by this abgate since it started; Units, like the report, count every run">
              Requests since start
            </th>
            <th scope="col" class="num">
              Units
            </th>
          </tr>
        </thead>
        <tbody>
          {live.experiment.variants.map((v, i) => {
            const s = stats.get(v.name);
            return (
              <tr key={v.name} data-variant={v.name}>
                <th scope="row">
                  <span class="swatch" style={{ background: PALETTE[i % PALETTE.length] }} aria-hidden="true" />
                  {v.name}
                  {v.name === live.experiment.control && <span class="tag">control</span>}
                </th>
                <td data-testid="weight">
                  {fmtShare(totalWeight > 0 ? v.weight / totalWeight : null)} <span class="muted">({fmtNum(v.weight, 2)})</span>
                </td>
                <td>
                  <span class="muted">
                    {v.healthyReplicas}/{v.replicas.length} healthy
                  </span>
                  {v.healthyReplicas === 0 && v.replicas.length > 0 && (
                    <p class="bad" data-testid="no-healthy">
                      {!fallbackServes(live, v.name)
                        ? "No healthy replica: its requests get 503."
                        : `No healthy replica: its requests are served by ${live.experiment.fallback} (the report still counts them as ${v.name}'s).`}
                    </p>
                  )}
                  <ul class="replicas">
                    {v.replicas.map((r) => (
                      <li key={r.id} class={`health-${r.health.replace(/ /g, "-")}`} title={`${r.address}, ${r.outstanding} in flight`}>
                        <span aria-hidden="true">●</span> {r.id}{" "}
                        <span class="muted">
                          {r.health}
                          {r.checks === "passive" ? " (not checked: only failed requests take it out)" : ""}
                        </span>
                      </li>
                    ))}
                  </ul>
                </td>
                <td class="num" data-testid="rps">
                  {fmtNum(s?.requestsPerSecond, 1)}
                  {s !== undefined && s.fallbackPerSecond > 0 && (
                    <div class="muted" data-testid="fallback-rps" title={`assigned to ${v.name}, served by ${live.experiment.fallback} (the report counts them as ${v.name}'s)`}>
                      + {fmtNum(s.fallbackPerSecond, 1)} via {live.experiment.fallback}
                    </div>
                  )}
                </td>
                <td class="num">{fmtBucketMs(s?.p50Ms)}</td>
                <td class="num">{fmtBucketMs(s?.p99Ms)}</td>
                <td class="num">{fmtPct(s?.errorRate, 2)}</td>
                <td class="num" data-testid="requests">
                  {fmtNum(s?.requests ?? v.requests)}
                </td>
                <td class="num">{fmtNum(units.get(v.name))}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </ScrollBox>
  );
}

/** Whether the fallback takes the requests of `variant` now: it is another variant, with a healthy replica (as the proxy's fallbackFor). */
function fallbackServes(live: LiveEvent, variant: string): boolean {
  const fb = live.experiment.fallback;
  return fb !== "reject" && fb !== variant && (live.experiment.variants.find((v) => v.name === fb)?.healthyReplicas ?? 0) > 0;
}

function TrafficCharts({ timeline, variants, version }: { timeline: Timeline; variants: string[]; version: number }) {
  // Without the minute still filling: its count so far made steady traffic look as if it were falling off, every time.
  // (by the server's clock, which made the minutes: a browser's clock a few seconds off would pick the wrong one)
  const shown = useMemo(() => timeline.minutes.length - (timeline.minutes.length > 1 && timeline.minutes.at(-1)! + timeline.stepMs > (timeline.serverNowMs ?? Date.now()) ? 1 : 0), [version]);
  const xs = useMemo(() => timeline.xs().slice(0, shown), [version]);
  const requests = useMemo(() => variants.map((v) => ({ label: v, values: timeline.requests(v).slice(0, shown) })), [version, variants.join()]);
  return (
    <div class="charts" data-testid="traffic-charts">
      <Chart title="Requests per minute (whole minutes)" yLabel="requests" xs={xs} series={requests} format={(v) => fmtNum(v)} yMinMax={10} integer dataKey={version} />
    </div>
  );
}

function Metrics(props: {
  report: Report | null;
  meta: StreamMeta | null;
  timeline: Timeline;
  history: ReportHistory;
  variants: string[];
  control: string;
  version: number;
}) {
  const { report, meta, timeline, history, variants, control, version } = props;
  const alpha = meta?.alpha ?? 0.05;
  const configured = meta?.metrics ?? [];
  const reported = new Map((report?.metrics ?? []).map((m) => [m.name, m]));
  const xs = useMemo(() => timeline.xs(), [version]);
  const units = new Map((report?.variants ?? []).map((v) => [v.name, v]));
  if (configured.length === 0 && reported.size === 0) {
    return (
      <section class="card wide" aria-labelledby="metrics-h">
        <h2 id="metrics-h">Metrics</h2>
        <p class="muted">No metrics configured.</p>
      </section>
    );
  }
  const names = configured.length ? configured : [...reported.values()].map((m) => ({ name: m.name, kind: m.kind }));
  return (
    <>
      {names.map(({ name, kind }) => {
        const m = reported.get(name);
        const guardrailed = (report?.guardrails ?? []).some((g) => g.name === name);
        if (kind === "mean") {
          // The store keeps no per-minute sums of event values, so this chart follows the report's value from
          // the moment the page opened.
          return (
            <section key={name} class="card wide metric" aria-labelledby={`metric-${name}-h`} data-metric={name}>
              <h2 id={`metric-${name}-h`}>
                {name} <span class="kind">mean{m?.role ? ` · ${m.role}` : ""}</span>
              </h2>
              <MetricTable metric={m} kind={kind} variants={variants} control={control} alpha={alpha} units={units} guardrailed={guardrailed} />
              <Chart
                title={`${name}: value per unit, since this page opened`}
                yLabel="mean"
                xs={history.xs()}
                dataKey={history.size()}
                series={variants.map((v) => ({ label: v, values: history.values(name, v) }))}
                format={(x) => fmtNum(x, 2)}
                yMinMax={1}
              />
            </section>
          );
        }
        const chart =
          kind === "latency"
            ? { title: "Mean latency per minute", yLabel: "ms", values: (v: string) => timeline.meanLatencyMs(v), format: fmtMs, yMinMax: 5 }
            : kind === "error_rate"
              ? { title: "Error rate per minute", yLabel: "errors", values: (v: string) => timeline.errorRate(v), format: (x: number | null) => fmtPct(x, 1), yMinMax: 0.02 }
              : { title: "Conversion rate, cumulative", yLabel: "rate", values: (v: string) => timeline.cumulativeRate(v, name), format: (x: number | null) => fmtPct(x, 1), yMinMax: 0.05 };
        return (
          <section key={name} class="card wide metric" aria-labelledby={`metric-${name}-h`} data-metric={name}>
            <h2 id={`metric-${name}-h`}>
              {name} <span class="kind">{kind.replace("_", " ")}{m?.role ? ` · ${m.role}` : ""}</span>
            </h2>
            <MetricTable metric={m} kind={kind} variants={variants} control={control} alpha={alpha} units={units} guardrailed={guardrailed} />
            <Chart
              title={`${name}: ${chart.title}`}
              yLabel={chart.yLabel}
              xs={xs}
              series={variants.map((v) => ({ label: v, values: chart.values(v) }))}
              format={chart.format}
              yMinMax={chart.yMinMax}
              dataKey={version}
            />
          </section>
        );
      })}
    </>
  );
}

function MetricTable(props: {
  metric: ReportMetric | undefined;
  kind: string;
  variants: string[];
  control: string;
  alpha: number;
  units: Map<string, { units?: number; requests?: number }>;
  guardrailed: boolean;
}) {
  const { metric, kind, variants, control, alpha, units, guardrailed } = props;
  if (!metric) return <p class="muted">Not in the report yet.</p>;
  if (metric.error) return <p class="bad">{describeStatsError(metric.error)}</p>;
  const byVariant = new Map<string, Comparison>((metric.comparisons ?? []).map((c) => [c.variant, c]));
  // Per-variant intervals exist for rates only: a proportion's variance follows from its value and its n.
  const nOf = (v: string, given?: number) => given ?? (kind === "error_rate" ? units.get(v)?.requests : units.get(v)?.units);
  const level = `${Math.round((1 - alpha) * 100)}%`;
  // latency and error rate count requests, not units
  const perRequest = kind === "latency" || kind === "error_rate";
  const rows = variants.filter((v) => v === control || byVariant.has(v));
  return (
    <ScrollBox label={`${metric.name} table`}>
      <table class="metric-table">
        <caption class="sr-only">
          {metric.name}: value per variant with its {level} interval, and each variant against {control}
        </caption>
        <thead>
          <tr>
            <th scope="col">Variant</th>
            <th scope="col" class="num">
              Value
            </th>
            <th scope="col">{level} CI</th>
            <th scope="col" class="num">
              Δ vs {control}
            </th>
            <th scope="col">Δ {level} CI</th>
            <th scope="col" class="num">
              Lift
            </th>
            <th scope="col">Lift {level} CI</th>
            <th scope="col" class="num">
              p (fixed)
            </th>
            <th scope="col" class="num">
              p adjusted
            </th>
            <th scope="col" class="num">
              p (sequential, adjusted)
            </th>
            <th scope="col" class="num">
              Chance to win
            </th>
          </tr>
        </thead>
        <tbody>
          {rows.map((v) => {
            const isControl = v === control;
            const c = byVariant.get(v);
            const value = isControl ? metric.control?.value : c?.value;
            const n = nOf(v, isControl ? metric.control?.units : c?.units);
            const ci = kind === "conversion" || kind === "error_rate" ? wilsonInterval(value, n, alpha) : null;
            const f = (x: number | null) => fmtValue(kind, x);
            const verdict = significance(kind, c, guardrailed);
            return (
              <tr key={v} data-variant={v} class={verdict ?? ""}>
                <th scope="row">
                  {v}
                  {isControl && <span class="tag">control</span>}
                  {verdict === "better" && <span class="tag sig-better">significantly better</span>}
                  {verdict === "worse" && <span class="tag sig-worse">significantly worse</span>}
                  {c?.sequentialError === "NON_STATIONARY" && (
                    <span class="tag" title="the always-valid intervals of successive reports no longer overlap: the effect moved, so no verdict">
                      unstable
                    </span>
                  )}
                </th>
                <td class="num">{f(value ?? null)}</td>
                <td>{fmtCi(ci, f)}</td>
                {isControl ? (
                  <td colSpan={8} class="muted">
                    baseline
                  </td>
                ) : (
                  <>
                    <td class="num">{fmtDiff(kind, c?.absolute?.estimate)}</td>
                    <td>{fmtCi(c?.absolute?.ci, (x) => fmtDiff(kind, x))}</td>
                    <td class="num">{fmtSignedPct(c?.relative?.estimate)}</td>
                    <td>{fmtCi(c?.relative?.ci, (x) => fmtSignedPct(x))}</td>
                    <td class="num">{fmtP(c?.pValue)}</td>
                    <td class="num">{fmtP(c?.pValueAdjusted)}</td>
                    <td class="num" title={`before the adjustment for multiple comparisons: ${fmtP(c?.pValueSequential)}`}>
                      {fmtP(c?.pValueSequentialAdjusted ?? c?.pValueSequential)}
                    </td>
                    <td class="num">{fmtPct(c?.chanceToWin, 1)}</td>
                  </>
                )}
              </tr>
            );
          })}
        </tbody>
      </table>
      {(metric.comparisons ?? []).filter((c) => c.adjusted).map((c) => (
        <p key={`${c.variant}-adjusted`} class="muted" data-adjusted={c.variant}>
          {c.variant}: the weights changed during the experiment, so Δ, lift, p and chance to win compare it with {control}{" "}
          {c.adjusted!.periods === 1
            ? "within the one weight period that has both"
            : `within each of ${c.adjusted!.periods} weight periods, weighted by their ${c.adjusted!.weights === "precision" ? "precision" : perRequest ? "requests" : "units"}`}
          :{" "}
          {fmtValue(kind, c.adjusted!.value)} vs {fmtValue(kind, c.adjusted!.control)}
          {c.adjusted!.excludedUnits > 0 ? ` (${c.adjusted!.excludedUnits} ${perRequest ? "requests" : "units"} of periods without both left out)` : ""}. The values above pool every period.
        </p>
      ))}
      {(metric.comparisons ?? []).filter((c) => c.error).map((c) => (
        <p key={c.variant} class="muted">
          {c.variant}: {describeStatsError(c.error!)}
        </p>
      ))}
    </ScrollBox>
  );
}

function Guardrails({ report }: { report: Report | null }) {
  const guardrails = report?.guardrails ?? [];
  if (guardrails.length === 0) return null;
  return (
    <>
      <h3>Guardrails</h3>
      <ul class="guardrails">
        {guardrails.map((g) => {
          // (ok until judged: not a green OK that nothing was measured for)
          const unjudged = g.ok && (g.pValueSequential === null || /^not enough data/.test(g.detail ?? ""));
          return (
          <li key={`${g.name}-${g.variant}`} class={unjudged ? "muted" : g.ok ? "good" : "bad"}>
            <b>{unjudged ? "NOT JUDGED YET" : g.ok ? "OK" : "BREACHED"}</b> {g.name} · {g.variant}
            {g.detail ? <span class="muted"> — {g.detail}</span> : null}
          </li>
          );
        })}
      </ul>
    </>
  );
}

function Controls(props: { token: string | null; setToken: (t: string | null) => void; live: LiveEvent | null; variants: string[]; control: string }) {
  const { token, setToken, live, variants, control } = props;
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const [busy, setBusy] = useState(false);
  const [draft, setDraft] = useState<Record<string, string> | null>(null);
  /** the weights in force when the draft was started: if they change meanwhile (another operator), the draft is stale */
  const [draftBase, setDraftBase] = useState<string>("");
  const [promoteTo, setPromoteTo] = useState<string>("");
  const [confirming, setConfirming] = useState<{ label: string; yes: string; act: () => void } | null>(null);
  const locked = !token;
  const current = Object.fromEntries((live?.experiment.variants ?? []).map((v) => [v.name, v.weight]));
  const shown = (v: string) => draft?.[v] ?? (current[v] === undefined ? "" : String(current[v]));

  const run = async (what: string, action: (t: string) => Promise<unknown>) => {
    if (!token) return;
    setBusy(true);
    setMessage(null);
    try {
      await action(token);
      setMessage({ ok: true, text: `${what}: done.` });
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        setToken(null);
        saveToken(null);
        setMessage({ ok: false, text: `${what}: the admin token was refused; enter it again.` });
      } else {
        setMessage({ ok: false, text: `${what} failed: ${(err as Error).message}` });
      }
      return false;
    } finally {
      setBusy(false);
    }
  };

  const submitWeights = async (e: Event) => {
    e.preventDefault();
    const weights: Record<string, number> = {};
    for (const v of variants) {
      const n = Number(shown(v));
      if (shown(v).trim() === "" || !Number.isFinite(n) || n < 0) {
        setMessage({ ok: false, text: `Weight of ${v} must be a number ≥ 0.` });
        return;
      }
      weights[v] = n;
    }
    if (Object.values(weights).every((w) => w === 0)) {
      setMessage({ ok: false, text: "At least one weight must be above 0." });
      return;
    }
    let answered: Record<string, number> | undefined;
    if (await run("Weights", async (t) => void (answered = ((await putWeights(t, weights)) as { weights?: Record<string, number> }).weights))) {
      setDraft(null);
      // The answer is the weights now in force: under the bandit only a 0 (pause) takes, the rest follows the
      // posterior, and "done" alone would say the shares typed are in force.
      const total = Object.values(weights).reduce((a, b) => a + b, 0);
      const totalNow = Object.values(answered ?? {}).reduce((a, b) => a + b, 0);
      const differs = answered !== undefined && totalNow > 0 && variants.some((v) => Math.abs((answered![v] ?? 0) / totalNow - weights[v]! / total) > 0.005);
      if (differs) setMessage({ ok: true, text: `Weights: sent; the shares in force are ${variants.map((v) => `${v} ${fmtPct((answered![v] ?? 0) / totalNow, 1)}`).join(", ")}${bandit ? " (the bandit sets shares from the data; a weight of 0 pauses a variant)" : ""}.` });
    }
  };
  const bandit = live?.experiment.strategy === "bandit";
  // (as typed: a field cleared is a change, which the check on Apply then names)
  const changed = draft !== null && variants.some((v) => shown(v).trim() === "" || Number(shown(v)) !== current[v]);

  const target = promoteTo || variants.find((v) => v !== control) || variants[0] || "";
  const disabledWhy = locked ? "controls-locked" : undefined;
  // (a negative weight made the preview show shares such as -11.1% and 66.7%, and Apply then said nothing in the page)
  const negative = variants.filter((v) => Number(shown(v)) < 0);
  const draftTotal = variants.reduce((sum, v) => sum + Math.max(0, Number(shown(v)) || 0), 0);

  return (
    <section id="controls" class="card controls" aria-labelledby="controls-h" tabIndex={-1}>
      <h2 id="controls-h">Controls</h2>
      <TokenForm token={token} setToken={setToken} />
      {locked && (
        <p id="controls-locked" class="muted">
          Read-only: enter the admin token above to change weights, promote or roll back.
        </p>
      )}
      <form class="weights" onSubmit={submitWeights} aria-label="Change weights">
        <fieldset disabled={locked || busy}>
          <legend>Weights</legend>
          {variants.map((v) => (
            <div class="field" key={v}>
              <label for={`weight-${v}`}>{v}</label>
              <input
                id={`weight-${v}`}
                name={v}
                type="number"
                min={0}
                step="any"
                inputMode="decimal"
                value={shown(v)}
                aria-describedby={disabledWhy}
                onInput={(e) => {
                  if (draft === null) setDraftBase(JSON.stringify(current));
                  setDraft({ ...Object.fromEntries(variants.map((x) => [x, shown(x)])), [v]: (e.currentTarget as HTMLInputElement).value });
                }}
              />
            </div>
          ))}
          <p class={negative.length > 0 ? "bad total" : "muted total"} aria-live="polite">
            {negative.length > 0
              ? `A weight cannot be negative: ${negative.join(", ")}.`
              : variants.map((v) => `${v} ${fmtShare(draftTotal > 0 ? (Number(shown(v)) || 0) / draftTotal : null)}`).join(" · ")}
          </p>
          {!bandit && draft !== null && draftBase !== "" && draftBase !== JSON.stringify(current) && (
            <p class="bad" data-testid="draft-stale">
              The weights changed while you edited: now {variants.map((v) => `${v} ${current[v] ?? 0}`).join(", ")}. Apply would replace them; Reset starts from them.
            </p>
          )}
          {bandit && <p class="muted">Bandit: after the burn-in, shares follow the data. A weight of 0 pauses a variant; other weights do not set its share then.</p>}
          <button type="submit" aria-describedby={disabledWhy} disabled={!changed} title={changed ? undefined : "change a weight first"}>
            Apply weights
          </button>
          {draft && (
            <button type="button" class="secondary" onClick={() => setDraft(null)}>
              Reset
            </button>
          )}
        </fieldset>
      </form>
      <form
        class="promote"
        aria-label="Promote a variant"
        onSubmit={(e) => {
          e.preventDefault();
          const unhealthy = live?.experiment.variants.find((v) => v.name === target)?.healthyReplicas === 0;
          const warning = unhealthy ? ` It has no healthy replica now: its requests ${live === null || !fallbackServes(live, target) ? "get 503" : `go to ${live.experiment.fallback}`} until one is.` : "";
          setConfirming({ label: `Send all new traffic to ${target}?${warning}`, yes: `Yes, promote ${target}`, act: () => void run(`Promote ${target}`, (t) => promote(t, target)) });
        }}
      >
        <fieldset disabled={locked || busy}>
          <legend>Promote</legend>
          <label for="promote-variant">Variant to send 100% of traffic to</label>
          <select id="promote-variant" value={target} onChange={(e) => setPromoteTo((e.currentTarget as HTMLSelectElement).value)} aria-describedby={disabledWhy}>
            {variants.map((v) => (
              <option key={v} value={v}>
                {v}
              </option>
            ))}
          </select>
          <button type="submit" aria-describedby={disabledWhy}>
            Promote
          </button>
        </fieldset>
      </form>
      <form
        class="rollback"
        aria-label="Roll back"
        onSubmit={(e) => {
          e.preventDefault();
          setConfirming({ label: `Send all new traffic back to ${control}?`, yes: `Yes, roll back to ${control}`, act: () => void run("Rollback", (t) => rollback(t)) });
        }}
      >
        <fieldset disabled={locked || busy}>
          <legend>Roll back</legend>
          <p class="muted">Send 100% of traffic to {control}, the control.</p>
          <button type="submit" class="danger" aria-describedby={disabledWhy}>
            Roll back to {control}
          </button>
        </fieldset>
      </form>
      {confirming && !locked && <Confirm {...confirming} done={() => setConfirming(null)} />}
      <p class={message ? (message.ok ? "good" : "bad") : ""} role="status" aria-live="polite" data-testid="control-status">
        {message?.text ?? ""}
      </p>
    </section>
  );
}

/**
 * A second step for changes that move all traffic at once: one stray Enter must not promote a variant. Focus goes
 * to Cancel, the safe choice (as desktop dialogs do for destructive actions): with it on the confirming button, a
 * second Enter 40 ms after the first (a key repeat) promoted. Escape or Cancel backs out.
 */
function Confirm({ label, yes, act, done }: { label: string; yes: string; act: () => void; done: () => void }) {
  const cancel = useRef<HTMLButtonElement>(null);
  const root = useRef<HTMLDivElement>(null);
  // A layout effect: focus lands before the browser paints the prompt. After paint (useEffect), an Enter typed at
  // once on a busy machine went to the button that opened it, and the prompt then waited for ever. When the prompt
  // goes, focus goes back to what opened it, not to the top of the page (a keyboard user lost their place).
  useLayoutEffect(() => {
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    const prompt = root.current;
    cancel.current?.focus();
    return () => {
      const now = document.activeElement;
      const lost = now === null || now === document.body || (prompt !== null && prompt.contains(now));
      if (lost && opener !== null && opener.isConnected) requestAnimationFrame(() => opener.focus());
    };
  }, [label]);
  return (
    <div
      ref={root}
      class="confirm"
      role="group"
      aria-labelledby="confirm-label"
      onKeyDown={(e) => {
        if (e.key === "Escape") done();
      }}
    >
      <p id="confirm-label">{label}</p>
      <button
        type="button"
        class="danger"
        onClick={() => {
          done();
          act();
        }}
      >
        {yes}
      </button>
      <button ref={cancel} type="button" class="secondary" onClick={done}>
        Cancel
      </button>
    </div>
  );
}

function TokenForm({ token, setToken }: { token: string | null; setToken: (t: string | null) => void }) {
  const [value, setValue] = useState("");
  const [state, setState] = useState<"idle" | "checking" | "rejected" | "error">("idle");
  const [error, setError] = useState("");
  if (token) {
    return (
      <div class="token unlocked">
        <p class="good">Controls unlocked for this tab.</p>
        <button
          type="button"
          class="secondary"
          onClick={() => {
            saveToken(null);
            setToken(null);
          }}
        >
          Forget token
        </button>
      </div>
    );
  }
  return (
    <form
      class="token"
      aria-label="Enter the admin token"
      onSubmit={async (e) => {
        e.preventDefault();
        const t = value.trim();
        if (!t) return;
        setState("checking");
        try {
          if (await checkToken(t)) {
            saveToken(t);
            setToken(t);
            setValue("");
            setState("idle");
          } else setState("rejected");
        } catch (err) {
          setError((err as Error).message);
          setState("error");
        }
      }}
    >
      <label for="admin-token">Admin token</label>
      <input
        id="admin-token"
        type="password"
        autocomplete="off"
        spellcheck={false}
        value={value}
        onInput={(e) => setValue((e.currentTarget as HTMLInputElement).value)}
        aria-describedby="token-help"
        aria-invalid={state === "rejected"}
      />
      <button type="submit" disabled={state === "checking"}>
        Unlock controls
      </button>
      <p id="token-help" class={state === "rejected" || state === "error" ? "bad" : "muted"} aria-live="polite">
        {state === "rejected"
          ? "That token was refused."
          : state === "error"
            ? `Could not check the token: ${error}`
            : "Kept in this tab's session storage only, sent as an Authorization header."}
      </p>
    </form>
  );
}
