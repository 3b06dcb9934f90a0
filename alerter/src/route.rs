//! The routing tree: which receivers get an alert, and how alerts are grouped.
//!
//! Same semantics as Alertmanager's `route`: an alert enters at the root and descends
//! into the first child whose matchers all match (or into every matching child up to
//! and including the first without `continue = true`); the deepest matching nodes are
//! where it ends up. Children inherit the settings they do not set. Each node that an
//! alert ends up in puts it into the group `(node, values of group_by)`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use etcdmon_alert::{all_match, Matcher};

/// One node of the routing tree as configured (`[route]`, `[[route.routes]]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Receiver name; inherited when unset (the root must set it).
    pub receiver: Option<String>,
    /// Matchers an alert must satisfy to enter this node (the root matches all).
    #[serde(default)]
    pub matchers: Vec<Matcher>,
    /// Labels to group by; `["..."]` groups by all labels (one group per alert).
    pub group_by: Option<Vec<String>>,
    /// How long a new group waits for more alerts before its first notification.
    #[serde(default, with = "humantime_serde")]
    pub group_wait: Option<Duration>,
    /// How long after a notification a group waits before notifying changes.
    #[serde(default, with = "humantime_serde")]
    pub group_interval: Option<Duration>,
    /// How long before an unchanged, still firing, unacknowledged group is notified again.
    #[serde(default, with = "humantime_serde")]
    pub repeat_interval: Option<Duration>,
    /// Whether to go on matching the next siblings after this node matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
    /// Escalation policy: receivers notified when a firing alert of this route is not
    /// acknowledged in time; inherited when unset.
    pub escalation: Option<Vec<EscalationStep>>,
    /// Child routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One step of an escalation policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    /// How long after the alert started firing, unacknowledged, this step is notified.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// Receiver notified at this step.
    pub receiver: String,
}

/// A route node with inherited settings resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Position in the tree (`0`, `0.1`, `0.1.0`): part of every group key.
    pub id: String,
    /// Receiver.
    pub receiver: String,
    /// Matchers of this node only.
    pub matchers: Vec<Matcher>,
    /// Grouping labels; `None` means group by all labels.
    pub group_by: Option<Vec<String>>,
    /// First-notification delay of a new group.
    pub group_wait: Duration,
    /// Delay between notifications of changes.
    pub group_interval: Duration,
    /// Delay between repeats.
    pub repeat_interval: Duration,
    /// Whether matching goes on after this node.
    pub continue_matching: bool,
    /// Escalation steps, in order of `after`.
    pub escalation: Vec<EscalationStep>,
    /// Children.
    pub routes: Vec<Route>,
}

/// Defaults for the root when it does not set them. `group_wait` is 0 because this
/// product's promise is seconds to the phone (Alertmanager's 30 s would be most of the
/// delay); alerts of one rule evaluation still arrive together and are grouped.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::ZERO;
/// Default `group_interval`: short, so that a partial recovery is told within seconds
/// (a resolution while other alerts of the group still fire waits for it; the
/// all-clear does not); a storm is still batched per second.
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(1);
/// Default `repeat_interval`.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

impl Route {
    /// Resolves the configured tree, checking that the root has a receiver and every
    /// receiver named exists (`known` returns whether a name is configured).
    pub fn build(root: &RouteConfig, known: &dyn Fn(&str) -> bool) -> Result<Route, String> {
        let receiver = root
            .receiver
            .clone()
            .ok_or("route: the root route must name a receiver")?;
        let base = Route {
            id: String::new(),
            receiver,
            matchers: Vec::new(),
            group_by: Some(vec!["cluster".into(), "rule".into()]),
            group_wait: DEFAULT_GROUP_WAIT,
            group_interval: DEFAULT_GROUP_INTERVAL,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            continue_matching: false,
            escalation: Vec::new(),
            routes: Vec::new(),
        };
        let mut root = Self::inherit(&base, root, "0".into(), known)?;
        // The root matches everything, whatever it says.
        root.matchers.clear();
        Ok(root)
    }

