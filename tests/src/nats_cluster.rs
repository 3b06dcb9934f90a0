//! Three (or more) real nats-servers routed into one JetStream cluster on loopback.
//!
//! Each member is a [`NatsServer`] in its own temp dir with its own store, a
//! distinct `server_name` (`etcdmon-test-0`, `-1`, ...) and a `cluster {}` block
//! that routes to every other member. [`NatsCluster::start`] spawns them all
//! before waiting for any: a clustered server answers `/healthz` only once
//! JetStream has a meta leader, which takes a majority of them.
//!
//! Killing a member ([`NatsCluster::kill`]) and starting it again
//! ([`NatsCluster::start_again`]) keep its ports and store, so it rejoins as the
//! same server and catches up from the others. [`NatsCluster::stream_leader`]
//! says which member leads a stream, so a test can kill exactly that one.
//!
//! ```no_run
//! use etcdmon_testkit::NatsCluster;
//! let mut nats = NatsCluster::start(3)?;
//! let urls = nats.url(); // "nats://127.0.0.1:A,nats://127.0.0.1:B,nats://127.0.0.1:C"
//! if let Some(leader) = nats.stream_leader("ETCDMON_ALERTS")? {
//!     nats.kill(leader)?;
//! }
//! # anyhow::Ok(())
//! ```

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::ports::free_port;
use crate::service::retry_on_taken_port;
use crate::NatsServer;

/// Deadline of one JetStream API request made by the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// nats-servers of one cluster, killed and removed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` clustered servers with JetStream (at least 3, so that one can be
    /// lost) and waits until every one answers `/healthz`.
    pub fn start(size: usize) -> Result<NatsCluster> {
        if size < 3 {
            bail!("a JetStream cluster that survives a lost server needs 3 members, not {size}");
        }
        retry_on_taken_port("nats cluster", || {
            let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
            let mut servers = Vec::with_capacity(size);
            for index in 0..size {
                servers.push(NatsServer::spawn_cluster_member(
                    index,
                    &routes,
                    &mut free_port,
                )?);
            }
            for server in &servers {
                server.wait_ready()?;
            }
            Ok(NatsCluster { servers })
        })
    }

    /// The client URLs of all members, comma-separated, as etcdmon's `nats.url`
    /// takes them.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.servers.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// Member `index`.
    pub fn server(&self, index: usize) -> &NatsServer {
        &self.servers[index]
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no members (never: `start` needs 3).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// SIGKILLs member `index`; its store is kept.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        self.servers[index].kill()
    }

    /// Starts member `index` again on its ports and store and waits until it is healthy.
    pub fn start_again(&mut self, index: usize) -> Result<()> {
        self.servers[index].start_again()
    }

    /// The member leading `stream`, asked of a running member; `None` while the
    /// stream has no leader.
    pub fn stream_leader(&self, stream: &str) -> Result<Option<usize>> {
        let info = self.stream_info(stream)?;
        let Some(name) = info["cluster"]["leader"].as_str() else {
            return Ok(None);
        };
        let index = name
            .strip_prefix("etcdmon-test-")
            .and_then(|i| i.parse::<usize>().ok())
            .with_context(|| format!("stream leader {name:?} is not a member's name"))?;
        Ok(Some(index))
    }

    /// `$JS.API.STREAM.INFO.<stream>` as JSON, asked of a running member.
    pub fn stream_info(&self, stream: &str) -> Result<serde_json::Value> {
        self.request(&format!("$JS.API.STREAM.INFO.{stream}"), b"")
    }

    /// One JetStream API request to the first running member; an API error is an error.
    fn request(&self, subject: &str, payload: &[u8]) -> Result<serde_json::Value> {
        let server = self
            .servers
            .iter()
            .find(|s| s.is_running())
            .context("no nats-server of the cluster runs")?;
        let reply = server.request(subject, payload, REQUEST_TIMEOUT)?;
        let json: serde_json::Value =
            serde_json::from_str(&reply).with_context(|| format!("{subject}: {reply}"))?;
        if let Some(error) = json.get("error") {
            bail!("{subject}: {error}");
        }
        Ok(json)
    }
}
