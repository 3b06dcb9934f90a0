//! Test harness for etcd-monitor: starts real services on free loopback ports in temp
//! dirs, so tests talk to them over the network exactly like production code does.
//!
//! * [`free_port`] ([`ports`]) hands out loopback ports, never the same one twice per
//!   process, so tests running in parallel threads do not collide.
//! * [`ChildProcess`] ([`process`]) is the guard every service uses: stdout and stderr go
//!   to a log file in the temp dir, SIGSTOP/SIGCONT freeze and thaw it, and dropping it
//!   SIGKILLs and reaps the process, also when a test panics.
//! * [`service`] is how every service starts: a temp dir on tmpfs, a retry on fresh
//!   ports when a port was taken, and a wait for readiness that fails early when the
//!   process exits.
//! * [`EtcdCluster`] ([`etcd`]) runs an N-member cluster of Debian's `etcd` binary and
//!   injects faults: kill, stop, resume and restart members. See the module docs for how
//!   readiness and cleanup work.
//! * [`ClickHouseServer`] ([`clickhouse`]) runs Debian's `clickhouse-server` 18.16 with a
//!   generated config; it can be stopped and started again on the same ports and data.
//! * [`NatsServer`] ([`nats`]) runs Debian's `nats-server` 2.9 with JetStream; it can be
//!   stopped and started again on the same port and store, and answers raw requests
//!   (JetStream's JSON API) without a client library. [`NatsCluster`] ([`nats_cluster`])
//!   routes three or more of them into one JetStream cluster, to kill a member.
//! * [`PeerNet`] ([`peer_net`]) puts a proxy before each member's peer port to delay
//!   or cut its traffic with the other members.
//! * [`SlowSyscalls`] and [`Tmpfs`] ([`faults`]) make a process's disk slow (strace
//!   fault injection) and give a member a small filesystem to fill.
//! * [`generate_tls`] ([`tls`]) writes a throwaway CA, server and client certificate.
//! * [`http_get`] and [`http_post`] ([`http`]) are the tiny HTTP/1.0 client the harness
//!   probes with.
//!
//! Binaries are looked up with [`require_binary`]; a missing one fails the test with a
//! hint to run `scripts/setup`.
//!
//! ```no_run
//! use etcdmon_testkit::EtcdCluster;
//!
//! let mut cluster = EtcdCluster::start(3)?;
//! cluster.etcdctl(&["put", "k", "v"])?;
//! cluster.kill(0)?;
//! cluster.restart(0)?;
//! # anyhow::Ok(())
//! ```

pub mod bins;
pub mod browser;
pub mod clickhouse;
pub mod etcd;
pub mod faults;
pub mod grafana;
pub mod http;
pub mod http_sink;
pub mod nats;
pub mod nats_cluster;
pub mod peer_net;
pub mod ports;
pub mod process;
pub mod service;
pub mod smtp;
pub mod tls;

pub use bins::workspace_bin;
pub use clickhouse::ClickHouseServer;
pub use etcd::{EtcdCluster, EtcdClusterBuilder, EtcdMember, EtcdVersion};
pub use faults::{SlowSyscalls, Tmpfs};
pub use http::{
    http_delete, http_get, http_post, http_post_json, http_post_json_as, http_put_json,
    HttpResponse,
};
pub use http_sink::{HttpSink, SinkAnswer, SinkRequest};
pub use nats::{NatsSecurity, NatsServer};
pub use nats_cluster::NatsCluster;
pub use peer_net::PeerNet;
pub use ports::free_port;
pub use process::{require_binary, ChildProcess};
pub use tls::{generate_tls, generate_tls_with, TlsFiles, Validity};
