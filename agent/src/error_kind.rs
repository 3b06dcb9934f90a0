//! Turns the many error types of the probes (io, reqwest, tonic, etcd-client)
//! into the few [`ErrorKind`]s an operator acts on.
//!
//! The typed information lives at different depths of the `source()` chain
//! (a tonic `Status` wraps a transport error that wraps a hyper error that
//! wraps the `io::Error`), so we walk the whole chain and look for the
//! deepest typed cause first, then fall back to well-known message texts.

use etcdmon_proto::v1::{ErrorKind, Failure};
use std::error::Error as StdError;
use std::io;

/// Classifies an error by walking its source chain.
pub fn classify(err: &(dyn StdError + 'static)) -> ErrorKind {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    let mut text = String::new();
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(kind) = classify_io(io) {
                return kind;
            }
        }
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    return ErrorKind::Auth
                }
                tonic::Code::DeadlineExceeded => return ErrorKind::Timeout,
                _ => {}
            }
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            if r.is_timeout() {
                return ErrorKind::Timeout;
            }
            if let Some(code) = r.status() {
                return if code.as_u16() == 401 || code.as_u16() == 403 {
                    ErrorKind::Auth
                } else {
                    ErrorKind::Server
                };
            }
        }
        text.push_str(&e.to_string().to_ascii_lowercase());
        text.push(' ');
        cur = e.source();
    }
    classify_text(&text)
}

/// Classifies an etcd-client error, including gRPC statuses that carry
/// etcd's own server errors ("etcdserver: no leader").
pub fn classify_etcd(err: &etcd_client::Error) -> ErrorKind {
    match err {
        etcd_client::Error::GRpcStatus(status) => classify_status(status),
        etcd_client::Error::TransportError(t) => classify(t),
        etcd_client::Error::IoError(io) => classify_io(io).unwrap_or(ErrorKind::Other),
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => ErrorKind::Local,
        other => classify(other),
    }
}

fn classify_status(status: &tonic::Status) -> ErrorKind {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ErrorKind::Auth,
        tonic::Code::DeadlineExceeded => ErrorKind::Timeout,
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
            // Unavailable is both "could not connect" (transport cause in
            // the chain) and "etcdserver: no leader" (a server answer).
            let by_chain = classify(status);
            if by_chain == ErrorKind::Other {
                if status.message().starts_with("etcdserver:") {
                    ErrorKind::Server
                } else {
                    classify_text(&status.message().to_ascii_lowercase())
                }
            } else {
                by_chain
            }
        }
        // etcd answers a wrong password with InvalidArgument ("etcdserver:
        // authentication failed, invalid user ID or password") and an unknown
        // user with FailedPrecondition: credentials, not the server.
        _ if is_etcd_auth_message(status.message()) => ErrorKind::Auth,
        _ => ErrorKind::Server,
    }
}

/// Whether an etcd error message is about the client's credentials.
fn is_etcd_auth_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("authentication failed")
        || m.contains("invalid auth token")
        || m.contains("user name not found")
        || m.contains("user name is empty")
        || m.contains("permission denied")
}

/// Classifies an `io::Error` by kind, if its kind says enough.
pub fn classify_io(e: &io::Error) -> Option<ErrorKind> {
    match e.kind() {
        // A reset or aborted connection is the member going away under an
        // open connection (killed, restarted): to an operator the same as
        // nobody listening.
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => Some(ErrorKind::Refused),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Some(ErrorKind::Timeout),
        io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound => Some(ErrorKind::Local),
        io::ErrorKind::InvalidData => {
            // rustls reports handshake failures as InvalidData io errors.
            let t = e.to_string().to_ascii_lowercase();
            if looks_like_tls(&t) {
                Some(ErrorKind::Tls)
            } else {
                Some(ErrorKind::Protocol)
            }
        }
        _ => None,
    }
}

fn looks_like_tls(t: &str) -> bool {
    t.contains("certificate") || t.contains("tls") || t.contains("handshake") || t.contains("ssl")
}

