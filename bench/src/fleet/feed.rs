//! The fleet's agents, reduced to what keeps the live state current: one
//! gRPC stream per member, saying `Hello` with the member's region and tags,
//! then sending a healthy status every second (the agent's default status
//! interval). Their samples are already stored ([`crate::data`]).

use crate::data::{cluster_name, Fleet, MEMBERS, REGIONS};
use anyhow::Context as _;
use etcdmon_proto::v1::ingest_service_client::IngestServiceClient;
use etcdmon_proto::v1::{
    report, stream_request, Batch, EtcdStatus, Hello, Identity, Member, Report, StreamRequest,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The running streams.
pub struct Feeders {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Feeders {
    /// Ends every stream.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Opens a stream per member of `fleet` to the collector at `url`.
pub async fn start(url: &str, fleet: &Fleet) -> anyhow::Result<Feeders> {
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    // A connection per cluster, its members' streams multiplexed on it: the
    // collector takes at most 64 connections from one address (one NAT
    // address of real agents) and a few streams per connection.
    for c in 0..fleet.clusters {
        let client = IngestServiceClient::connect(url.to_owned())
            .await
            .context("connect to the collector")?;
        for m in 0..MEMBERS {
            tasks.spawn(member(client.clone(), c, m, stop.clone()));
        }
    }
    Ok(Feeders { stop, tasks })
}

fn identity(c: usize, m: usize) -> Identity {
    Identity {
        cluster: cluster_name(c),
        member_name: format!("m{m}"),
        member_id: m as u64 + 1,
        node: format!("node-{c}-{m}"),
        region: REGIONS[c % REGIONS.len()].to_owned(),
        tags: [("team".to_owned(), format!("t{}", c % 4))].into(),
    }
}

async fn member(
    mut client: IngestServiceClient<tonic::transport::Channel>,
    c: usize,
    m: usize,
    stop: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(8);
    let hello = StreamRequest {
        kind: Some(stream_request::Kind::Hello(Hello {
            identity: Some(identity(c, m)),
            agent_version: concat!("fleet-query/", env!("CARGO_PKG_VERSION")).into(),
            protocol_version: etcdmon_proto::PROTOCOL_VERSION,
            agent_id: format!("fleet-query-{c}-{m}"),
            features: Vec::new(),
        })),
    };
    if tx.send(hello).await.is_err() {
        return;
    }
    let Ok(response) = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        eprintln!("fleet-query: stream of {}/m{m} refused", cluster_name(c));
        return;
    };
    let mut inbound = response.into_inner();
    // Acks are read so the collector's window never fills.
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let members: Vec<Member> = (0..MEMBERS)
        .map(|i| Member {
            id: i as u64 + 1,
            name: format!("m{i}"),
            ..Default::default()
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for sequence in 1.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let status = EtcdStatus {
            reachable: true,
            member_id: m as u64 + 1,
            leader_id: 1,
            raft_term: 2,
            raft_index: sequence,
            version: "3.5.1".into(),
            members: members.clone(),
            ..Default::default()
        };
        let batch = StreamRequest {
            kind: Some(stream_request::Kind::Batch(Batch {
                sequence,
                reports: vec![Report {
                    timestamp_unix_ms: crate::now_ms(),
                    identity: Some(identity(c, m)),
                    duration_seconds: 0.0,
                    body: Some(report::Body::Status(status)),
                }],
            })),
        };
        if tx.send(batch).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = reader.await;
}
