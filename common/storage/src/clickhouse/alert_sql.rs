//! SQL of the alert tables (see `alert_store.rs` for the schema and why reads look like this).
//!
//! As in `query.rs`, values are never formatted into the text: each builder returns `?`
//! placeholders and their arguments, bound on the client. The transition reads nest
//! three levels: copies of one key collapse to the earliest (`d_*` columns), then each
//! fingerprint to its highest transition (`l_*`), then the caller's filters apply.
//! Aliases never repeat a column name: older servers would resolve such an alias inside
//! the aggregate functions that read the column.

use super::query::{day_filter, Sql};
use crate::AlertHistoryQuery;

/// Columns of a transition besides its key and `received_ms`, in table order.
pub(super) const TRANSITION_VALUES: [&str; 8] = [
    "state",
    "cluster",
    "rule",
    "severity",
    "labels_json",
    "annotations_json",
    "value",
    "active_since_ms",
];

/// Transitions deduplicated on (fingerprint, transition), the earliest copy winning:
/// columns `fingerprint, transition, d_<value>..., d_received_ms`, and `d_newest_date`,
/// the newest `date` of any copy (for retention).
fn dedup_transitions(sql: &mut Sql, fingerprint: Option<&str>) {
    sql.push("SELECT fingerprint, transition");
    for column in TRANSITION_VALUES {
        sql.push(&format!(", argMin({column}, received_ms) AS d_{column}"));
    }
    sql.push(
        ", min(received_ms) AS d_received_ms, max(date) AS d_newest_date \
         FROM alert_transitions",
    );
    if let Some(fingerprint) = fingerprint {
        sql.push(" WHERE fingerprint = ").str(fingerprint);
    }
    sql.push(" GROUP BY fingerprint, transition");
}

/// The latest deduplicated transition of every fingerprint: columns `fingerprint,
/// l_transition, l_<value>..., l_received_ms, l_newest_date`.
fn latest_transitions_subquery(sql: &mut Sql) {
    sql.push("SELECT fingerprint, max(transition) AS l_transition");
    for column in TRANSITION_VALUES
        .iter()
        .chain(&["received_ms", "newest_date"])
    {
        sql.push(&format!(", argMax(d_{column}, transition) AS l_{column}"));
    }
    sql.push(" FROM (");
    dedup_transitions(sql, None);
    sql.push(") GROUP BY fingerprint");
}

/// `fingerprint, {transition}` and the other transition columns with `prefix`, in the
/// order of the row struct that reads them.
fn transition_columns(prefix: &str, transition: &str) -> String {
    let mut out = format!("fingerprint, {transition}");
    for column in TRANSITION_VALUES.iter().chain(&["received_ms"]) {
        out.push_str(&format!(", {prefix}{column}"));
    }
    out
}

/// [`crate::AlertStore::latest_transitions`]: the latest transition of each fingerprint,
/// if received at or after `since_ms` or still firing.
pub(super) fn latest_sql(since_ms: i64) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT {} FROM (",
        transition_columns("l_", "l_transition")
    ));
    latest_transitions_subquery(&mut sql);
    sql.push(") WHERE l_received_ms >= ")
        .int(since_ms)
        .push(" OR l_state = 'firing' ORDER BY fingerprint");
    sql
}

/// [`crate::AlertStore::alert_history`]: only the fingerprint (a key column) filters
/// before deduplication; time and cluster filter the copy that counts.
pub(super) fn history_sql(q: &AlertHistoryQuery) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT {} FROM (",
        transition_columns("d_", "transition")
    ));
    dedup_transitions(&mut sql, q.fingerprint.as_deref());
    sql.push(") WHERE d_received_ms >= ")
        .int(q.from_ms)
        .push(" AND d_received_ms <= ")
        .int(q.to_ms);
    if let Some(cluster) = &q.cluster {
        sql.push(" AND d_cluster = ").str(cluster);
    }
    sql.push(" ORDER BY d_received_ms DESC, transition DESC, fingerprint LIMIT ")
        .int(limit_of(q));
    sql
}

/// [`crate::AlertStore::deliveries`]. Every column of a delivery is part of the key or
/// identical between copies, so `any` picks the value, and all filters are on key
/// columns, so they apply before grouping.
pub(super) fn deliveries_sql(q: &AlertHistoryQuery) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "SELECT receiver, fingerprint, transition, state, any(group_key), any(reason), \
         attempt_ms, attempt, any(outcome), any(detail) FROM alert_deliveries \
         WHERE attempt_ms >= ",
    )
    .int(q.from_ms)
    .push(" AND attempt_ms <= ")
    .int(q.to_ms);
    day_filter(&mut sql, q.from_ms.max(0), q.to_ms.max(0));
    if let Some(fingerprint) = &q.fingerprint {
        sql.push(" AND fingerprint = ").str(fingerprint);
    }
    sql.push(
        " GROUP BY fingerprint, transition, receiver, state, attempt_ms, attempt \
         ORDER BY attempt_ms DESC, attempt DESC, receiver, fingerprint, transition DESC, \
         state LIMIT ",
    )
    .int(limit_of(q));
    sql
}

