//! Applying the versioned schema of [`super::schema`]: which versions ran, and how each
//! kind of [`Step`] is made idempotent.

use std::collections::BTreeSet;
use std::time::Duration;

use super::schema::{self, Migration, Step};
use super::{now_ms, server_code, ClickHouseStorage, PartitionRow};
use crate::{Result, StorageError};

/// How long one statement of an [`Step::EachPartition`] step may take: it copies a whole
/// partition, which on a large installation is far more than a query's usual work.
const PARTITION_STEP_TIMEOUT: Duration = Duration::from_secs(3600);

/// A column of `system.columns`.
#[derive(clickhouse::Row, serde::Deserialize)]
struct ColumnRow {
    name: String,
}

/// Whether the migration that undoes `migration` has run (is in `applied`) or runs in
/// this call (which applies the missing ones up to `last_version`): then `migration`
/// is only recorded.
pub(super) fn superseded(
    migration: &Migration,
    last_version: u32,
    applied: &BTreeSet<u32>,
) -> bool {
    migration
        .superseded_by
        .is_some_and(|later| later <= last_version || applied.contains(&later))
}

impl ClickHouseStorage {
    /// Connects, creates the database and applies every migration up to and including
    /// `last_version` that has not run yet. [`crate::Storage::migrate`] applies all of
    /// them; upgrade tests stop at an older version, write, and migrate the rest.
    #[doc(hidden)]
    pub async fn migrate_through(&self, last_version: u32) -> Result<()> {
        let version: String = self
            .timed(
                "SELECT version()",
                self.config.query_timeout,
                self.server.query("SELECT version()").fetch_one(),
            )
            .await?;
        tracing::info!(
            server_version = %version,
            url = %self.config.url,
            database = %self.config.database,
            "connected to ClickHouse"
        );
        *self
            .server_version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(version);

        for statement in schema::BOOTSTRAP {
            self.ddl(statement).await?;
        }
        let applied: BTreeSet<u32> = self
            .timed(
                "read schema_migrations",
                self.config.query_timeout,
                self.client
                    .query("SELECT DISTINCT version FROM schema_migrations")
                    .fetch_all::<u32>(),
            )
            .await?
            .into_iter()
            .collect();
        for migration in schema::MIGRATIONS {
            if migration.version > last_version || applied.contains(&migration.version) {
                continue;
            }
            self.apply(migration, superseded(migration, last_version, &applied))
                .await?;
        }
        Ok(())
    }

    /// Runs every step of `migration`, unless a later migration of this same run
    /// undoes it, then records its version.
    async fn apply(&self, migration: &Migration, superseded: bool) -> Result<()> {
        tracing::info!(
            version = migration.version,
            description = migration.description,
            superseded,
            "applying ClickHouse schema migration"
        );
        let steps = if superseded { &[][..] } else { migration.steps };
        for step in steps {
            match *step {
                Step::Sql(statement) => self.ddl(statement).await?,
                Step::AddColumn {
                    table,
                    column,
                    definition,
                } => self.add_column(table, column, definition).await?,
                Step::EachPartition { table, statement } => {
                    self.each_partition(table, statement).await?;
                }
            }
        }
        self.timed(
            "record schema migration",
            self.config.query_timeout,
            self.client
                .query(
                    "INSERT INTO schema_migrations (version, description, applied_ms) \
                     VALUES (?, ?, ?)",
                )
                .bind(migration.version)
                .bind(migration.description)
                .bind(now_ms())
                .execute(),
        )
        .await?;
        tracing::info!(
            version = migration.version,
            "applied ClickHouse schema migration"
        );
        Ok(())
    }

    /// Runs a DDL statement, treating "already exists" as success (see
    /// [`schema::ALREADY_EXISTS_CODES`]).
    async fn ddl(&self, statement: &str) -> Result<()> {
        self.ddl_within(
            statement,
            self.config.query_timeout,
            schema::ALREADY_EXISTS_CODES,
        )
        .await
    }

    /// Runs a migration statement, giving up after `limit`; a server error with one of
    /// `harmless` codes is success, any other refusal a [`StorageError::Migration`].
    async fn ddl_within(&self, statement: &str, limit: Duration, harmless: &[u32]) -> Result<()> {
        let sql = schema::render(statement, &self.config.database);
        // The server stops too when the client gives up, so that a retry does not
        // run beside a copy still in progress.
        let query = self
            .server
            .query(&sql)
            .with_setting("max_execution_time", limit.as_secs().max(1).to_string());
        let result = self.timed("schema migration", limit, query.execute()).await;
        match result {
            Err(StorageError::Rejected(message))
                if server_code(&message).is_some_and(|code| harmless.contains(&code)) =>
            {
                Ok(())
            }
            // Unreachable stays retryable; a refused statement is a migration failure.
            Err(StorageError::Rejected(message)) => Err(StorageError::Migration(format!(
                "{message}\nstatement: {sql}"
            ))),
            other => other,
        }
    }

    /// Whether `table` of this database has a column `column`.
    async fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        let columns = self
            .timed(
                "read system.columns",
                self.config.query_timeout,
                self.server
                    .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
                    .bind(self.config.database.as_str())
                    .bind(table)
                    .fetch_all::<ColumnRow>(),
            )
            .await?;
        Ok(columns.iter().any(|c| c.name == column))
    }

    /// [`Step::AddColumn`].
    async fn add_column(&self, table: &str, column: &str, definition: &str) -> Result<()> {
        if self.has_column(table, column).await? {
            return Ok(());
        }
        let statement = format!("ALTER TABLE {{db}}.{table} ADD COLUMN {column} {definition}");
        match self
            .ddl_within(&statement, self.config.query_timeout, &[])
            .await
        {
            // Another process may have added it between the check and the ALTER; the
            // error (ILLEGAL_COLUMN, 44) also covers real mistakes, so look again.
            Err(StorageError::Migration(_)) if self.has_column(table, column).await? => Ok(()),
            other => other,
        }
    }

    /// [`Step::EachPartition`].
    async fn each_partition(&self, table: &str, statement: &str) -> Result<()> {
        let partitions: Vec<PartitionRow> = self
            .active_partitions()
            .await?
            .into_iter()
            .filter(|p| p.table == table)
            .collect();
        let total = partitions.len();
        for (done, part) in partitions.iter().enumerate() {
            // Partition ids of this schema's tables are all digits (toYYYYMMDD and
            // toYYYYMM), so one is a valid literal; anything else is not ours to touch.
            if part.partition.is_empty() || !part.partition.bytes().all(|b| b.is_ascii_digit()) {
                tracing::warn!(
                    table,
                    partition = %part.partition,
                    "skipping a partition this schema does not create"
                );
                continue;
            }
            let sql = statement.replace("{partition}", &part.partition);
            self.ddl_within(&sql, PARTITION_STEP_TIMEOUT, &[schema::UNKNOWN_TABLE_CODE])
                .await?;
            tracing::info!(
                table,
                partition = %part.partition,
                rows = part.rows,
                progress = %format!("{}/{total}", done + 1),
                "migrated partition"
            );
        }
        Ok(())
    }
}
