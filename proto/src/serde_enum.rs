//! Serialize i32 enum fields of generated messages by their short names, so
//! JSON output reads `"kind": "timeout"` rather than `"kind": 2`.

use crate::v1::{CertRole, ErrorKind, MetricType, ProcessDiscovery};
use serde::Serializer;

/// Strips the proto enum prefix: `ERROR_KIND_TIMEOUT` becomes `timeout`.
fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

macro_rules! enum_serializer {
    ($fn_name:ident, $ty:ty, $prefix:literal) => {
        pub(crate) fn $fn_name<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
            match <$ty>::try_from(*v) {
                Ok(e) => s.serialize_str(&strip(e.as_str_name(), $prefix)),
                // An enum value from a newer peer: keep the number.
                Err(_) => s.serialize_i32(*v),
            }
        }
    };
}

enum_serializer!(error_kind, ErrorKind, "ERROR_KIND_");
enum_serializer!(metric_type, MetricType, "METRIC_TYPE_");
enum_serializer!(process_discovery, ProcessDiscovery, "PROCESS_DISCOVERY_");
enum_serializer!(cert_role, CertRole, "CERT_ROLE_");