/// The current version of every silence, columns `id, s_matchers, ..., s_updated`.
const SILENCES_CURRENT: &str = "SELECT id, argMax(matchers_json, updated_ms) AS s_matchers, \
     argMax(starts_ms, updated_ms) AS s_starts, argMax(ends_ms, updated_ms) AS s_ends, \
     argMax(created_by, updated_ms) AS s_created_by, argMax(comment, updated_ms) AS s_comment, \
     max(updated_ms) AS s_updated FROM silences GROUP BY id";

/// [`crate::AlertStore::silences`]: current versions ending at or after `since_ms`.
pub(super) fn silences_sql(since_ms: i64) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT id, s_matchers, s_starts, s_ends, s_created_by, s_comment, s_updated \
         FROM ({SILENCES_CURRENT}) WHERE s_ends >= "
    ))
    .int(since_ms)
    .push(" ORDER BY id");
    sql
}

/// [`crate::AlertStore::acks`]: the earliest acknowledgement of each transition, if made
/// at or after `since_ms`.
pub(super) fn acks_sql(since_ms: i64) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "SELECT fingerprint, transition, a_by, a_comment, a_ts FROM (\
         SELECT fingerprint, transition, argMin(acked_by, ts_ms) AS a_by, \
         argMin(comment, ts_ms) AS a_comment, min(ts_ms) AS a_ts \
         FROM alert_acks GROUP BY fingerprint, transition) WHERE a_ts >= ",
    )
    .int(since_ms)
    .push(" ORDER BY fingerprint, transition");
    sql
}

/// Copies the latest firing transitions none of whose copies is dated on or after
/// `cutoff` into the partition of `today`.
pub(super) fn carry_transitions_sql(today: &str, cutoff: &str) -> Sql {
    let mut columns = String::from("date, fingerprint, transition");
    for column in TRANSITION_VALUES.iter().chain(&["received_ms"]) {
        columns.push_str(", ");
        columns.push_str(column);
    }
    let mut sql = Sql::default();
    sql.push(&format!(
        "INSERT INTO alert_transitions ({columns}) SELECT toDate("
    ))
    .str(today)
    .push(&format!(
        "), {} FROM (",
        transition_columns("l_", "l_transition")
    ));
    latest_transitions_subquery(&mut sql);
    sql.push(") WHERE l_state = 'firing' AND l_newest_date < toDate(")
        .str(cutoff)
        .push(")");
    sql
}

/// Copies the acknowledgements of the latest firing transitions none of whose copies is
/// dated on or after `cutoff` into the partition of `today`.
pub(super) fn carry_acks_sql(today: &str, cutoff: &str) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "INSERT INTO alert_acks (date, fingerprint, transition, acked_by, comment, ts_ms) \
         SELECT toDate(",
    )
    .str(today)
    .push(
        "), fingerprint, transition, argMin(acked_by, ts_ms), argMin(comment, ts_ms), \
         min(ts_ms) FROM alert_acks WHERE (fingerprint, transition) IN (\
         SELECT fingerprint, l_transition FROM (",
    );
    latest_transitions_subquery(&mut sql);
    sql.push(
        ") WHERE l_state = 'firing') GROUP BY fingerprint, transition \
         HAVING max(date) < toDate(",
    )
    .str(cutoff)
    .push(")");
    sql
}

/// Rows `(id, current updated_ms)` of the silences whose current version ended before
/// `before_ms`.
pub(super) fn expired_silences_sql(before_ms: i64) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT id, s_updated FROM ({SILENCES_CURRENT}) WHERE s_ends < "
    ))
    .int(before_ms)
    .push(" ORDER BY id");
    sql
}

/// Deletes every version of each silence up to the version that was read as expired, so
/// a silence changed since (a newer version) survives.
pub(super) fn delete_silences_sql<'a>(expired: impl IntoIterator<Item = (&'a str, i64)>) -> Sql {
    let mut sql = Sql::default();
    sql.push("ALTER TABLE silences DELETE WHERE ");
    for (i, (id, updated_ms)) in expired.into_iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(id = ")
            .str(id)
            .push(" AND updated_ms <= ")
            .int(updated_ms)
            .push(")");
    }
    sql
}

fn limit_of(q: &AlertHistoryQuery) -> i64 {
    i64::try_from(q.limit).unwrap_or(i64::MAX)
}
