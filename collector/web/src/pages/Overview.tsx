// The fleet at a glance: a tile per cluster, worst first, filtered by region,
// group or tags (kept in the URL: `#/?region=eu&group=payments&tag=env=prod`).
//
// Test hooks: each tile `data-testid="cluster-tile"` with `data-cluster` and
// `data-health` (ok | warning | critical | unknown); a tile is a link to the
// cluster's page.

import { useMemo } from "preact/hooks";
import { bytes, percent, seconds } from "../format";
import { HEALTH_ORDER, summarize, tagsOf, type Summary } from "../health";
import { href, navigate, withParams, type Route } from "../router";
import { useStore } from "../store";
import type { ClusterState } from "../types";
import { Pill } from "../components/Shell";

interface Row {
  cluster: ClusterState;
  sum: Summary;
  tags: Set<string>;
}

export function Overview({ route }: { route: Route }) {
  const { clusters, alerts } = useStore();
  const region = route.params.get("region") ?? "";
  const group = route.params.get("group") ?? "";
  const tag = route.params.get("tag") ?? "";
  const text = route.params.get("q") ?? "";

  const rows: Row[] = useMemo(
    () =>
      (clusters ?? []).map((c) => ({ cluster: c, sum: summarize(c, alerts), tags: tagsOf(c) })),
    [clusters, alerts],
  );
  const regions = useMemo(() => [...new Set(rows.flatMap((r) => r.sum.regions))].sort(), [rows]);
  const groups = useMemo(
    () =>
      [...new Set(rows.flatMap((r) => [...r.tags].filter((t) => t.startsWith("group=")).map((t) => t.slice(6))))].sort(),
    [rows],
  );

  const wantedTags = tag
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  const shown = rows
    .filter((r) => !region || r.sum.regions.includes(region))
    .filter((r) => !group || r.tags.has(`group=${group}`))
    .filter((r) => wantedTags.every((t) => r.tags.has(t)))
    .filter((r) => !text || r.cluster.name.toLowerCase().includes(text.toLowerCase()))
    .sort(
      (a, b) =>
        HEALTH_ORDER[a.sum.health] - HEALTH_ORDER[b.sum.health] ||
        (b.sum.alerts.critical ?? 0) - (a.sum.alerts.critical ?? 0) ||
        (b.sum.alerts.warning ?? 0) - (a.sum.alerts.warning ?? 0) ||
        a.cluster.name.localeCompare(b.cluster.name),
    );

  const counts: Record<string, number> = { critical: 0, warning: 0, unknown: 0, ok: 0 };
  for (const r of shown) counts[r.sum.health]++;
  const setParam = (k: string, v: string, replace = false) => navigate(withParams(route, { [k]: v }), replace);

  return (
    <>
      <div class="page-head">
        <h1>Fleet</h1>
        <p class="muted" aria-live="polite">
          {clusters === null
            ? "Loading…"
            : `${shown.length} of ${rows.length} cluster${rows.length === 1 ? "" : "s"}: ` +
              (["critical", "warning", "unknown", "ok"] as const)
                .filter((h) => counts[h])
                .map((h) => `${counts[h]} ${h}`)
                .join(", ")}
        </p>
      </div>
      <form class="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label>
          Name
          <input
            type="search"
            value={text}
            placeholder="filter by name"
            onInput={(e) => setParam("q", (e.target as HTMLInputElement).value, true)}
          />
        </label>
        <label>
          Region
          <select value={region} onChange={(e) => setParam("region", (e.target as HTMLSelectElement).value)}>
            <option value="">all regions</option>
            {regions.map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
            {region && !regions.includes(region) ? <option value={region}>{region}</option> : null}
          </select>
        </label>
        <label>
          Group
          <select value={group} onChange={(e) => setParam("group", (e.target as HTMLSelectElement).value)}>
            <option value="">all groups</option>
            {groups.map((g) => (
              <option key={g} value={g}>
                {g}
              </option>
            ))}
            {group && !groups.includes(group) ? <option value={group}>{group}</option> : null}
          </select>
        </label>
        <label>
          Tags
          <input
            type="text"
            value={tag}
            placeholder="env=prod,team=storage"
            onInput={(e) => setParam("tag", (e.target as HTMLInputElement).value, true)}
          />
        </label>
        {region || group || tag || text ? (
          <a class="button secondary" href={href([])}>
            Clear filters
          </a>
        ) : null}
      </form>
      {clusters !== null && rows.length === 0 ? (
        <div class="card empty">
          <p>No cluster yet. Clusters appear here as soon as an agent reports for them, or when they are registered
            (<code>[[clusters]]</code> in the collector's config, or <code>PUT /api/v1/clusters/NAME</code>).</p>
        </div>
      ) : null}
      <ul class="tiles">
        {shown.map((r) => (
          <li key={r.cluster.name}>
            <Tile row={r} />
          </li>
        ))}
      </ul>
    </>
  );
}

function Tile({ row }: { row: Row }) {
  const { cluster: c, sum } = row;
  const dbShare = sum.dbUse;
  return (
    <a
      class={`tile health-${sum.health}`}
      href={href(["cluster", c.name])}
      data-testid="cluster-tile"
      data-cluster={c.name}
      data-health={sum.health}
      aria-label={`${c.name}: ${sum.health}${sum.reasons.length ? `, ${sum.reasons.join(", ")}` : ""}`}
    >
      <div class="tile-head">
        <span class="tile-name">{c.name}</span>
        <Pill kind={sum.health}>{sum.health}</Pill>
      </div>
      {sum.reasons.length ? <p class={`reasons small reasons-${sum.health}`}>{sum.reasons.slice(0, 3).join(" · ")}</p> : null}
      <dl class="figures">
        <div>
          <dt>Members up</dt>
          <dd>
            {sum.up}/{sum.expected}
          </dd>
        </div>
        <div>
          <dt>Leader</dt>
          <dd>{sum.leader || (sum.health === "unknown" ? "–" : <span class="error-text">none</span>)}</dd>
        </div>
        <div>
          <dt>Alerts</dt>
          <dd>
            {sum.alerts.critical ? <Pill kind="critical">{sum.alerts.critical} crit</Pill> : null}
            {sum.alerts.warning ? <Pill kind="warning">{sum.alerts.warning} warn</Pill> : null}
            {sum.alerts.info ? <Pill kind="info">{sum.alerts.info} info</Pill> : null}
            {!sum.alerts.critical && !sum.alerts.warning && !sum.alerts.info ? <span class="muted">none</span> : null}
          </dd>
        </div>
        <div>
          <dt>WAL fsync p99</dt>
          <dd class={sum.worstFsync !== null && sum.worstFsync > 0.01 ? "warn-text" : ""}>{seconds(sum.worstFsync)}</dd>
        </div>
      </dl>
      <div class="db">
        <div class="small">
          DB {bytes(sum.dbSize)}
          {sum.dbQuota ? ` of ${bytes(sum.dbQuota)} quota (${percent(dbShare)})` : ""}
        </div>
        {dbShare !== null ? (
          <div class="bar" aria-hidden="true">
            <span
              class={dbShare >= 0.8 ? "crit" : dbShare >= 0.6 ? "warn" : ""}
              style={{ width: `${Math.min(100, Math.max(1, dbShare * 100))}%` }}
            />
          </div>
        ) : null}
      </div>
      <div class="small muted">
        {sum.regions.join(", ") || "no region"}
        {c.registration?.owner ? ` · ${c.registration.owner}` : ""}
      </div>
    </a>
  );
}
