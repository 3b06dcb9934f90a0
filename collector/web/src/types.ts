// The shapes of the API's answers, as docs/api.md and the collector's structs
// (collector/src/state.rs, collector/src/api/*.rs) define them. Only the
// fields the page reads are spelled out; the API may send more.

export type Role = "viewer" | "operator" | "admin";

export interface WhoAmI {
  name: string;
  role: Role;
  via: string;
}

export interface ActiveAlarm {
  alarm: string;
  member_id: string;
}

export interface HostFigures {
  fs_available_bytes: number;
  fs_total_bytes: number;
  open_fds: number;
  max_fds: number;
  memory_available_bytes: number;
  memory_total_bytes: number;
  cpu_utilization: number;
  disk_utilization: number;
  net_rx_bytes_per_second?: number | null;
  net_tx_bytes_per_second?: number | null;
}

export interface Derived {
  wal_fsync_p99?: number | null;
  wal_fsync_p50?: number | null;
  backend_commit_p99?: number | null;
  peer_rtt_p99?: number | null;
  grpc_unary_p99?: number | null;
  grpc_error_ratio?: number | null;
  request_rate?: number | null;
  proposals_committed_rate?: number | null;
  proposals_pending?: number | null;
  db_growth_bytes_per_second?: number | null;
}

export interface MemberState {
  name: string;
  id: string;
  node: string;
  region: string;
  tags?: Record<string, string>;
  agent_connected: boolean;
  last_seen_ms: number;
  clock_skew_ms?: number;
  reachable: boolean | null;
  is_leader: boolean;
  is_learner?: boolean;
  leader_id: string;
  raft_term: number;
  raft_index: number;
  status_latency_seconds?: number | null;
  revision: number;
  db_size_bytes: number;
  db_size_in_use_bytes: number;
  version: string;
  alarms: ActiveAlarm[];
  last_error: string;
  healthy: boolean;
  stale?: boolean;
  removed?: boolean;
  quota_bytes?: number;
  host?: HostFigures | null;
  fsync_p99_seconds?: number | null;
  peers_unreachable?: string[];
  derived?: Derived;
}

export interface Registration {
  name: string;
  region: string;
  owner: string;
  tags: Record<string, string>;
  members: string[];
}

export interface ClusterState {
  name: string;
  leader_id: string;
  raft_term: number;
  members: Record<string, MemberState>;
  registration?: Registration | null;
  reporting?: boolean;
  members_missing?: string[];
}

export interface ClusterEvent {
  ts_ms: number;
  member: string;
  kind: string;
  message: string;
}

export interface EventsResponse {
  cluster: string;
  from_ms: number;
  to_ms: number;
  events: ClusterEvent[];
}

export interface Ack {
  by: string;
  comment: string;
  at_ms: number;
}

export interface Alert {
  fingerprint: string;
  state: string;
  transition: number;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  value: number | null;
  active_since_ms: number;
  received_ms: number;
  silenced_by: string[];
  acknowledged: Ack | null;
}

export interface Transition {
  fingerprint: string;
  transition: number;
  state: string;
  cluster: string;
  rule: string;
  severity: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  value: number | null;
  active_since_ms: number;
  received_ms: number;
  silenced_by: string[];
}

export interface Delivery {
  receiver: string;
  fingerprint: string;
  transition: number;
  state: string;
  reason: string;
  attempt_ms: number;
  attempt: number;
  outcome: string;
  detail: string;
}

export interface MaintenanceWindow {
  id: string;
  cluster: string;
  member: string;
  reason: string;
  created_by: string;
  starts_ms: number;
  ends_ms: number;
  state: string;
  matchers: string[];
}

export interface AlertHistory {
  from_ms: number;
  to_ms: number;
  transitions: Transition[];
  deliveries: Delivery[];
  maintenance: MaintenanceWindow[];
}

export interface Silence {
  id: string;
  matchers: string[];
  starts_ms: number;
  ends_ms: number;
  created_by: string;
  comment: string;
  updated_ms: number;
  state: string;
}

export type Point = [number, number];

export interface Series {
  group: Record<string, string>;
  series: number;
  points: Point[];
}

export interface SummaryRow {
  group: Record<string, string>;
  last: number;
  min: number;
  avg: number;
  max: number;
}

export interface QueryResponse {
  metric: string;
  fn: string;
  q?: number;
  window_ms: number;
  agg: string;
  by: string;
  from_ms: number;
  to_ms: number;
  step_ms: number;
  series: Series[];
  table?: SummaryRow[];
}
