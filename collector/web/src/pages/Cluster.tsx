// One cluster: its health, members, current alerts, leader history and
// event timeline, and charts of the key metrics over a chosen range, one
// line per member (or one member: `member=M`).
// URL: `#/cluster/NAME?range=1h&member=M`.
//
// Test hooks: member rows `data-testid="member-row"` with `data-member` and
// `data-reachable`; charts `data-testid="chart"` (see Chart.tsx); alert rows
// (see Alerts.tsx).

import { useEffect, useMemo, useState } from "preact/hooks";
import { api, ApiError, errorText, qs } from "../api";
import { AlertTable } from "../components/Alerts";
import { QueryChart, type QuerySpec } from "../components/Chart";
import { Pill, RangePicker } from "../components/Shell";
import { ago, bytes, dateTime, percent, seconds } from "../format";
import { alertsOf, present, summarize } from "../health";
import { onFeed } from "../live";
import { href, navigate, RANGES, rangeMs, rangeParam, withParams, type Route } from "../router";
import { clearError, reportError, useStore } from "../store";
import type { ClusterEvent, EventsResponse, MemberState } from "../types";

/** The charts of the cluster page. */
export const CLUSTER_CHARTS: QuerySpec[] = [
  { metric: "etcd_disk_wal_fsync_duration_seconds", fn: "quantile", q: 0.99, title: "WAL fsync p99", unit: "seconds" },
  { metric: "etcd_disk_backend_commit_duration_seconds", fn: "quantile", q: 0.99, title: "Backend commit p99", unit: "seconds" },
  { metric: "grpc_server_started_total", fn: "rate", title: "Requests per second", unit: "rate" },
  { metric: "etcd_server_proposals_committed_total", fn: "rate", title: "Proposals committed per second", unit: "rate" },
  { metric: "etcd_mvcc_db_total_size_in_bytes", fn: "value", title: "DB size", unit: "bytes" },
  { metric: "etcd_network_peer_round_trip_time_seconds", fn: "quantile", q: 0.99, title: "Peer RTT p99", unit: "seconds" },
  { metric: "etcdmon_fsync_probe_seconds", fn: "value", labels: 'quantile="0.99"', title: "Fsync probe p99 (agent)", unit: "seconds" },
  { metric: "etcdmon_status_latency_seconds", fn: "value", title: "Status call latency", unit: "seconds" },
  { metric: "etcdmon_host_cpu_utilization", fn: "value", title: "Host CPU", unit: "ratio" },
];

