//! Versioned schema of the ClickHouse backend.
//!
//! ClickHouse has no transactional DDL and no advisory locks, so migrations are made safe
//! to run more than once and from several processes at the same time instead:
//!
//! * every step is idempotent: `CREATE ... IF NOT EXISTS`, `DROP ... IF EXISTS`, a
//!   column added only when missing, and copies into rollups, whose answers do not
//!   change when a row arrives twice (see [`Step`]);
//! * a migration's version is recorded in `schema_migrations` only after all its
//!   statements succeeded, and recording it twice is harmless (a `ReplacingMergeTree`
//!   keyed by version; readers use `DISTINCT`);
//! * a process that finds a version recorded skips it; two processes that both find it
//!   missing both run it, which the first point makes harmless.
//!
//! Rules for new migrations: never edit a released one, add a new version; keep every
//! step idempotent; stay within what 18.16 understands (see the module docs of
//! [`super`]). A materialized view only sees INSERTs made after it exists, so a rollup
//! added to a database that already holds samples must backfill itself with an explicit
//! `INSERT ... SELECT` (`POPULATE` would race with concurrent writes). A migration that
//! needs a newer server can check
//! [`ClickHouseStorage::server_version`](super::ClickHouseStorage::server_version).

/// One version of the schema. `{db}` in a statement stands for the quoted database name.
pub(super) struct Migration {
    /// Recorded in `schema_migrations`; strictly increasing.
    pub(super) version: u32,
    /// For logs and the `schema_migrations` table.
    pub(super) description: &'static str,
    /// Run in order; each must be idempotent.
    pub(super) steps: &'static [Step],
    /// A later version that undoes this one. When that version runs in the same
    /// `migrate`, as on a fresh database, this one is recorded without running its
    /// steps: nothing is created only to be dropped, and no process can create the old
    /// objects again after another one's later migration dropped them.
    pub(super) superseded_by: Option<u32>,
}

/// One idempotent step of a migration.
pub(super) enum Step {
    /// A statement that is a no-op when repeated (`IF NOT EXISTS`, `IF EXISTS`).
    Sql(&'static str),
    /// `ALTER TABLE {db}.<table> ADD COLUMN <column> <definition>`, skipped when the
    /// column exists: 18.16 has no `ADD COLUMN IF NOT EXISTS`.
    AddColumn {
        table: &'static str,
        column: &'static str,
        definition: &'static str,
    },
    /// `statement` once for every partition of `table` that holds rows, with
    /// `{partition}` replaced by the partition id (all digits). One statement per
    /// partition keeps each one's duration bounded, however much the table holds (and
    /// the log shows progress). A table that does not exist (any more) has nothing to
    /// do: a process that finds it gone knows another one finished the work and dropped
    /// it.
    EachPartition {
        table: &'static str,
        statement: &'static str,
    },
}

/// Run before anything else, on every `migrate`: the database and the table that records
/// which migrations ran.
pub(super) const BOOTSTRAP: &[&str] = &[
    "CREATE DATABASE IF NOT EXISTS {db}",
    "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
        version UInt32,
        description String,
        applied_ms Int64
    ) ENGINE = ReplacingMergeTree()
    ORDER BY version",
];

