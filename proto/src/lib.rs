//! The agent-collector wire contract, generated from `proto/etcdmon/v1`.
//!
//! The `.proto` files are the source of truth; this crate only compiles them
//! (prost messages, the tonic `IngestService` client and server) and adds a
//! few conveniences that do not change the wire.

#![allow(missing_docs)] // generated code carries the proto comments as docs

/// Generated types of package `etcdmon.v1`.
pub mod v1 {
    tonic::include_proto!("etcdmon.v1");
}

mod serde_enum;

/// Version of the stream protocol spoken by this build (see `Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// `Hello.features`: the agent answers `HashRequest`s (the collector's
/// consistency check) with `EtcdStatus.kv_hash`.
pub const FEATURE_KV_HASH: &str = "kv_hash";

impl v1::Failure {
    /// A failure of `call` with the given kind and message.
    pub fn new(call: impl Into<String>, kind: v1::ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind: kind as i32,
            message: message.into(),
            call: call.into(),
        }
    }
}

impl v1::ErrorKind {
    /// Short lowercase name used in logs, tables and metric labels.
    pub fn short_name(self) -> &'static str {
        use v1::ErrorKind::*;
        match self {
            Unspecified => "unspecified",
            Refused => "refused",
            Timeout => "timeout",
            Tls => "tls",
            Auth => "auth",
            Dns => "dns",
            Protocol => "protocol",
            Server => "server",
            Local => "local",
            Other => "other",
        }
    }
}

impl v1::report::Body {
    /// The probe that produced the body, as agents label it and the collector
    /// stores it: `metrics`, `status`, `host`, `fsync`, `peers` or `certs`.
    pub fn kind(&self) -> &'static str {
        use v1::report::Body::*;
        match self {
            Metrics(_) => "metrics",
            Status(_) => "status",
            Host(_) => "host",
            Fsync(_) => "fsync",
            PeerRtt(_) => "peers",
            Certs(_) => "certs",
        }
    }

    /// Every failure recorded in the body, wherever its message keeps them.
    pub fn failures(&self) -> Vec<&v1::Failure> {
        use v1::report::Body::*;
        match self {
            Metrics(m) => m.failure.iter().collect(),
            Status(s) => s.failures.iter().collect(),
            Host(h) => h.failures.iter().collect(),
            Fsync(f) => f.failure.iter().collect(),
            PeerRtt(p) => p.peers.iter().filter_map(|p| p.failure.as_ref()).collect(),
            Certs(c) => c
                .certificates
                .iter()
                .filter_map(|c| c.failure.as_ref())
                .collect(),
        }
    }
}
