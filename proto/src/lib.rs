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