/// Every migration, oldest first.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        superseded_by: None,
        description: "raw tables: samples, series, events, batch_marks",
        steps: &[
            // The sort key is the natural key of a sample: a resent row is identical to
            // the stored one and collapses into it when parts merge. Until then readers
            // deduplicate with GROUP BY on the key.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.samples (
                date Date,
                cluster String,
                member String,
                name String,
                labels String,
                ts_ms Int64,
                value Float64
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMMDD(date)
            ORDER BY (cluster, name, member, labels, ts_ms)",
            ),
            // The version column keeps the latest sighting when duplicates merge.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.series (
                cluster String,
                member String,
                name String,
                labels String,
                metric_type String,
                seen_ms Int64
            ) ENGINE = ReplacingMergeTree(seen_ms)
            ORDER BY (cluster, name, member, labels)",
            ),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.events (
                date Date,
                cluster String,
                member String,
                ts_ms Int64,
                kind String,
                message String
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMMDD(date)
            ORDER BY (cluster, ts_ms, member, kind)",
            ),
            // `date` is the day of stored_ms; daily partitions let retention drop marks
            // after a week, long after any agent could still resend those batches.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.batch_marks (
                date Date,
                agent_id String,
                sequence UInt64,
                samples UInt64,
                stored_ms Int64
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMMDD(date)
            ORDER BY (agent_id, sequence)",
            ),
        ],
    },
    Migration {
        version: 2,
        superseded_by: Some(5),
        description: "1-minute rollup samples_1m fed by samples_1m_mv",
        steps: &[
            // Only aggregates that a duplicate row cannot change: min, max, the first and
            // last value by time and the latest timestamp. No sum, count or avg: the view
            // sees every INSERT, a resent batch included, and would count it twice.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.samples_1m (
                date Date,
                cluster String,
                member String,
                name String,
                labels String,
                bucket_ms Int64,
                min_value AggregateFunction(min, Float64),
                max_value AggregateFunction(max, Float64),
                first_value AggregateFunction(argMin, Float64, Int64),
                last_value AggregateFunction(argMax, Float64, Int64),
                max_ts AggregateFunction(max, Int64)
            ) ENGINE = AggregatingMergeTree()
            PARTITION BY toYYYYMMDD(date)
            ORDER BY (cluster, name, member, labels, bucket_ms)",
            ),
            Step::Sql(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.samples_1m_mv
            TO {db}.samples_1m
            AS SELECT
                date,
                cluster,
                member,
                name,
                labels,
                intDiv(ts_ms, 60000) * 60000 AS bucket_ms,
                minState(value) AS min_value,
                maxState(value) AS max_value,
                argMinState(value, ts_ms) AS first_value,
                argMaxState(value, ts_ms) AS last_value,
                maxState(ts_ms) AS max_ts
            FROM {db}.samples
            GROUP BY date, cluster, member, name, labels, bucket_ms",
            ),
        ],
    },
    Migration {
        version: 3,
        superseded_by: Some(5),
        description: "1-hour rollup samples_1h fed by samples_1h_mv",
        steps: &[
            // Same aggregates as samples_1m; monthly partitions because a year of hourly
            // buckets would otherwise mean 365 partitions.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.samples_1h (
                date Date,
                cluster String,
                member String,
                name String,
                labels String,
                bucket_ms Int64,
                min_value AggregateFunction(min, Float64),
                max_value AggregateFunction(max, Float64),
                first_value AggregateFunction(argMin, Float64, Int64),
                last_value AggregateFunction(argMax, Float64, Int64),
                max_ts AggregateFunction(max, Int64)
            ) ENGINE = AggregatingMergeTree()
            PARTITION BY toYYYYMM(date)
            ORDER BY (cluster, name, member, labels, bucket_ms)",
            ),
            Step::Sql(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.samples_1h_mv
            TO {db}.samples_1h
            AS SELECT
                date,
                cluster,
                member,
                name,
                labels,
                intDiv(ts_ms, 3600000) * 3600000 AS bucket_ms,
                minState(value) AS min_value,
                maxState(value) AS max_value,
                argMinState(value, ts_ms) AS first_value,
                argMaxState(value, ts_ms) AS last_value,
                maxState(ts_ms) AS max_ts
            FROM {db}.samples
            GROUP BY date, cluster, member, name, labels, bucket_ms",
            ),
        ],
    },
    Migration {
        version: 4,
        superseded_by: None,
        description: "alert state and history: alert_transitions, alert_deliveries, silences, \
                      alert_acks",
        steps: &[
            // Sorted by the natural key. `date` is the UTC day of received_ms (or of the
            // retention run that carried a still-firing transition forward; see
            // alert_store.rs), so monthly partitions expire like the other tables. The first
            // copy of a key (earliest received_ms) is the one that counts: `first_wins` is
            // the merge version, and ReplacingMergeTree keeps the highest version.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.alert_transitions (
                date Date,
                fingerprint String,
                transition UInt64,
                state String,
                cluster String,
                rule String,
                severity String,
                labels_json String,
                annotations_json String,
                value Float64,
                active_since_ms Int64,
                received_ms Int64,
                first_wins Int64 MATERIALIZED -received_ms
            ) ENGINE = ReplacingMergeTree(first_wins)
            PARTITION BY toYYYYMM(date)
            ORDER BY (fingerprint, transition)",
            ),
            // A key names one attempt, so copies are identical and need no version.
            // Fingerprint first: the per-alert history reads a range of the index.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.alert_deliveries (
                date Date,
                receiver String,
                fingerprint String,
                transition UInt64,
                state String,
                group_key String,
                reason String,
                attempt_ms Int64,
                attempt UInt32,
                outcome String,
                detail String
            ) ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMM(date)
            ORDER BY (fingerprint, transition, receiver, state, attempt_ms, attempt)",
            ),
            // Not partitioned: the versions of one silence can have any ends_ms, and
            // dropping the partition that holds the latest version would bring an older
            // one back to life. Retention deletes whole silences with a mutation instead
            // (few rows).
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.silences (
                id String,
                matchers_json String,
                starts_ms Int64,
                ends_ms Int64,
                created_by String,
                comment String,
                updated_ms Int64
            ) ENGINE = ReplacingMergeTree(updated_ms)
            ORDER BY id",
            ),
            // The earliest acknowledgement of a transition counts, as for transitions.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.alert_acks (
                date Date,
                fingerprint String,
                transition UInt64,
                acked_by String,
                comment String,
                ts_ms Int64,
                first_wins Int64 MATERIALIZED -ts_ms
            ) ENGINE = ReplacingMergeTree(first_wins)
            PARTITION BY toYYYYMM(date)
            ORDER BY (fingerprint, transition)",
            ),
        ],
    },
    Migration {
        version: 5,
        superseded_by: None,
        description: "series ids; rollups rollup_1m and rollup_1h: the last sample per \
                      series id and bucket, copied from samples_1m and samples_1h, which are \
                      dropped",
        steps: &[
            // ClickHouse computes the id itself, so writers and readers cannot disagree
            // on it, and rows stored before this migration get it on read. MATERIALIZED
            // rather than DEFAULT: an INSERT without a column list keeps working, and no
            // writer can store an id that does not match the strings.
            Step::AddColumn {
                table: "samples",
                column: "series_id",
                definition: "UInt64 MATERIALIZED cityHash64(cluster, member, name, labels)",
            },
            Step::AddColumn {
                table: "series",
                column: "series_id",
                definition: "UInt64 MATERIALIZED cityHash64(cluster, member, name, labels)",
            },
            // The rollups of migrations 2 and 3 grouped every INSERT by four strings per
            // series into five aggregate states, which cost ClickHouse about four times
            // what storing the samples did, and only the last value was ever read.
            // These hold the last sample of every bucket and no strings: the views copy
            // each sample with its bucket, and the version column makes merges keep the
            // latest sample of a (series, bucket). Until parts merge, readers take
            // argMax(value, ts_ms), as on raw samples. A resent row is the same row and
            // changes nothing. Measured on 18.16 (docs/benchmarks.md): both views cost
            // 0.65 us of ClickHouse CPU per sample, against about 4.5 us for the
            // string-keyed views they replace (2.4 us for five states keyed by id).
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.rollup_1m (
                date Date,
                series_id UInt64,
                bucket_ms Int64,
                ts_ms Int64,
                value Float64
            ) ENGINE = ReplacingMergeTree(ts_ms)
            PARTITION BY toYYYYMMDD(date)
            ORDER BY (series_id, bucket_ms)",
            ),
            Step::Sql(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollup_1m_mv
            TO {db}.rollup_1m
            AS SELECT
                date,
                series_id,
                intDiv(ts_ms, 60000) * 60000 AS bucket_ms,
                ts_ms,
                value
            FROM {db}.samples",
            ),
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.rollup_1h (
                date Date,
                series_id UInt64,
                bucket_ms Int64,
                ts_ms Int64,
                value Float64
            ) ENGINE = ReplacingMergeTree(ts_ms)
            PARTITION BY toYYYYMM(date)
            ORDER BY (series_id, bucket_ms)",
            ),
            Step::Sql(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rollup_1h_mv
            TO {db}.rollup_1h
            AS SELECT
                date,
                series_id,
                intDiv(ts_ms, 3600000) * 3600000 AS bucket_ms,
                ts_ms,
                value
            FROM {db}.samples",
            ),
            // From here on every INSERT reaches at least one of the old and the new
            // views. Stop the old ones, then copy the last sample of every bucket they
            // gathered, row by row: a GROUP BY would hold every (series, bucket) of a
            // partition in memory, while unmerged rows of one bucket are what the new
            // rollups absorb anyway. A row that reaches both, or a copy made twice (two processes, or
            // a rerun after a crash), is harmless: a bucket's last sample stays the same. Only an
            // INSERT still writing into an old rollup while its partition is being
            // copied could miss the copy, and that INSERT started before the new views
            // existed, a window of one INSERT's duration.
            Step::Sql("DROP TABLE IF EXISTS {db}.samples_1m_mv"),
            Step::Sql("DROP TABLE IF EXISTS {db}.samples_1h_mv"),
            Step::EachPartition {
                table: "samples_1m",
                statement: "INSERT INTO {db}.rollup_1m
                    SELECT date, cityHash64(cluster, member, name, labels), bucket_ms,
                        finalizeAggregation(max_ts), finalizeAggregation(last_value)
                    FROM {db}.samples_1m
                    WHERE toYYYYMMDD(date) = {partition}",
            },
            Step::EachPartition {
                table: "samples_1h",
                statement: "INSERT INTO {db}.rollup_1h
                    SELECT date, cityHash64(cluster, member, name, labels), bucket_ms,
                        finalizeAggregation(max_ts), finalizeAggregation(last_value)
                    FROM {db}.samples_1h
                    WHERE toYYYYMM(date) = {partition}",
            },
            Step::Sql("DROP TABLE IF EXISTS {db}.samples_1m"),
            Step::Sql("DROP TABLE IF EXISTS {db}.samples_1h"),
        ],
    },
    Migration {
        version: 6,
        superseded_by: None,
        description: "audit log: audit_log",
        steps: &[
            // Appended and read by time; monthly partitions expire with
            // storage.retention.audit.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.audit_log (
                date Date,
                ts_ms Int64,
                actor String,
                role String,
                via String,
                method String,
                path String,
                remote String,
                status UInt16,
                detail String
            ) ENGINE = MergeTree()
            PARTITION BY toYYYYMM(date)
            ORDER BY ts_ms",
            ),
        ],
    },
    Migration {
        version: 7,
        superseded_by: None,
        description: "API tokens: api_tokens",
        steps: &[
            // A token is written when made and again when revoked; the version
            // with the highest updated_ms is the current one (reads pick it with
            // argMax, merges keep it). Few rows, never expired by retention.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.api_tokens (
                id String,
                name String,
                role String,
                sha256 String,
                created_ms Int64,
                created_by String,
                expires_ms Int64,
                revoked_ms Int64,
                revoked_by String,
                updated_ms Int64
            ) ENGINE = ReplacingMergeTree(updated_ms)
            ORDER BY id",
            ),
        ],
    },
    Migration {
        version: 8,
        superseded_by: None,
        description: "cluster registrations: cluster_registrations",
        steps: &[
            // Every change writes the whole registration; a deletion is a version
            // with deleted = 1. The newest version (updated_ms) is the current
            // one. Few rows, never expired by retention.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.cluster_registrations (
                name String,
                region String,
                owner String,
                tags_json String,
                members_json String,
                updated_ms Int64,
                updated_by String,
                deleted UInt8
            ) ENGINE = ReplacingMergeTree(updated_ms)
            ORDER BY name",
            ),
        ],
    },
    Migration {
        version: 9,
        superseded_by: None,
        description: "where members run: member_info",
        steps: &[
            // One row per member and sighting; the newest (seen_ms) is current.
            // Grafana's panels and fleet queries join samples with it to group
            // and filter by region, node and tags. Few rows, never expired.
            Step::Sql(
                "CREATE TABLE IF NOT EXISTS {db}.member_info (
                cluster String,
                member String,
                region String,
                node String,
                tags String,
                seen_ms Int64
            ) ENGINE = ReplacingMergeTree(seen_ms)
            ORDER BY (cluster, member)",
            ),
        ],
    },
];

/// `statement` with `{db}` replaced by the backquoted database name. The name is
/// restricted to `[A-Za-z0-9_]` by config validation, so quoting cannot be escaped.
pub(super) fn render(statement: &str, database: &str) -> String {
    statement.replace("{db}", &format!("`{database}`"))
}

/// The ClickHouse error codes that mean "it already exists". `IF NOT EXISTS` is not atomic
/// on every version: two processes creating the same object at the same moment can both
/// pass the check, and the loser gets one of these. The object exists either way.
pub(super) const ALREADY_EXISTS_CODES: &[u32] = &[
    57, // TABLE_ALREADY_EXISTS
    82, // DATABASE_ALREADY_EXISTS
];

/// UNKNOWN_TABLE: what an [`Step::EachPartition`] statement gets when another process
/// dropped its table meanwhile, after finishing the same work.
pub(super) const UNKNOWN_TABLE_CODE: u32 = 60;
