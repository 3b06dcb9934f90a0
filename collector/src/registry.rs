//! Clusters registered ahead of their agents: from the config file
//! (`[[clusters]]`, fixed while the collector runs) and through the API
//! (`PUT /api/v1/clusters/{c}`, stored, see `etcdmon_storage::registry`).
//!
//! The live state holds both. Stored registrations are read at start and
//! again every [`SYNC_INTERVAL`], so that every collector sharing a store
//! learns of another's changes; a registration made through this collector's
//! API is in its state at once.

use crate::state::{LiveState, RegisteredCluster};
use etcdmon_storage::{RegistrationRow, RegistryStore};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often stored registrations are read again.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// The stored form of `reg`, written at `at_ms` by `by`.
pub fn to_row(reg: &RegisteredCluster, at_ms: i64, by: &str) -> RegistrationRow {
    RegistrationRow {
        name: reg.name.clone(),
        region: reg.region.clone(),
        owner: reg.owner.clone(),
        tags_json: serde_json::to_string(&reg.tags).unwrap_or_else(|_| "{}".into()),
        members_json: serde_json::to_string(&reg.members).unwrap_or_else(|_| "[]".into()),
        updated_ms: at_ms,
        updated_by: by.to_owned(),
    }
}

/// The registration a stored row stands for; a row whose JSON does not parse
/// (written by hand) keeps its name and region and loses the rest, loudly.
pub fn from_row(row: &RegistrationRow) -> RegisteredCluster {
    let parsed = |what: &str, json: &str| {
        tracing::warn!(cluster = %row.name, field = what, json, "stored registration does not parse; ignored");
    };
    RegisteredCluster {
        name: row.name.clone(),
        region: row.region.clone(),
        owner: row.owner.clone(),
        tags: serde_json::from_str(&row.tags_json).unwrap_or_else(|_| {
            parsed("tags", &row.tags_json);
            Default::default()
        }),
        members: serde_json::from_str(&row.members_json).unwrap_or_else(|_| {
            parsed("members", &row.members_json);
            Default::default()
        }),
    }
}

/// Brings the state's API registrations in line with the store: registers the
/// stored ones and drops those no longer stored. Config registrations
/// (`fixed`) are left alone.
pub async fn sync(
    store: &dyn RegistryStore,
    state: &LiveState,
    fixed: &BTreeSet<String>,
) -> etcdmon_storage::Result<()> {
    let stored: Vec<RegisteredCluster> = store
        .registrations()
        .await?
        .iter()
        .filter(|r| !fixed.contains(&r.name))
        .map(from_row)
        .collect();
    let keep: BTreeSet<&str> = stored.iter().map(|r| r.name.as_str()).collect();
    for name in state.registered_names() {
        if !fixed.contains(&name) && !keep.contains(name.as_str()) {
            state.unregister(&name);
        }
    }
    state.register(&stored);
    Ok(())
}

/// Syncs every [`SYNC_INTERVAL`] until `shutdown`; a store that does not
/// answer is retried at the next interval (the state keeps what it had).
pub async fn run(
    store: Arc<dyn RegistryStore>,
    state: LiveState,
    fixed: BTreeSet<String>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sync(store.as_ref(), &state, &fixed).await {
            tracing::warn!(error = %e, "reading the cluster registrations; kept the last ones");
        }
    }
}
