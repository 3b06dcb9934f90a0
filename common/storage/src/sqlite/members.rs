//! Where members run, on SQLite (see [`crate::Storage::record_member`]): one
//! row per (cluster, member), replaced by a newer description only.

use rusqlite::params;

use super::{rejected, SqliteStorage};
use crate::{MemberInfo, Result};

impl SqliteStorage {
    pub(super) async fn upsert_member(&self, info: &MemberInfo) -> Result<()> {
        let m = info.clone();
        self.with_writer(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO member_info (cluster, member, region, node, tags, seen_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (cluster, member) DO UPDATE SET
                         region = excluded.region, node = excluded.node,
                         tags = excluded.tags, seen_ms = excluded.seen_ms
                     WHERE excluded.seen_ms >= member_info.seen_ms",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        m.cluster, m.member, m.region, m.node, m.tags, m.seen_ms
                    ])
                })
                .map_err(rejected)?;
            Ok(())
        })
        .await
    }

    pub(super) async fn read_members(&self, cluster: Option<&str>) -> Result<Vec<MemberInfo>> {
        let cluster = cluster.map(str::to_owned);
        self.with_reader(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT cluster, member, region, node, tags, seen_ms FROM member_info
                     WHERE ?1 IS NULL OR cluster = ?1 ORDER BY cluster, member",
                )
                .map_err(rejected)?;
            let rows = st
                .query_map(params![cluster], |r| {
                    Ok(MemberInfo {
                        cluster: r.get(0)?,
                        member: r.get(1)?,
                        region: r.get(2)?,
                        node: r.get(3)?,
                        tags: r.get(4)?,
                        seen_ms: r.get(5)?,
                    })
                })
                .map_err(rejected)?;
            rows.collect::<std::result::Result<Vec<_>, _>>()
                .map_err(rejected)
        })
        .await
    }
}