export function Cluster({ route, name }: { route: Route; name: string }) {
  const s = useStore();
  const range = rangeParam(route, "1h");
  const member = route.params.get("member") ?? "";
  const fromMs = rangeMs(range);
  const cluster = s.clusters?.find((c) => c.name === name) ?? null;
  const [refresh, setRefresh] = useState(0);

  // Charts follow the clock: a new fetch every 30 s (every 2 min for day ranges).
  useEffect(() => {
    const every = fromMs > 6 * 3_600_000 ? 120_000 : 30_000;
    const t = window.setInterval(() => setRefresh((n) => n + 1), every);
    return () => window.clearInterval(t);
  }, [fromMs]);

  // Latencies over the last 5 minutes, from storage: steadier than the live
  // state's figures, which cover only the interval between two scrapes.
  const [latency, setLatency] = useState<Record<string, Record<string, number>>>({});
  useEffect(() => {
    let cancelled = false;
    api<{ members: Record<string, Record<string, number>> }>(`/api/v1/clusters/${encodeURIComponent(name)}/latency?window=5m`)
      .then((r) => {
        if (cancelled) return;
        setLatency(r.members ?? {});
        clearError(`latency:${name}`);
      })
      .catch((e) => {
        // A cluster that never reported has no latencies: not an error worth a banner.
        if (!cancelled && !(e instanceof ApiError && e.status === 404)) reportError(`latency:${name}`, `Latencies of ${name}: ${errorText(e)}`);
      });
    return () => {
      cancelled = true;
    };
  }, [name, refresh]);
  useEffect(() => () => clearError(`latency:${name}`), [name]);

  const sum = useMemo(() => (cluster ? summarize(cluster, s.alerts) : null), [cluster, s.alerts]);
  const alerts = alertsOf(s.alerts, name);

  useEffect(() => {
    document.title = `${name} · etcd-monitor`;
    return () => {
      document.title = "etcd-monitor";
    };
  }, [name]);

  if (s.clusters !== null && !cluster) {
    return (
      <div class="card empty">
        <h1>{name}</h1>
        <p>
          No cluster named <code>{name}</code> is known: it is not registered and no agent reports for it.{" "}
          <a href={href([])}>Back to the fleet</a>.
        </p>
      </div>
    );
  }

  const members = cluster ? present(cluster).sort((a, b) => a.name.localeCompare(b.name)) : [];
  const memberNames = [...new Set([...members.map((m) => m.name), ...(cluster?.members_missing ?? [])])].sort();

  return (
    <>
      <div class="page-head">
        <p class="crumbs">
          <a href={href([])}>Fleet</a> /
        </p>
        <h1>
          {name} {sum ? <Pill kind={sum.health}>{sum.health}</Pill> : null}
        </h1>
        {sum ? (
          <p class="muted">
            Leader <strong>{sum.leader || "none"}</strong> (term {cluster?.raft_term ?? "–"}) · {sum.up}/{sum.expected} members up
            {sum.regions.length ? ` · ${sum.regions.join(", ")}` : ""}
            {cluster?.registration?.owner ? ` · owner ${cluster.registration.owner}` : ""}
            {cluster && cluster.reporting === false ? " · not reporting" : ""}
          </p>
        ) : (
          <p class="muted">Loading…</p>
        )}
        {sum?.reasons.length ? <p class={`reasons reasons-${sum.health}`}>{sum.reasons.join(" · ")}</p> : null}
      </div>

      <section aria-labelledby="members-title">
        <h2 id="members-title">Members</h2>
        <div class="table-wrap">
          <MembersTable
            members={members}
            missing={cluster?.members_missing ?? []}
            route={route}
            selected={member}
            latency={latency}
          />
        </div>
      </section>

      <section aria-labelledby="alerts-title">
        <h2 id="alerts-title">
          Alerts firing <span class="muted">({alerts.length})</span>
        </h2>
        <AlertTable alerts={alerts} showCluster={false} empty="No alert is firing for this cluster." />
      </section>

      <section aria-labelledby="charts-title">
        <div class="section-head">
          <h2 id="charts-title">Metrics</h2>
          <RangePicker route={route} ranges={RANGES} current={range} />
          <label class="inline">
            Members
            <select
              value={member}
              onChange={(e) => navigate(withParams(route, { member: (e.target as HTMLSelectElement).value }))}
            >
              <option value="">all (overlay)</option>
              {memberNames.map((m) => (
                <option key={m} value={m}>
                  {m}
                </option>
              ))}
            </select>
          </label>
        </div>
        <div class="charts">
          {CLUSTER_CHARTS.map((spec) => (
            <QueryChart key={spec.metric} spec={spec} cluster={name} member={member || undefined} fromMs={fromMs} refresh={refresh} />
          ))}
        </div>
      </section>

      <Timeline cluster={name} range={range} fromMs={fromMs} leaderId={cluster?.leader_id ?? ""} members={members} />
    </>
  );
}

