//! The alert vocabulary of etcdmon, one crate that the collector (whose rules
//! make alerts), the alerter (which notifies them), the bus (which carries them)
//! and the store (which keeps their history) all speak, so that none of them
//! needs another's internals and the collector and the alerter stay siblings.
//!
//! ```text
//! collector rules ──(fingerprint, AlertState, Severity, Labels)──> AlertCandidate
//!        │                                                            │ bus
//!        ▼                                                            ▼
//!   API: Matcher, Silence  <── store rows ──  alerter: Matcher (routes, inhibition), Silence
//! ```
//!
//! Nothing here does I/O: these are values, their text forms and their invariants.

mod candidate;
mod fingerprint;
mod heartbeat;
mod matcher;
mod silence;
mod state;

pub use candidate::AlertCandidate;
pub use fingerprint::fingerprint;
pub use heartbeat::{COLLECTOR_LABEL, HEARTBEAT_RULE};
pub use matcher::{all_match, MatchOp, Matcher, MatcherError};
pub use silence::Silence;
pub use state::{AlertState, Severity, UnknownName};

/// An alert's labels (`cluster`, `member`, `rule`, `severity`, ...), ordered by name
/// so that their text form and the fingerprint do not depend on insertion order.
pub type Labels = std::collections::BTreeMap<String, String>;

/// Labels from `(name, value)` pairs; handy where labels are written out by hand
/// (built-in rules, tests).
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
