//! Where members run, on ClickHouse (see [`crate::Storage::record_member`]): a
//! ReplacingMergeTree by (cluster, member) whose newest row (`seen_ms`) is the
//! current description. Reads take the newest row themselves instead of
//! relying on merges.

use super::query::Sql;
use super::ClickHouseStorage;
use crate::{MemberInfo, Result};

/// A row of `member_info`, in column order; read back the same way.
#[derive(clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct MemberRow {
    cluster: String,
    member: String,
    region: String,
    node: String,
    tags: String,
    seen_ms: i64,
}

impl ClickHouseStorage {
    pub(super) async fn insert_member(&self, info: &MemberInfo) -> Result<()> {
        let row = MemberRow {
            cluster: info.cluster.clone(),
            member: info.member.clone(),
            region: info.region.clone(),
            node: info.node.clone(),
            tags: info.tags.clone(),
            seen_ms: info.seen_ms,
        };
        self.insert_alert_rows::<MemberRow>("member_info", &[row])
            .await
    }

    pub(super) async fn read_members(&self, cluster: Option<&str>) -> Result<Vec<MemberInfo>> {
        let mut sql = Sql::default();
        sql.push(
            "SELECT cluster, member, argMax(region, seen_ms), argMax(node, seen_ms), \
             argMax(tags, seen_ms), max(seen_ms) FROM member_info",
        );
        if let Some(cluster) = cluster {
            sql.push(" WHERE cluster = ").str(cluster);
        }
        sql.push(" GROUP BY cluster, member ORDER BY cluster, member");
        let rows: Vec<MemberRow> = self
            .fetch_alert_rows("read where members run", &sql)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| MemberInfo {
                cluster: r.cluster,
                member: r.member,
                region: r.region,
                node: r.node,
                tags: r.tags,
                seen_ms: r.seen_ms,
            })
            .collect())
    }
}