function MembersTable({
  members,
  missing,
  route,
  selected,
  latency,
}: {
  members: MemberState[];
  missing: string[];
  route: Route;
  selected: string;
  latency: Record<string, Record<string, number>>;
}) {
  const absent = missing.filter((n) => !members.some((m) => m.name === n));
  if (!members.length && !absent.length) return <p class="muted">No member has reported yet.</p>;
  return (
    <table class="members">
      <thead>
        <tr>
          <th scope="col">Member</th>
          <th scope="col">Role</th>
          <th scope="col">Reachable</th>
          <th scope="col">Version</th>
          <th scope="col" title="Raft index / KV revision">Raft index / rev</th>
          <th scope="col">DB size / in use</th>
          <th scope="col" title="WAL fsync p99 over the last 5 minutes">WAL fsync p99</th>
          <th scope="col" title="Peer round-trip p99 over the last 5 minutes">Peer RTT p99</th>
          <th scope="col" title="p99 of the agent's fsync probe on the data-dir filesystem">Fsync probe</th>
          <th scope="col">Host CPU</th>
          <th scope="col">Memory used</th>
          <th scope="col">Disk used</th>
          <th scope="col">Last report</th>
        </tr>
      </thead>
      <tbody>
        {members.map((m) => {
          const reachable = m.reachable === true;
          const host = m.host;
          const memUsed = host && host.memory_total_bytes ? 1 - host.memory_available_bytes / host.memory_total_bytes : null;
          const fsUsed = host && host.fs_total_bytes ? 1 - host.fs_available_bytes / host.fs_total_bytes : null;
          const role = m.is_leader ? "leader" : m.is_learner ? "learner" : "follower";
          const lat = latency[m.name] ?? {};
          return (
            <tr
              key={m.name}
              data-testid="member-row"
              data-member={m.name}
              data-reachable={String(reachable)}
              class={m.reachable === false ? "row-bad" : !m.healthy ? "row-warn" : ""}
              aria-current={selected === m.name ? "true" : undefined}
            >
              <th scope="row">
                <a href={withParams(route, { member: selected === m.name ? "" : m.name })} title="Show only this member in the charts">
                  {m.name}
                </a>
                <div class="small muted">{m.node || m.id}</div>
              </th>
              <td>{m.reachable === null ? <span class="muted">–</span> : role}</td>
              <td>
                {m.reachable === null ? (
                  <Pill kind="unknown">not probed</Pill>
                ) : reachable ? (
                  <Pill kind="ok">yes</Pill>
                ) : (
                  <Pill kind="critical">no</Pill>
                )}
                {!m.agent_connected ? <div class="small warn-text">agent disconnected</div> : m.stale ? <div class="small warn-text">agent silent</div> : null}
                {m.last_error && m.reachable === false ? <div class="small error-text">{m.last_error}</div> : null}
                {m.alarms?.length ? <div class="small error-text">{m.alarms.map((a) => a.alarm).join(", ")}</div> : null}
              </td>
              <td>{m.version || "–"}</td>
              <td class="num">
                {m.raft_index || "–"} / {m.revision || "–"}
              </td>
              <td class="num">
                {bytes(m.db_size_bytes)} / {bytes(m.db_size_in_use_bytes)}
                {m.quota_bytes ? <div class="small muted">{percent(m.db_size_bytes / m.quota_bytes)} of quota</div> : null}
              </td>
              <td class="num">{seconds(lat.wal_fsync_p99_seconds ?? m.derived?.wal_fsync_p99)}</td>
              <td class="num">{seconds(lat.peer_rtt_p99_seconds ?? m.derived?.peer_rtt_p99)}</td>
              <td class="num">{seconds(lat.fsync_probe_p99_seconds ?? m.fsync_p99_seconds)}</td>
              <td class="num">{host ? percent(host.cpu_utilization) : "–"}</td>
              <td class="num">{percent(memUsed)}</td>
              <td class="num">{percent(fsUsed)}</td>
              <td title={dateTime(m.last_seen_ms)}>{ago(m.last_seen_ms)}</td>
            </tr>
          );
        })}
        {absent.map((n) => (
          <tr key={n} data-testid="member-row" data-member={n} data-reachable="false" class="row-warn">
            <th scope="row">{n}</th>
            <td colSpan={12} class="warn-text">
              registered, but no agent reports for it
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

const KIND_CLASS: Record<string, string> = {
  member_down: "critical",
  agent_disconnected: "warning",
  member_up: "ok",
  leader_changed: "info",
  alarm_raised: "critical",
  alarm_cleared: "ok",
  alert_firing: "warning",
  alert_resolved: "ok",
  member_added: "info",
  member_removed: "info",
  member_promoted: "info",
};

function Timeline({
  cluster,
  range,
  fromMs,
  leaderId,
  members,
}: {
  cluster: string;
  range: string;
  fromMs: number;
  leaderId: string;
  members: MemberState[];
}) {
  const [events, setEvents] = useState<ClusterEvent[] | null>(null);
  const [tick, setTick] = useState(0);
  // The timeline reaches back a day at least, whatever the charts show.
  const spanMs = Math.max(fromMs, 86_400_000);
  const key = `events:${cluster}`;

  useEffect(() => {
    let debounce: number | undefined;
    const off = onFeed((item) => {
      const d = item.data as { cluster?: string; labels?: Record<string, string> } | null;
      const c = d && (d.cluster ?? d.labels?.cluster);
      if (item.kind === "lagged" || c === cluster) {
        window.clearTimeout(debounce);
        // Alert transitions reach the timeline through the alerter's store, a moment later.
        debounce = window.setTimeout(() => setTick((n) => n + 1), item.kind === "alert" ? 1500 : 250);
      }
    });
    const t = window.setInterval(() => setTick((n) => n + 1), 30_000);
    return () => {
      off();
      window.clearInterval(t);
      window.clearTimeout(debounce);
    };
  }, [cluster]);

  useEffect(() => {
    let cancelled = false;
    api<EventsResponse>(`/api/v1/clusters/${encodeURIComponent(cluster)}/events${qs({ from: `now-${Math.round(spanMs / 1000)}s`, limit: 500 })}`)
      .then((r) => {
        if (cancelled) return;
        setEvents(r.events ?? []);
        clearError(key);
      })
      .catch((e) => {
        if (!cancelled) reportError(key, `Events of ${cluster}: ${errorText(e)}`);
      });
    return () => {
      cancelled = true;
    };
  }, [cluster, spanMs, tick]);

  useEffect(() => () => clearError(key), [key]);

  const byId = new Map(members.filter((m) => m.id).map((m) => [m.id, m.name]));
  const leaders = (events ?? []).filter((e) => e.kind === "leader_changed");
  const named = (msg: string) => msg.replace(/\b[0-9a-f]{16}\b/g, (id) => (byId.has(id) ? `${byId.get(id)} (${id})` : id));

  return (
    <section aria-labelledby="timeline-title" class="two-col">
      <div>
        <h2 id="leader-title">Leader history</h2>
        <p class="small muted">
          Now: {byId.get(leaderId) ?? (leaderId || "none")}
          {` · changes in the last ${fromMs >= 86_400_000 ? range : "24h"}`}
        </p>
        {leaders.length ? (
          <ol class="timeline">
            {leaders.map((e, i) => (
              <li key={`${e.ts_ms}-${i}`}>
                <time dateTime={new Date(e.ts_ms).toISOString()} title={dateTime(e.ts_ms)}>
                  {dateTime(e.ts_ms)}
                </time>{" "}
                {named(e.message)}
              </li>
            ))}
          </ol>
        ) : (
          <p class="muted">{events === null ? "Loading…" : "No leader change in this range."}</p>
        )}
      </div>
      <div>
        <h2 id="timeline-title">Event timeline</h2>
        {events === null ? (
          <p class="muted">Loading…</p>
        ) : events.length === 0 ? (
          <p class="muted">Nothing happened in this range.</p>
        ) : (
          <ol class="timeline" data-testid="timeline">
            {events.map((e, i) => (
              <li key={`${e.ts_ms}-${e.kind}-${i}`} data-kind={e.kind}>
                <time dateTime={new Date(e.ts_ms).toISOString()}>{dateTime(e.ts_ms)}</time>{" "}
                <Pill kind={KIND_CLASS[e.kind] ?? "info"}>{e.kind.replace(/_/g, " ")}</Pill>{" "}
                {e.member ? <strong>{e.member}</strong> : null} <span class="small">{named(e.message)}</span>
              </li>
            ))}
          </ol>
        )}
      </div>
    </section>
  );
}
