// Compare clusters (or the clusters of a region) on one metric: one chart
// with a line per cluster (or per region) and a table of last/min/avg/max.
// URL: `#/compare?clusters=a,b&metric=M&fn=F&q=Q&range=R&by=cluster`
// (`region=R` instead of `clusters` takes every cluster of that region).

import { useEffect, useMemo, useState } from "preact/hooks";
import { api, errorText, qs } from "../api";
import { Chart, PALETTE, seriesLabel, type ChartSeries } from "../components/Chart";
import { RangePicker } from "../components/Shell";
import { byUnit, type Unit } from "../format";
import { summarize } from "../health";
import { href, navigate, RANGES, rangeMs, rangeParam, withParams, type Route } from "../router";
import { clearError, reportError, useStore } from "../store";
import type { QueryResponse, SummaryRow } from "../types";

interface MetricChoice {
  metric: string;
  fn: string;
  q?: number;
  labels?: string;
  title: string;
  unit: Unit;
}

/** The metrics offered; the URL may name another (then shown as given). */
export const COMPARE_METRICS: MetricChoice[] = [
  { metric: "etcd_disk_wal_fsync_duration_seconds", fn: "quantile", q: 0.99, title: "WAL fsync p99", unit: "seconds" },
  { metric: "etcd_disk_backend_commit_duration_seconds", fn: "quantile", q: 0.99, title: "Backend commit p99", unit: "seconds" },
  { metric: "etcd_network_peer_round_trip_time_seconds", fn: "quantile", q: 0.99, title: "Peer RTT p99", unit: "seconds" },
  { metric: "grpc_server_started_total", fn: "rate", title: "Requests per second", unit: "rate" },
  { metric: "etcd_server_proposals_committed_total", fn: "rate", title: "Proposals committed per second", unit: "rate" },
  { metric: "etcd_mvcc_db_total_size_in_bytes", fn: "value", title: "DB size", unit: "bytes" },
  { metric: "etcdmon_host_cpu_utilization", fn: "value", title: "Host CPU", unit: "ratio" },
  { metric: "etcdmon_status_latency_seconds", fn: "value", title: "Status call latency", unit: "seconds" },
  { metric: "etcdmon_fsync_probe_seconds", fn: "value", labels: 'quantile="0.99"', title: "Fsync probe p99 (agent)", unit: "seconds" },
];

function unitOf(metric: string): Unit {
  if (metric.endsWith("_seconds")) return "seconds";
  if (metric.endsWith("_bytes")) return "bytes";
  if (metric.endsWith("_utilization") || metric.endsWith("_ratio")) return "ratio";
  return "count";
}

