//! The figures the rules judge come out the same from etcd 3.4 and 3.5: a real
//! member of each, written to, scraped twice by the real agent probes, applied to
//! the collector's live state.

use std::time::Duration;

use etcdmon_agent::runner::Probes;
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::AgentConfig;
use etcdmon_collector::state::{LiveState, MemberState};
use etcdmon_proto::v1::{report::Body, Identity};
use etcdmon_testkit::{EtcdCluster, EtcdVersion};

/// Writes `n` keys through the gRPC API.
async fn write(url: &str, n: usize) {
    let mut client = etcd_client::Client::connect([url], None)
        .await
        .expect("connect");
    for i in 0..n {
        client
            .put(format!("/versions/{i}"), vec![b'x'; 512], None)
            .await
            .expect("put");
    }
}

/// One member of `version`, as the collector sees it after two scrapes with
/// writes before and between them.
async fn member_seen(version: EtcdVersion) -> MemberState {
    let etcd = EtcdCluster::builder()
        .members(1)
        .version(version)
        .start()
        .expect("etcd");
    let m = etcd.member(0);
    let mut cfg = AgentConfig::default();
    cfg.identity.cluster = "versions".into();
    cfg.identity.member_name = m.name.clone();
    cfg.etcd.endpoint = m.client_url.clone();
    cfg.etcd.metrics_url = m.metrics_url.clone();
    cfg.fsync.enabled = false;
    cfg.host.enabled = false;
    let mut probes = Probes::new(&cfg, AgentMetrics::new()).expect("probes");
    let state = LiveState::new(Duration::from_secs(60));
    let id = Identity {
        cluster: "versions".into(),
        member_name: m.name.clone(),
        node: "test".into(),
        ..Default::default()
    };
    write(&m.client_url, 50).await;
    for round in 0..2 {
        if round == 1 {
            // Figures over an interval need an increase between two scrapes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            write(&m.client_url, 200).await;
        }
        for report in probes.collect_once().await {
            if let Some(Body::Status(s)) = &report.body {
                assert!(s.reachable, "{version:?}: {:?}", s.failures);
                assert!(
                    s.version.starts_with(version.as_str()),
                    "{version:?} reports {}",
                    s.version
                );
            }
            state.apply(&id, &report);
        }
    }
    let clusters = state.snapshot();
    clusters[0].members[&m.name].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judged_figures_come_out_of_both_versions() {
    for version in EtcdVersion::ALL {
        let m = member_seen(version).await;
        let d = &m.derived;
        let figures = [
            ("wal_fsync_p99", d.wal_fsync_p99),
            ("backend_commit_p99", d.backend_commit_p99),
            ("proposals_failed_rate", d.proposals_failed_rate),
            ("proposals_pending", d.proposals_pending),
        ];
        for (name, value) in figures {
            let v = value.unwrap_or_else(|| panic!("{version:?}: no {name}: {d:?}"));
            assert!(v.is_finite() && v >= 0.0, "{version:?}: {name} = {v}");
        }
        // 250 fsynced writes take time on any disk, even tmpfs: a p99 of 0 would
        // mean the histogram was not read.
        assert!(d.wal_fsync_p99 > Some(0.0), "{version:?}: {d:?}");
        assert!(d.backend_commit_p99 > Some(0.0), "{version:?}: {d:?}");
        assert_eq!(d.proposals_failed_rate, Some(0.0), "{version:?}");
        assert!(
            m.db_size_in_use_bytes > 0 && m.db_size_in_use_bytes <= m.db_size_bytes,
            "{version:?}: in use {} of {}",
            m.db_size_in_use_bytes,
            m.db_size_bytes
        );
        assert!(
            m.quota_bytes > 0.0,
            "{version:?}: no quota from the metrics"
        );
        assert!(m.is_leader && m.healthy, "{version:?}: {m:?}");
    }
}