fn classify_text(t: &str) -> ErrorKind {
    if t.contains("connection refused") || t.contains("connection reset") {
        ErrorKind::Refused
    } else if t.contains("timed out") || t.contains("timeout") || t.contains("deadline") {
        ErrorKind::Timeout
    } else if looks_like_tls(t) {
        ErrorKind::Tls
    } else if t.contains("dns")
        || t.contains("failed to lookup")
        || t.contains("name or service not known")
    {
        ErrorKind::Dns
    } else if t.contains("authentication")
        || t.contains("permission denied")
        || t.contains("unauthorized")
    {
        ErrorKind::Auth
    } else if t.contains("etcdserver:") {
        ErrorKind::Server
    } else {
        ErrorKind::Other
    }
}

/// Builds a [`Failure`] for `call`, with the error's full chain as message.
pub fn failure(call: &str, kind: ErrorKind, err: &(dyn StdError + 'static)) -> Failure {
    Failure::new(call, kind, chain_message(err))
}

/// A timeout failure for `call` after `after`.
pub fn timeout(call: &str, after: std::time::Duration) -> Failure {
    Failure::new(
        call,
        ErrorKind::Timeout,
        format!("no answer within {}", humantime::format_duration(after)),
    )
}

/// A readable message for an etcd-client error. Its `Display` of a gRPC
/// status embeds Debug output of the whole chain; we want "tcp connect
/// error: Connection refused (os error 111)".
pub fn etcd_message(err: &etcd_client::Error) -> String {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let mut msg = status.message().to_string();
            let mut cur = std::error::Error::source(status);
            while let Some(e) = cur {
                let s = e.to_string();
                if !msg.contains(&s) {
                    if !msg.is_empty() {
                        msg.push_str(": ");
                    }
                    msg.push_str(&s);
                }
                cur = e.source();
            }
            if msg.is_empty() {
                format!("grpc status {:?}", status.code())
            } else {
                msg
            }
        }
        other => chain_message(other),
    }
}

/// "outer: inner: innermost", without repeating a cause already contained
/// in its parent's message (hyper and tonic often do).
pub fn chain_message(err: &(dyn StdError + 'static)) -> String {
    let mut msg = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = e.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(io::Error);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "transport error")
        }
    }
    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn refused_found_deep_in_the_chain() {
        let e = Wrap(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&e), ErrorKind::Refused);
        assert!(chain_message(&e).starts_with("transport error: "));
    }

    /// A member killed under an open connection resets it: the same as refused.
    #[test]
    fn a_reset_connection_is_refused() {
        let e = Wrap(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&e), ErrorKind::Refused);
        let s = tonic::Status::unavailable("transport error: connection error: connection reset");
        assert_eq!(
            classify_etcd(&etcd_client::Error::GRpcStatus(s)),
            ErrorKind::Refused
        );
    }

    #[test]
    fn tls_text_is_tls() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        );
        assert_eq!(classify(&e), ErrorKind::Tls);
    }

    #[test]
    fn grpc_codes() {
        let s = tonic::Status::unauthenticated("etcdserver: invalid auth token");
        assert_eq!(
            classify_etcd(&etcd_client::Error::GRpcStatus(s)),
            ErrorKind::Auth
        );
        let s = tonic::Status::unavailable("etcdserver: no leader");
        assert_eq!(
            classify_etcd(&etcd_client::Error::GRpcStatus(s)),
            ErrorKind::Server
        );
        let s = tonic::Status::deadline_exceeded("x");
        assert_eq!(
            classify_etcd(&etcd_client::Error::GRpcStatus(s)),
            ErrorKind::Timeout
        );
        // What etcd 3.5 answers a wrong password and an unknown user.
        for s in [
            tonic::Status::invalid_argument(
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            tonic::Status::failed_precondition("etcdserver: user name not found"),
        ] {
            assert_eq!(
                classify_etcd(&etcd_client::Error::GRpcStatus(s)),
                ErrorKind::Auth
            );
        }
        let s = tonic::Status::invalid_argument("etcdserver: request is too large");
        assert_eq!(
            classify_etcd(&etcd_client::Error::GRpcStatus(s)),
            ErrorKind::Server
        );
    }
}
