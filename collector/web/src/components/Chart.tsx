// A time-series chart (uPlot): one line per series, x in ms since the epoch.
// Its container carries the test hooks `data-testid="chart"`,
// `data-metric` and `data-points` (the points drawn, set once loaded).

import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { api, errorText, qs } from "../api";
import { byUnit, type Unit } from "../format";
import { clearError, isDark, reportError, useStore } from "../store";
import type { Point, QueryResponse, Series } from "../types";

export interface ChartSeries {
  label: string;
  points: Point[];
}

/** Colours that read on dark and light backgrounds (Tableau 10). */
export const PALETTE = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

interface ChartProps {
  metric: string;
  title: string;
  unit: Unit;
  /** null while loading. */
  series: ChartSeries[] | null;
  error?: string;
  height?: number;
  /** The time range asked for, ms: the x axis spans it whatever the data. */
  xRange?: [number, number];
}

/** Series on one x axis: the union of their times, null where one has no
 * point. The ends of `xRange`, if given, are times too (with no point), so
 * the axis spans the range asked for and zooming still works. */
export function align(series: ChartSeries[], xRange?: [number, number]): uPlot.AlignedData {
  const times = series.flatMap((s) => s.points.map((p) => p[0]));
  if (xRange) times.push(xRange[0], xRange[1]);
  const xs = [...new Set(times)].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map((s) => {
    const y: (number | null)[] = new Array(xs.length).fill(null);
    for (const [t, v] of s.points) y[index.get(t)!] = isFinite(v) ? v : null;
    return y;
  });
  return [xs, ...ys] as uPlot.AlignedData;
}

