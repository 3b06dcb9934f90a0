//! The live feed: every cluster event (member down or up, leader changed,
//! alarm raised or cleared, membership, agent disconnected) and every alert
//! transition, as it happens, for `GET /api/v1/stream` (Server-Sent Events).
//!
//! A broadcast channel of bounded size: a subscriber that falls behind by more
//! than [`CAPACITY`] items is told how many it missed (`lagged`) and goes on;
//! producers never wait. Nothing is serialized while nobody listens.

use etcdmon_storage::EventRow;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Items a subscriber may fall behind by before it misses some.
pub const CAPACITY: usize = 1024;

/// One item of the feed: its kind (`event` or `alert`) and its JSON.
#[derive(Debug, Clone)]
pub struct FeedItem {
    /// `event` (a cluster event) or `alert` (an alert transition).
    pub kind: &'static str,
    /// The item as JSON.
    pub data: serde_json::Value,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<FeedItem>,
    /// Cancelled when the collector stops: every open stream ends, so that the
    /// HTTP server's graceful shutdown does not wait for them forever.
    closed: CancellationToken,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            closed: CancellationToken::new(),
        }
    }
}

/// A cluster event as the feed shows it.
#[derive(Serialize)]
struct EventJson<'a> {
    cluster: &'a str,
    member: &'a str,
    ts_ms: i64,
    kind: &'a str,
    message: &'a str,
}

/// An alert transition as the feed shows it.
#[derive(Serialize)]
pub struct AlertJson<'a> {
    /// Rule name.
    pub rule: &'a str,
    /// `firing` or `resolved`.
    pub state: &'a str,
    /// `critical`, `warning` or `info`.
    pub severity: &'a str,
    /// The alert's labels (cluster, member, ...).
    pub labels: &'a std::collections::BTreeMap<String, String>,
    /// One line for people.
    pub summary: &'a str,
    /// Since when the emitted state holds, ms since the epoch.
    pub since_ms: i64,
}

impl Feed {
    /// A new subscriber, which sees what is sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.tx.subscribe()
    }

    /// Ends every stream (the collector is stopping).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Resolves once [`close`](Self::close) was called.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Sends cluster events.
    pub fn events(&self, events: &[EventRow]) {
        for e in events {
            self.send("event", || {
                serde_json::to_value(EventJson {
                    cluster: &e.cluster,
                    member: &e.member,
                    ts_ms: e.ts_ms,
                    kind: &e.kind,
                    message: &e.message,
                })
            });
        }
    }

    /// Sends an alert transition.
    pub fn alert(&self, a: AlertJson<'_>) {
        self.send("alert", || serde_json::to_value(a));
    }

    fn send(
        &self,
        kind: &'static str,
        data: impl FnOnce() -> serde_json::Result<serde_json::Value>,
    ) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        if let Ok(data) = data() {
            // Err only when the last subscriber left meanwhile.
            let _ = self.tx.send(FeedItem { kind, data });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_what_is_sent_after_they_came_and_laggards_are_told() {
        let feed = Feed::default();
        feed.events(&[EventRow {
            cluster: "c".into(),
            member: "m1".into(),
            ts_ms: 1,
            kind: "member_down".into(),
            message: "refused".into(),
        }]);
        let mut rx = feed.subscribe();
        let row = EventRow {
            cluster: "c".into(),
            member: "m1".into(),
            ts_ms: 2,
            kind: "member_up".into(),
            message: "back".into(),
        };
        feed.events(std::slice::from_ref(&row));
        let got = rx.recv().await.expect("an item");
        assert_eq!(
            (got.kind, got.data["kind"].as_str()),
            ("event", Some("member_up"))
        );
        for _ in 0..CAPACITY + 5 {
            feed.events(std::slice::from_ref(&row));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(5))
        ));
    }
}
