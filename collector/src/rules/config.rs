//! Settings of the built-in rules: every threshold and `for` duration can
//! be changed, and every rule can be turned off, under `[rules.<name>]`.

use super::builtin::RULES;
use etcdmon_alert::Severity;
use etcdmon_core::config::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Settings of one rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Evaluate this rule.
    pub enabled: bool,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", with = "humantime_serde")]
    pub for_: Duration,
    /// Firing threshold (unit depends on the rule; unused by yes/no rules).
    pub fire: f64,
    /// Clear threshold; between `clear` and `fire` the state does not
    /// change (hysteresis).
    pub clear: f64,
    /// Severity label.
    pub severity: Severity,
}

/// Overrides of one rule's defaults; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    /// Evaluate this rule.
    pub enabled: Option<bool>,
    /// How long the condition must hold.
    #[serde(rename = "for", default, with = "humantime_serde::option")]
    pub for_: Option<Duration>,
    /// Firing threshold.
    pub fire: Option<f64>,
    /// Clear threshold.
    pub clear: Option<f64>,
    /// Severity.
    pub severity: Option<Severity>,
}

/// The settings of every built-in rule after the config's overrides: resolved
/// once, when the config is loaded (an unknown rule or thresholds on the wrong
/// side are load errors naming `rules`), then only read.
///
/// In the config it is the table of overrides (`[rules.db_near_quota] fire =
/// 0.9`); it serializes back as every rule's full settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(
    try_from = "BTreeMap<String, RuleOverride>",
    into = "BTreeMap<String, RuleOverride>"
)]
pub struct RuleSet(BTreeMap<&'static str, RuleSettings>);

impl Default for RuleSet {
    fn default() -> Self {
        Self(defaults())
    }
}

impl RuleSet {
    /// The settings of rule `name`, if it is a built-in rule.
    pub fn get(&self, name: &str) -> Option<&RuleSettings> {
        self.0.get(name)
    }

    /// Every rule's settings, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &RuleSettings)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}

impl TryFrom<BTreeMap<String, RuleOverride>> for RuleSet {
    type Error = String;

    fn try_from(overrides: BTreeMap<String, RuleOverride>) -> Result<Self, String> {
        resolve(&overrides).map_err(|e| e.reason)
    }
}

impl From<RuleSet> for BTreeMap<String, RuleOverride> {
    fn from(set: RuleSet) -> Self {
        set.0
            .into_iter()
            .map(|(name, r)| {
                let o = RuleOverride {
                    enabled: Some(r.enabled),
                    for_: Some(r.for_),
                    fire: Some(r.fire),
                    clear: Some(r.clear),
                    severity: Some(r.severity),
                };
                (name.to_owned(), o)
            })
            .collect()
    }
}

/// The defaults of every built-in rule (each rule's row in [`RULES`]).
pub fn defaults() -> BTreeMap<&'static str, RuleSettings> {
    RULES.iter().map(|r| (r.name, r.defaults.clone())).collect()
}

/// Applies overrides to the defaults; an unknown rule name or a clear
/// threshold on the wrong side of the fire threshold is an error naming
/// the field.
pub fn resolve(overrides: &BTreeMap<String, RuleOverride>) -> Result<RuleSet, FieldError> {
    let mut all = defaults();
    for (name, o) in overrides {
        let Some(r) = all.get_mut(name.as_str()) else {
            return Err(FieldError::new(
                "rules",
                format!("unknown rule {name:?}; see docs/alerts.md for the names"),
            ));
        };
        if let Some(v) = o.enabled {
            r.enabled = v;
        }
        if let Some(v) = o.for_ {
            r.for_ = v;
        }
        if let Some(v) = o.fire {
            r.fire = v;
        }
        if let Some(v) = o.clear {
            r.clear = v;
        }
        if let Some(v) = o.severity {
            r.severity = v;
        }
    }
    // Count-down rules fire below their threshold; the rest fire above.
    for rule in RULES {
        let Some(r) = all.get(rule.name) else {
            continue;
        };
        let ok = if rule.countdown {
            r.clear >= r.fire
        } else {
            r.clear <= r.fire
        };
        if !ok {
            return Err(FieldError::new(
                "rules",
                format!(
                    "rules.{}: clear ({}) must be on the safe side of fire ({})",
                    rule.name, r.clear, r.fire
                ),
            ));
        }
    }
    Ok(RuleSet(all))
}