export function Compare({ route }: { route: Route }) {
  const s = useStore();
  const p = route.params;
  const metric = p.get("metric") || COMPARE_METRICS[0].metric;
  const preset = COMPARE_METRICS.find((m) => m.metric === metric);
  const fn = p.get("fn") || preset?.fn || "value";
  const qText = p.get("q") ?? (preset?.q !== undefined ? String(preset.q) : "");
  const q = fn === "quantile" ? Number(qText || "0.99") : undefined;
  const labels = p.get("labels") ?? preset?.labels ?? "";
  const range = rangeParam(route, "1h");
  const region = p.get("region") ?? "";
  const by = p.get("by") === "region" ? "region" : "cluster";
  const chosen = (p.get("clusters") ?? "")
    .split(",")
    .map((c) => c.trim())
    .filter(Boolean);
  const unit: Unit = fn === "rate" ? "rate" : preset?.unit ?? unitOf(metric);
  const title = preset && fn === preset.fn ? preset.title : `${fn}(${metric})`;

  const all = useMemo(() => (s.clusters ?? []).map((c) => c.name).sort(), [s.clusters]);
  const regions = useMemo(
    () => [...new Set((s.clusters ?? []).flatMap((c) => summarize(c, null).regions))].sort(),
    [s.clusters],
  );

  const [result, setResult] = useState<{ series: ChartSeries[]; table: SummaryRow[]; xRange?: [number, number] } | null>(null);
  const [error, setError] = useState("");
  const [tick, setTick] = useState(0);
  const scoped = region !== "" || chosen.length > 0;

  useEffect(() => {
    const t = window.setInterval(() => setTick((n) => n + 1), 30_000);
    return () => window.clearInterval(t);
  }, []);

  useEffect(() => {
    if (!scoped) {
      setResult(null);
      setError("");
      return;
    }
    let cancelled = false;
    const path = `/api/v1/compare${qs({
      clusters: region ? undefined : chosen.join(","),
      region: region || undefined,
      metric,
      fn,
      q,
      labels: labels || undefined,
      by,
      from: `now-${Math.round(rangeMs(range) / 1000)}s`,
    })}`;
    api<QueryResponse>(path)
      .then((r) => {
        if (cancelled) return;
        const series = (r.series ?? [])
          .map((x) => ({ label: seriesLabel(x), points: x.points ?? [] }))
          .sort((a, b) => a.label.localeCompare(b.label));
        const table = [...(r.table ?? [])].sort((a, b) => b.max - a.max);
        setResult({ series, table, xRange: [r.from_ms, r.to_ms] });
        setError("");
        clearError("compare");
      })
      .catch((e) => {
        if (cancelled) return;
        setError(errorText(e));
        setResult({ series: [], table: [] });
        reportError("compare", `Compare: ${errorText(e)}`);
      });
    return () => {
      cancelled = true;
    };
  }, [metric, fn, q, labels, range, region, by, chosen.join(","), tick]);

  useEffect(() => () => clearError("compare"), []);

  const toggle = (name: string, on: boolean) => {
    const next = on ? [...new Set([...chosen, name])] : chosen.filter((c) => c !== name);
    navigate(withParams(route, { clusters: next.join(","), region: "" }), true);
  };

  return (
    <>
      <div class="page-head">
        <h1>Compare</h1>
        <p class="muted">One metric across clusters or a region: a line per {by}, worst first in the table.</p>
      </div>
      <div class="compare-controls card">
        <fieldset>
          <legend>Metric</legend>
          <select
            aria-label="Metric"
            value={metric}
            onChange={(e) => {
              const m = COMPARE_METRICS.find((x) => x.metric === (e.target as HTMLSelectElement).value);
              if (m)
                navigate(
                  withParams(route, { metric: m.metric, fn: m.fn, q: m.q !== undefined ? String(m.q) : "", labels: "" }),
                );
            }}
          >
            {COMPARE_METRICS.map((m) => (
              <option key={m.metric} value={m.metric}>
                {m.title}
              </option>
            ))}
            {!preset ? <option value={metric}>{title}</option> : null}
          </select>
          <div class="small muted">
            <code>
              {fn}
              {q !== undefined ? ` q=${q}` : ""}({metric}
              {labels ? `{${labels}}` : ""})
            </code>
          </div>
        </fieldset>
        <fieldset>
          <legend>Range</legend>
          <RangePicker route={route} ranges={RANGES} current={range} />
        </fieldset>
        <fieldset>
          <legend>Region</legend>
          <select
            aria-label="Region"
            value={region}
            onChange={(e) => navigate(withParams(route, { region: (e.target as HTMLSelectElement).value, clusters: "" }))}
          >
            <option value="">(pick clusters instead)</option>
            {regions.map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
            {region && !regions.includes(region) ? <option value={region}>{region}</option> : null}
          </select>
          <label class="inline small">
            <input
              type="checkbox"
              checked={by === "region"}
              onChange={(e) => navigate(withParams(route, { by: (e.target as HTMLInputElement).checked ? "region" : "" }), true)}
            />
            one line per region
          </label>
        </fieldset>
        <fieldset class="grow">
          <legend>Clusters</legend>
          {all.length === 0 ? <p class="muted small">No cluster known yet.</p> : null}
          <div class="checks">
            {all.map((c) => (
              <label key={c} class="check">
                <input type="checkbox" checked={!region && chosen.includes(c)} disabled={!!region} onChange={(e) => toggle(c, (e.target as HTMLInputElement).checked)} />
                {c}
              </label>
            ))}
          </div>
          {all.length > 1 && !region ? (
            <a class="small" href={withParams(route, { clusters: all.join(",") })}>
              all clusters
            </a>
          ) : null}
        </fieldset>
      </div>

      {!scoped ? (
        <p class="card muted">Pick two or more clusters, or a region, to compare them.</p>
      ) : (
        <>
          <Chart metric={metric} title={title} unit={unit} series={result ? result.series : null} error={error} height={300} xRange={result?.xRange} />
          {result && result.table.length ? (
            <div class="table-wrap">
              <table class="compare-table">
                <thead>
                  <tr>
                    <th scope="col">{by === "region" ? "Region" : "Cluster"}</th>
                    <th scope="col">Last</th>
                    <th scope="col">Min</th>
                    <th scope="col">Avg</th>
                    <th scope="col">Max</th>
                  </tr>
                </thead>
                <tbody>
                  {result.table.map((row) => {
                    const label = seriesLabel({ group: row.group, series: 0, points: [] });
                    const at = result.series.findIndex((x) => x.label === label);
                    const color = at < 0 ? "transparent" : PALETTE[at % PALETTE.length];
                    return (
                      <tr key={label} data-testid="compare-row" data-group={label}>
                        <th scope="row">
                          <span class="swatch" style={{ background: color }} aria-hidden="true" />
                          {row.group.cluster ? <a href={href(["cluster", row.group.cluster], { range })}>{label}</a> : label}
                        </th>
                        <td class="num">{byUnit(unit, row.last)}</td>
                        <td class="num">{byUnit(unit, row.min)}</td>
                        <td class="num">{byUnit(unit, row.avg)}</td>
                        <td class="num">{byUnit(unit, row.max)}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
          ) : null}
        </>
      )}
    </>
  );
}
