//! The logical schema shared by both backends.

use std::sync::Arc;

/// One sample: a value of a series at a time. The natural key is
/// (cluster, member, name, labels, ts_ms); a row stored twice is the same
/// row, and every query treats it as one.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// Cluster name. Shared: every row of a report has the same one, and
    /// a write holds hundreds of thousands of rows.
    pub cluster: Arc<str>,
    /// Member name (or its id in hex when the name is unknown); shared
    /// like `cluster`.
    pub member: Arc<str>,
    /// Metric name, e.g. `etcd_mvcc_db_total_size_in_bytes` or
    /// `etcdmon_fsync_probe_p99_seconds`.
    pub name: String,
    /// Canonical label set: sorted by name, `k="v"` joined with `,`, values
    /// escaped as in the Prometheus text format; empty for none.
    pub labels: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The value.
    pub value: f64,
}

/// Metadata of a series, written when the collector first sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRow {
    /// Cluster name.
    pub cluster: String,
    /// Member name.
    pub member: String,
    /// Metric name.
    pub name: String,
    /// Canonical label set.
    pub labels: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub metric_type: String,
    /// When it was seen, milliseconds since the Unix epoch.
    pub seen_ms: i64,
}

/// Where a member runs, as its agent describes it (`Hello.identity`): what
/// fleet queries group and filter samples by. One row per (cluster, member);
/// the latest sighting wins.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct MemberInfo {
    /// Cluster name.
    pub cluster: String,
    /// Member name, as in the samples' `member`.
    pub member: String,
    /// Region or zone; empty when the agent has none.
    pub region: String,
    /// Host or Kubernetes node.
    pub node: String,
    /// The agent's tags, in the canonical label form (`k="v",...`) of
    /// [`canonical_labels`].
    pub tags: String,
    /// When it was last described so, ms since the Unix epoch.
    pub seen_ms: i64,
}

/// Something that happened to a cluster or member.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Cluster name.
    pub cluster: String,
    /// Member name; empty for cluster-wide events.
    pub member: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `member_up`, `member_down`, `leader_changed`, `alarm_raised`,
    /// `alarm_cleared`, `member_added`, `member_removed`.
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
}

/// Proof that an agent's batch is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchMark {
    /// The agent's stable id (from its Hello).
    pub agent_id: String,
    /// The batch's sequence number.
    pub sequence: u64,
    /// Samples the batch held (for completeness checks).
    pub samples: u64,
    /// When it was stored, milliseconds since the Unix epoch.
    pub stored_ms: i64,
}

/// What one `write` stores.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    /// Samples.
    pub samples: Vec<SampleRow>,
    /// New series: every series must have been written here at least once, with or
    /// before its first samples. Stepped queries that a backend answers from rollups
    /// (ClickHouse) find series through these rows; a series written without one has
    /// raw samples but no rollup answers.
    pub series: Vec<SeriesRow>,
    /// Events.
    pub events: Vec<EventRow>,
    /// Marks of the batches whose rows are in this set.
    pub marks: Vec<BatchMark>,
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
            && self.series.is_empty()
            && self.events.is_empty()
            && self.marks.is_empty()
    }

    /// Appends another set.
    pub fn extend(&mut self, other: WriteSet) {
        self.samples.extend(other.samples);
        self.series.extend(other.series);
        self.events.extend(other.events);
        self.marks.extend(other.marks);
    }
}

/// A range query of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct PointQuery {
    /// Cluster name.
    pub cluster: String,
    /// Metric name.
    pub metric: String,
    /// Only this member, if given.
    pub member: Option<String>,
    /// Only this exact canonical label set, if given.
    pub labels: Option<String>,
    /// Inclusive start, ms since the epoch.
    pub from_ms: i64,
    /// Inclusive end, ms since the epoch.
    pub to_ms: i64,
    /// Bucket width in ms; 0 returns raw points. Steps of a minute or more
    /// may be answered from rollups.
    pub step_ms: i64,
}

/// Points of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    /// Member name.
    pub member: String,
    /// Canonical label set.
    pub labels: String,
    /// (ms since the epoch, value), ascending by time.
    pub points: Vec<(i64, f64)>,
}

/// Number of distinct stored samples of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleCount {
    /// Member name.
    pub member: String,
    /// Distinct samples.
    pub samples: u64,
}

/// What retention removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Rows or partitions removed, per table, for logs and metrics.
    pub removed: Vec<(String, u64)>,
}

/// Builds the canonical label string from (name, value) pairs: sorted by
/// name, values escaped like the Prometheus text format.
pub fn canonical_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut v: Vec<(&str, &str)> = labels.into_iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    for (i, (k, val)) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in val.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_labels_are_sorted_and_escaped() {
        assert_eq!(canonical_labels([]), "");
        assert_eq!(
            canonical_labels([("le", "+Inf"), ("a", "x\"y\\z\n")]),
            "a=\"x\\\"y\\\\z\\n\",le=\"+Inf\""
        );
    }
}
