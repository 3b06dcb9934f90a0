//! The Grafana dashboards' panel SQL (`grafana/dashboards`), expanded as
//! Grafana and the ClickHouse plugin would for the last 24 h with every
//! variable on "All" (the heaviest setting), by the test kit's expansion
//! (`etcdmon_testkit::grafana`, which `collector/tests/grafana.rs` checks
//! against the plugin).

use etcdmon_testkit::grafana::{self, Selected, TimeRange};
use etcdmon_testkit::ClickHouseServer;
use std::path::Path;

/// Grafana's interval for 24 h on a panel about 1,400 px wide: one minute.
const INTERVAL_MS: i64 = 60_000;

/// (dashboard: panel [query], SQL) of every panel query, its variables set to
/// every value their own queries list on `server`.
pub fn queries(
    server: &ClickHouseServer,
    dir: &Path,
    to_ms: i64,
) -> anyhow::Result<Vec<(String, String)>> {
    let range = TimeRange {
        from_s: (to_ms - 86_400_000) / 1000,
        to_s: to_ms / 1000,
        interval_ms: INTERVAL_MS,
    };
    let mut out = Vec::new();
    for d in grafana::dashboards(dir) {
        let vars = grafana::variables(&d.json);
        let settings = grafana::resolve(
            &vars,
            range,
            |_, sql, _| -> anyhow::Result<Vec<String>> {
                Ok(server
                    .query_in("etcdmon", sql)?
                    .lines()
                    .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
                    .collect())
            },
            |_, values| Selected::All(values.to_vec()),
        )?;
        let multi = grafana::multi_valued(&vars);
        let title = d
            .json
            .get("title")
            .and_then(|t| t.as_str())
            .unwrap_or(&d.file)
            .to_owned();
        for t in grafana::targets(&d.json) {
            let sql = grafana::expand(t.sql(), &settings, &multi, range);
            out.push((format!("{title}: {}", t.title()), sql));
        }
    }
    Ok(out)
}
