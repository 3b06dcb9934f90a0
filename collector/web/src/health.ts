// A cluster's health and headline figures, from its live state and the
// alerts firing for it, as the overview's tiles and the cluster page show
// them.
//
// - critical: quorum lost, no leader, a member unreachable, an etcd alarm,
//   or a critical alert firing for the cluster;
// - warning: a warning alert firing, a member not healthy (agent
//   disconnected or stale), a registered member whose agent does not report;
// - ok: every member healthy and nothing of the above;
// - unknown: no member reports (yet).

import type { Alert, ClusterState, MemberState } from "./types";

export type Health = "ok" | "warning" | "critical" | "unknown";

export const HEALTH_ORDER: Record<Health, number> = { critical: 0, warning: 1, unknown: 2, ok: 3 };

export interface Summary {
  health: Health;
  /** Why it is not ok, for people. */
  reasons: string[];
  /** The leader's member name ("" when none is known). */
  leader: string;
  /** Voting members reachable now. */
  up: number;
  /** Members expected: the registered ones and every voting member seen. */
  expected: number;
  /** Firing alerts by severity. */
  alerts: Record<string, number>;
  /** Largest db size over its quota among the members (0..1), if a quota is known. */
  dbUse: number | null;
  /** Largest db size, bytes. */
  dbSize: number;
  /** That member's quota, bytes (0 if unknown). */
  dbQuota: number;
  /** Worst WAL fsync p99 among the members, seconds. */
  worstFsync: number | null;
  regions: string[];
}

/** Members still in the cluster (not `member remove`d). */
export function present(c: ClusterState): MemberState[] {
  return Object.values(c.members ?? {}).filter((m) => !m.removed);
}

/** The alerts firing for cluster `name`. */
export function alertsOf(alerts: Alert[] | null, name: string): Alert[] {
  return (alerts ?? []).filter((a) => a.state === "firing" && a.labels?.cluster === name);
}

export function summarize(c: ClusterState, alerts: Alert[] | null): Summary {
  const members = present(c);
  const voters = members.filter((m) => !m.is_learner);
  const missing = (c.members_missing ?? []).filter((n) => !(n in (c.members ?? {})));
  const expectedNames = new Set<string>([...voters.map((m) => m.name), ...(c.registration?.members ?? [])]);
  const expected = expectedNames.size;
  const up = voters.filter((m) => m.reachable === true).length;
  const leaderMember = members.find((m) => m.is_leader) ?? members.find((m) => m.id && m.id === c.leader_id);
  const leader = leaderMember?.name ?? "";

  const firing = alertsOf(alerts, c.name);
  const bySeverity: Record<string, number> = {};
  for (const a of firing) {
    const s = a.labels?.severity || "unknown";
    bySeverity[s] = (bySeverity[s] ?? 0) + 1;
  }

  const critical: string[] = [];
  const warning: string[] = [];
  const unreachable = members.filter((m) => m.reachable === false);
  for (const m of unreachable) critical.push(`${m.name} unreachable`);
  // Only members known to be down count against quorum: one not probed yet
  // (just started) is not down.
  const quorum = Math.floor(expected / 2) + 1;
  const down = voters.filter((m) => m.reachable === false).length;
  if (expected > 0 && expected - down < quorum) critical.push(`quorum lost (${up} of ${expected} up)`);
  if (up > 0 && !leader && !c.leader_id) critical.push("no leader");
  const alarms = new Set(members.flatMap((m) => (m.alarms ?? []).map((a) => a.alarm)));
  for (const a of alarms) critical.push(`alarm ${a}`);
  if (bySeverity.critical) critical.push(`${bySeverity.critical} critical alert${bySeverity.critical > 1 ? "s" : ""}`);

  if (bySeverity.warning) warning.push(`${bySeverity.warning} warning alert${bySeverity.warning > 1 ? "s" : ""}`);
  for (const m of members) {
    if (m.reachable === false) continue;
    if (!m.agent_connected) warning.push(`${m.name}: agent disconnected`);
    else if (m.stale) warning.push(`${m.name}: agent silent`);
    else if (m.reachable !== null && !m.healthy) warning.push(`${m.name} not healthy`);
  }
  for (const n of missing) warning.push(`${n}: no agent reports`);

  let health: Health;
  if (critical.length) health = "critical";
  else if (warning.length) health = "warning";
  else if (members.length === 0 || members.every((m) => m.reachable === null)) health = "unknown";
  else health = "ok";

  let dbUse: number | null = null;
  let dbSize = 0;
  let dbQuota = 0;
  for (const m of members) {
    if (m.db_size_bytes > dbSize) {
      dbSize = m.db_size_bytes;
      dbQuota = m.quota_bytes ?? 0;
    }
    if (m.quota_bytes && m.quota_bytes > 0) {
      const u = m.db_size_bytes / m.quota_bytes;
      if (dbUse === null || u > dbUse) dbUse = u;
    }
  }
  let worstFsync: number | null = null;
  for (const m of members) {
    const v = m.derived?.wal_fsync_p99;
    if (typeof v === "number" && isFinite(v) && (worstFsync === null || v > worstFsync)) worstFsync = v;
  }
  const regions = [...new Set([...members.map((m) => m.region), c.registration?.region ?? ""].filter(Boolean))].sort();

  return {
    health,
    reasons: [...critical, ...warning],
    leader,
    up,
    expected,
    alerts: bySeverity,
    dbUse,
    dbSize,
    dbQuota,
    worstFsync,
    regions,
  };
}

/** Tags of a cluster: its registration's and its members' (`key=value`). */
export function tagsOf(c: ClusterState): Set<string> {
  const out = new Set<string>();
  for (const [k, v] of Object.entries(c.registration?.tags ?? {})) out.add(`${k}=${v}`);
  for (const m of present(c)) for (const [k, v] of Object.entries(m.tags ?? {})) out.add(`${k}=${v}`);
  return out;
}
