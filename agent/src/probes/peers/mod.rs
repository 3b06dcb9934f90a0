//! TCP connect time from this host to the peer URL of every other member
//! (from the member list the status collector keeps in [`MemberView`]). A
//! connect is one round trip (SYN, SYN-ACK) and costs etcd nothing.

use super::{Probe, Target};
use crate::error_kind::{classify_io, timeout};
use crate::member_view::MemberView;
use etcdmon_proto::v1::{report::Body, ErrorKind, Failure, PeerRtt, PeerRttResult};
use futures::future::BoxFuture;
use std::time::{Duration, Instant};

mod config;

pub use config::PeersConfig;

/// Rounds whose unreachable peers are the same as the last sent one's are
/// sent only this often: the probe runs every second to notice a cut-off
/// member quickly, but the round trip times are kept at the cadence they
/// always had, and a repeated round would cost encoding, stream and storage.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Collects [`PeerRtt`].
pub struct PeersProbe {
    interval: Duration,
    timeout: Duration,
    shared: MemberView,
    /// When the last round went to the collector, and the peers it could not
    /// reach.
    last_sent: Option<(Instant, Vec<u64>)>,
}

impl PeersProbe {
    /// A probe of the members the status probe lists in the target's view.
    pub fn new(cfg: &PeersConfig, target: &Target) -> anyhow::Result<Self> {
        Ok(Self {
            interval: cfg.interval,
            timeout: cfg.timeout,
            shared: target.view.clone(),
            last_sent: None,
        })
    }
}

impl Probe for PeersProbe {
    fn name(&self) -> &'static str {
        "peers"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn worth_sending(&mut self, body: &Body) -> bool {
        let Body::PeerRtt(p) = body else {
            return true;
        };
        let unreachable = unreachable(p);
        let now = Instant::now();
        let send = self.last_sent.as_ref().is_none_or(|(at, last)| {
            *last != unreachable || now.duration_since(*at) >= REPORT_EVERY
        });
        if send {
            self.last_sent = Some((now, unreachable));
        }
        send
    }
    fn collect(&mut self) -> BoxFuture<'_, Body> {
        Box::pin(async move {
            let me = self.shared.identity().member_id;
            let targets: Vec<(u64, String, String)> = self
                .shared
                .members()
                .into_iter()
                .filter(|m| m.id != me)
                .flat_map(|m| {
                    m.peer_urls
                        .into_iter()
                        .map(move |u| (m.id, m.name.clone(), u))
                })
                .collect();
            let t = self.timeout;
            let peers = futures::future::join_all(
                targets
                    .into_iter()
                    .map(|(id, name, url)| probe(id, name, url, t)),
            )
            .await;
            Body::PeerRtt(PeerRtt { peers })
        })
    }
}

/// The members a round could not connect to, by id.
pub(crate) fn unreachable(p: &PeerRtt) -> Vec<u64> {
    p.peers
        .iter()
        .filter(|r| r.failure.is_some())
        .map(|r| r.member_id)
        .collect()
}

async fn probe(member_id: u64, member_name: String, url: String, t: Duration) -> PeerRttResult {
    let mut out = PeerRttResult {
        member_id,
        member_name,
        url: url.clone(),
        ..Default::default()
    };
    let addr = match host_port(&url) {
        Some(a) => a,
        None => {
            out.failure = Some(Failure::new(
                "connect",
                ErrorKind::Protocol,
                format!("peer URL {url:?} has no host and port"),
            ));
            return out;
        }
    };
    let started = Instant::now();
    match tokio::time::timeout(t, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_stream)) => out.rtt_seconds = started.elapsed().as_secs_f64(),
        Ok(Err(e)) => {
            out.failure = Some(Failure::new(
                "connect",
                classify_io(&e).unwrap_or(ErrorKind::Other),
                format!("connect {addr}: {e}"),
            ))
        }
        Err(_) => out.failure = Some(timeout("connect", t)),
    }
    out
}

fn host_port(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host()?;
    let port = u.port_or_known_default()?;
    Some(match host {
        url::Host::Ipv6(ip) => format!("[{ip}]:{port}"),
        other => format!("{other}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_rounds_are_sent_every_five_seconds_and_changes_at_once() {
        let mut p = PeersProbe {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            shared: MemberView::default(),
            last_sent: None,
        };
        let round = |refused: &[u64]| {
            Body::PeerRtt(PeerRtt {
                peers: [2, 3]
                    .iter()
                    .map(|&id| PeerRttResult {
                        member_id: id,
                        failure: refused
                            .contains(&id)
                            .then(|| Failure::new("connect", ErrorKind::Refused, "refused")),
                        ..Default::default()
                    })
                    .collect(),
            })
        };
        assert!(p.worth_sending(&round(&[])), "the first round");
        assert!(!p.worth_sending(&round(&[])), "a repeat within 5 s");
        assert!(p.worth_sending(&round(&[3])), "a peer stopped answering");
        assert!(!p.worth_sending(&round(&[3])));
        assert!(p.worth_sending(&round(&[])), "it answers again");
        // A repeat is sent once REPORT_EVERY has passed since the last one.
        if let Some((at, _)) = p.last_sent.as_mut() {
            *at -= REPORT_EVERY;
        }
        assert!(p.worth_sending(&round(&[])));
    }

    #[test]
    fn host_port_handles_ipv6_and_names() {
        assert_eq!(
            host_port("http://127.0.0.1:2380").as_deref(),
            Some("127.0.0.1:2380")
        );
        assert_eq!(
            host_port("https://[::1]:2380").as_deref(),
            Some("[::1]:2380")
        );
        assert_eq!(
            host_port("https://etcd-0:2380").as_deref(),
            Some("etcd-0:2380")
        );
        assert_eq!(host_port("not a url"), None);
    }

    #[tokio::test]
    async fn measures_a_listener_and_reports_refused() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let ok = probe(
            1,
            "a".into(),
            format!("http://{addr}"),
            Duration::from_secs(1),
        )
        .await;
        assert!(ok.failure.is_none() && ok.rtt_seconds > 0.0);
        drop(l);
        let bad = probe(
            1,
            "a".into(),
            format!("http://{addr}"),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            bad.failure.expect("failure").kind,
            ErrorKind::Refused as i32
        );
    }
}
