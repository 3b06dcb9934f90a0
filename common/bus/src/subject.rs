//! NATS subjects of alert candidates: `{prefix}.{cluster}`, so that a consumer can
//! filter by cluster with a subject wildcard.

use etcdmon_alert::AlertCandidate;

/// The subject to publish `candidate` on, `{prefix}.{cluster}`, with the cluster name
/// made a valid single subject token (see [`subject_token`]).
pub fn subject(prefix: &str, candidate: &AlertCandidate) -> String {
    format!("{prefix}.{}", subject_token(candidate.cluster()))
}

/// Makes `name` one valid NATS subject token: every character other than ASCII letters,
/// digits, `-` and `_` becomes `_` (a `.` would split the token, `*` and `>` are
/// wildcards, whitespace ends the subject), and an empty name becomes `_`.
///
/// Different names may map to the same token (`eu.prod` and `eu_prod`); that only
/// merges their subjects, the candidate's labels still carry the real name.
pub fn subject_token(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    etcdmon_core::safe_token(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::{labels, AlertState};

    #[test]
    fn subjects_are_one_token_per_cluster() {
        let mut c = AlertCandidate {
            fingerprint: "f00d".into(),
            state: AlertState::Firing,
            labels: labels(&[("cluster", "eu.prod *1")]),
            annotations: Default::default(),
            value: 1.5,
            active_since_ms: 1,
            transition: 3,
            evaluated_ms: 2,
        };
        assert_eq!(subject("etcdmon.alerts", &c), "etcdmon.alerts.eu_prod__1");
        c.labels.clear();
        assert_eq!(subject("p", &c), "p._");
        assert_eq!(subject_token("ok-Name_9"), "ok-Name_9");
        assert_eq!(subject_token("étcd>"), "_tcd_");
    }
}