    fn inherit(
        parent: &Route,
        cfg: &RouteConfig,
        id: String,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Route, String> {
        let receiver = cfg.receiver.clone().unwrap_or(parent.receiver.clone());
        let mut escalation = cfg.escalation.clone().unwrap_or(parent.escalation.clone());
        escalation.sort_by_key(|s| s.after);
        for name in std::iter::once(&receiver).chain(escalation.iter().map(|s| &s.receiver)) {
            if !known(name) {
                return Err(format!("route {id}: unknown receiver {name:?}"));
            }
        }
        let group_by = match &cfg.group_by {
            Some(g) if g.iter().any(|l| l == "...") => None,
            Some(g) => Some(g.clone()),
            None => parent.group_by.clone(),
        };
        let mut node = Route {
            id: id.clone(),
            receiver,
            matchers: cfg.matchers.clone(),
            group_by,
            group_wait: cfg.group_wait.unwrap_or(parent.group_wait),
            group_interval: cfg.group_interval.unwrap_or(parent.group_interval),
            repeat_interval: cfg.repeat_interval.unwrap_or(parent.repeat_interval),
            continue_matching: cfg.continue_matching,
            escalation,
            routes: Vec::new(),
        };
        if node.group_interval.is_zero() {
            return Err(format!("route {id}: group_interval must be above 0"));
        }
        if node.repeat_interval.is_zero() {
            return Err(format!("route {id}: repeat_interval must be above 0"));
        }
        for (i, child) in cfg.routes.iter().enumerate() {
            let c = Self::inherit(&node, child, format!("{id}.{i}"), known)?;
            node.routes.push(c);
        }
        Ok(node)
    }

    /// The nodes `labels` end up in (at least the root).
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<&Route> {
        let mut out = Vec::new();
        self.descend(labels, &mut out);
        out
    }

    fn descend<'a>(&'a self, labels: &BTreeMap<String, String>, out: &mut Vec<&'a Route>) {
        let before = out.len();
        for child in &self.routes {
            if all_match(&child.matchers, labels) {
                child.descend(labels, out);
                if !child.continue_matching {
                    break;
                }
            }
        }
        if out.len() == before {
            out.push(self);
        }
    }

    /// The grouping labels of `labels` at this node.
    pub fn group_labels(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        match &self.group_by {
            None => labels.clone(),
            Some(names) => names
                .iter()
                .filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
        }
    }

    /// The key of the group `labels` fall into at this node.
    pub fn group_key(&self, labels: &BTreeMap<String, String>) -> String {
        let inner: Vec<String> = self
            .group_labels(labels)
            .iter()
            .map(|(k, v)| format!("{k}={}", serde_json::Value::from(v.as_str())))
            .collect();
        format!("{}:{{{}}}", self.id, inner.join(","))
    }

    /// Every receiver this tree can notify (routes and escalation steps).
    pub fn receivers(&self) -> Vec<&str> {
        let mut out = vec![self.receiver.as_str()];
        out.extend(self.escalation.iter().map(|s| s.receiver.as_str()));
        for c in &self.routes {
            out.extend(c.receivers());
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::labels;

    fn tree() -> Route {
        let cfg: RouteConfig = toml::from_str(
            r#"
            receiver = "default"
            group_wait = "1s"
            [[routes]]
            matchers = ['severity="critical"']
            receiver = "pager"
            continue = true
            group_by = ["..."]
            [[routes.routes]]
            matchers = ['cluster="lab"']
            receiver = "lab"
            [[routes]]
            matchers = ['rule=~"db_.*"']
            receiver = "dba"
            repeat_interval = "1h"
            escalation = [{ after = "10m", receiver = "pager" }]
            "#,
        )
        .unwrap();
        Route::build(&cfg, &|n| ["default", "pager", "lab", "dba"].contains(&n)).unwrap()
    }

    #[test]
    fn alerts_descend_to_the_deepest_matching_nodes() {
        let t = tree();
        let ids = |l: &[(&str, &str)]| -> Vec<(String, String)> {
            t.matching(&labels(l))
                .iter()
                .map(|r| (r.id.clone(), r.receiver.clone()))
                .collect()
        };
        assert_eq!(
            ids(&[("severity", "warning")]),
            [("0".into(), "default".into())]
        );
        // continue = true: the critical db alert also reaches the dba route.
        assert_eq!(
            ids(&[("severity", "critical"), ("rule", "db_near_quota")]),
            [("0.0".into(), "pager".into()), ("0.1".into(), "dba".into())]
        );
        assert_eq!(
            ids(&[("severity", "critical"), ("cluster", "lab")]),
            [("0.0.0".into(), "lab".into())]
        );
    }

    #[test]
    fn settings_are_inherited_and_grouping_keys_are_stable() {
        let t = tree();
        let dba = &t.routes[1];
        assert_eq!(dba.group_wait, Duration::from_secs(1));
        assert_eq!(dba.repeat_interval, Duration::from_secs(3600));
        assert_eq!(dba.group_interval, DEFAULT_GROUP_INTERVAL);
        assert_eq!(dba.escalation[0].receiver, "pager");
        let l = labels(&[
            ("cluster", "prod"),
            ("rule", "db_near_quota"),
            ("member", "m1"),
        ]);
        assert_eq!(
            dba.group_key(&l),
            r#"0.1:{cluster="prod",rule="db_near_quota"}"#
        );
        // group_by = ["..."]: every label, inherited by the child.
        assert_eq!(t.routes[0].routes[0].group_labels(&l), l);
        assert_eq!(t.receivers(), ["dba", "default", "lab", "pager"]);
    }

    #[test]
    fn unknown_receivers_and_missing_root_receiver_are_errors() {
        let cfg: RouteConfig = toml::from_str(r#"receiver = "nope""#).unwrap();
        let e = Route::build(&cfg, &|_| false).unwrap_err();
        assert!(e.contains("unknown receiver \"nope\""), "{e}");
        let e = Route::build(&RouteConfig::default(), &|_| true).unwrap_err();
        assert!(e.contains("must name a receiver"), "{e}");
    }
}
