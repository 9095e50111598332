import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import { spanText } from "./format.ts";

/** Colours that stay distinct for the common colour-vision deficiencies (Okabe & Ito palette). */
/**
 * Line colours: the Okabe-Ito hues, darkened where a line on white fell below WCAG's 3:1 for graphics (its yellow was
 * 1.3:1, its orange 2.2:1), and three more so that eleven variants get a colour each. Every one is 3.8:1 or more.
 */
export const PALETTE = ["#0072B2", "#B26B00", "#00876A", "#B0508F", "#332288", "#D55E00", "#7B6800", "#000000", "#882255", "#0E7C86", "#5A5A5A"];

export interface ChartProps {
  title: string;
  /** what the y axis measures, read by screen readers along with the latest values */
  yLabel: string;
  xs: number[];
  series: { label: string; values: (number | null)[] }[];
  format: (v: number | null) => string;
  height?: number;
  /** the y axis reaches at least this high, so that an all-zero series reads as zero rather than as noise */
  yMinMax?: number;
  /** changes exactly when the data does: redrawing a week of points on every live tick would waste the page's time */
  dataKey: unknown;
  /** counts: y ticks only at whole numbers */
  integer?: boolean;
}

const INTEGER_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7];

/** The x axis spans at least this much, so that the first minutes of an experiment do not fill the chart. */
const MIN_SPAN_S = 30 * 60;

/**
 * uPlot ranges x over the data only (a single point gets a day-wide axis), so the first minutes of an experiment
 * would stretch across the whole chart: a short series is shown in a window of at least MIN_SPAN_S instead.
 */
function fitX(u: uPlot): void {
  const xs = u.data[0];
  if (xs.length === 0) return;
  const min = xs[0]!;
  const max = xs[xs.length - 1]!;
  if (max - min < MIN_SPAN_S) u.setScale("x", { min: max - MIN_SPAN_S, max: max + 60 });
}

/**
 * One uPlot time chart. uPlot draws a week of minutes (10k points per series) on canvas in a few milliseconds, so
 * the chart is rebuilt only when its series change and otherwise fed with setData.
 */
export function Chart({ title, yLabel, xs, series, format, dataKey, height = 200, yMinMax = 0, integer = false }: ChartProps) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  /** the user dragged to zoom into part of the data: the polls' new data must not reset it (a double click does) */
  const zoomed = useRef(false);
  const labels = series.map((s) => s.label).join("\u0000");
  const data = [xs, ...series.map((s) => s.values)] as uPlot.AlignedData;

  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height,
      cursor: { drag: { x: true, y: false } },
      hooks: {
        // Zoomed: the x scale shows less than the data spans (fitX's short-series window shows more).
        setScale: [
          (u: uPlot, key: string) => {
            if (key !== "x") return;
            const xs = u.data[0];
            const min = u.scales.x!.min;
            const max = u.scales.x!.max;
            zoomed.current = xs.length > 1 && min != null && max != null && (min > xs[0]! || max < xs[xs.length - 1]!);
            host.current?.setAttribute("data-zoomed", zoomed.current ? "1" : "0");
          },
        ],
      },
      legend: { live: true },
      scales: {
        x: {
          time: true,
          // The data's own span; a window up to now while there is none (fitX widens a short series). uPlot calls this
          // whenever it scales, data or not: returning the last 30 minutes always, it showed a week of data as its
          // last half hour.
          range: (_u, min, max) => (min != null && max != null && Number.isFinite(min) && Number.isFinite(max) ? [min, max] : [Date.now() / 1000 - MIN_SPAN_S, Date.now() / 1000]),
        },
        // Every quantity charted here is non-negative; starting at zero keeps differences between variants honest.
        y: { range: (_u, _min, max) => [0, Math.max(yMinMax, (max ?? 0) * 1.1) || 1] },
      },
      axes: [{}, { values: (_u, ticks) => ticks.map((t) => format(t)), size: 70, label: yLabel, ...(integer ? { incrs: INTEGER_INCRS } : {}) }],
      series: [
        { label: "time" },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          spanGaps: false,
          value: (_u: uPlot, v: number | null) => format(v),
        })),
      ],
    };
    const u = new uPlot(opts, data, el);
    fitX(u);
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Rebuilt only when the set of series changes; data flows through the effect below.
  }, [labels, height, yLabel, yMinMax, integer]);

  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    // (while zoomed, uPlot's setData would rescale to all the data every 5 s, and the user's zoom was lost)
    if (zoomed.current) {
      u.setData(data, false);
      return;
    }
    u.setData(data);
    fitX(u);
  }, [dataKey, labels]);

  const latest = series
    .map((s) => {
      for (let i = s.values.length - 1; i >= 0; i--) if (s.values[i] !== null && s.values[i] !== undefined) return `${s.label} ${format(s.values[i]!)}`;
      return `${s.label} no data`;
    })
    .join(", ");
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <div
        ref={host}
        class="chart-canvas"
        role="img"
        aria-label={`Chart of ${title} (${yLabel}), ${spanText(xs)}; latest: ${latest}`}
        data-points={xs.length}
      />
      {xs.length === 0 && <p class="muted chart-empty">No traffic recorded yet.</p>}
    </figure>
  );
}