function cssVar(name: string, fallback: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

export function Chart({ metric, title, unit, series, error, height = 190, xRange }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useStore();
  // Axis colours come from the theme: a new plot when it changes.
  const dark = isDark();
  const points = series ? series.reduce((n, s) => n + s.points.filter((p) => isFinite(p[1])).length, 0) : 0;

  const labelsKey = series ? series.map((s) => s.label).join("\u0000") : "";
  const hasData = points > 0;
  const latest = useRef(series);
  latest.current = series;
  const span = useRef(xRange);
  span.current = xRange;

  // A new plot when what it shows changes shape (series, unit, theme)...
  useEffect(() => {
    const el = box.current;
    const data = latest.current;
    if (!el || !data || !hasData) return;
    const fg = cssVar("--muted", "#888");
    const grid = cssVar("--grid", "rgba(128,128,128,0.15)");
    const axis = (): uPlot.Axis => ({
      stroke: fg,
      grid: { stroke: grid, width: 1 },
      ticks: { stroke: grid, width: 1 },
    });
    const opts: uPlot.Options = {
      width: Math.max(el.clientWidth, 200),
      height,
      ms: 1,
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      scales: { x: { time: true } },
      series: [
        {},
        ...data.map((s, i) => ({
          label: s.label,
          stroke: PALETTE[i % PALETTE.length],
          width: 1.5,
          spanGaps: false,
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : byUnit(unit, v)),
        })),
      ],
      axes: [
        { ...axis(), space: 60, values: (_u: uPlot, splits: number[], _i: number, _s: number, incr: number) => splits.map((v) => timeTick(v, incr)) },
        { ...axis(), size: 64, values: (_u: uPlot, splits: number[]) => splits.map((v) => byUnit(unit, v)) },
      ],
    };
    const u = new uPlot(opts, align(data, span.current), el);
    plot.current = u;
    const ro = new ResizeObserver(() => {
      const w = Math.max(el.clientWidth, 200);
      if (Math.abs(w - u.width) > 2) u.setSize({ width: w, height });
    });
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [labelsKey, hasData, dark, unit, height]);

  // ...and new data in place otherwise (no flicker on refresh), keeping a
  // zoom the user made (drag to zoom, double-click to reset).
  useEffect(() => {
    const u = plot.current;
    if (!u || !series || !hasData) return;
    const xs = u.data[0];
    const { min, max } = u.scales.x;
    const zoomed = xs.length > 1 && min != null && max != null && (min > xs[0] + 1 || max < xs[xs.length - 1] - 1);
    u.setData(align(series, span.current), !zoomed);
  }, [series]);

  const state = error ? "error" : series === null ? "loading" : "ready";
  return (
    <figure class="chart card" data-testid="chart" data-metric={metric} data-points={String(points)} data-state={state}>
      <figcaption>{title}</figcaption>
      {error ? (
        <p class="chart-note error-text" style={{ minHeight: `${height}px` }}>
          {error}
        </p>
      ) : series === null ? (
        <p class="chart-note muted" style={{ minHeight: `${height}px` }}>
          Loading…
        </p>
      ) : !hasData ? (
        <p class="chart-note muted" style={{ minHeight: `${height}px` }}>
          No data in this range.
        </p>
      ) : null}
      {/* uPlot owns this element's children. */}
      <div ref={box} class="plot" hidden={!hasData || !!error} />
    </figure>
  );
}

/** An x-axis label: the time of day (with seconds for steps under a minute),
 * or the date where a tick falls on midnight or ticks are days apart. */
export function timeTick(ms: number, incr: number): string {
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  const date = `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  if (incr >= 86_400_000) return date;
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (incr >= 3_600_000 && d.getHours() === 0 && d.getMinutes() === 0) return date;
  if (incr < 60_000) return `${hm}:${pad(d.getSeconds())}`;
  return hm;
}

/** A series' name for the legend, from its group (`{"member": "m0"}` -> m0). */
export function seriesLabel(s: Series): string {
  const g = s.group ?? {};
  const parts = ["cluster", "region", "member", "labels"].map((k) => g[k]).filter(Boolean);
  for (const [k, v] of Object.entries(g)) if (!["cluster", "region", "member", "labels"].includes(k) && v) parts.push(`${k}=${v}`);
  return parts.join(" / ") || "all";
}

export interface QuerySpec {
  metric: string;
  fn: string;
  q?: number;
  labels?: string;
  title: string;
  unit: Unit;
}

interface QueryChartProps {
  spec: QuerySpec;
  cluster: string;
  member?: string;
  fromMs: number;
  /** Changes whenever the chart should fetch again. */
  refresh: number;
}

/** A chart of one fleet query for one cluster, a line per member. */
export function QueryChart({ spec, cluster, member, fromMs, refresh }: QueryChartProps) {
  const [series, setSeries] = useState<ChartSeries[] | null>(null);
  const [xRange, setXRange] = useState<[number, number] | undefined>(undefined);
  const [error, setError] = useState("");
  const key = `chart:${spec.metric}`;

  useEffect(() => {
    let cancelled = false;
    const from = `now-${Math.round(fromMs / 1000)}s`;
    const path = `/api/v1/query${qs({
      metric: spec.metric,
      fn: spec.fn,
      q: spec.q,
      labels: spec.labels,
      cluster,
      member,
      by: "member",
      agg: "max",
      from,
    })}`;
    api<QueryResponse>(path)
      .then((r) => {
        if (cancelled) return;
        setXRange([r.from_ms, r.to_ms]);
        setSeries(
          (r.series ?? [])
            .map((s) => ({ label: s.group?.member || seriesLabel(s), points: s.points ?? [] }))
            .sort((a, b) => a.label.localeCompare(b.label)),
        );
        setError("");
        clearError(key);
      })
      .catch((e) => {
        if (cancelled) return;
        setError(errorText(e));
        setSeries([]);
        reportError(key, `${spec.title}: ${errorText(e)}`);
      });
    return () => {
      cancelled = true;
    };
  }, [spec.metric, spec.fn, spec.q, spec.labels, cluster, member, fromMs, refresh]);

  useEffect(() => () => clearError(key), [key]);

  return <Chart metric={spec.metric} title={spec.title} unit={spec.unit} series={series} error={error} xRange={xRange} />;
}
