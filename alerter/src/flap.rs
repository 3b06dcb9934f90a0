//! Flap detection: an alert that changes state too often within a window is held.
//!
//! A value hovering around a threshold is already damped by the rules' hysteresis, but
//! a member that crash-loops or a link that drops every few seconds still fires and
//! resolves again and again. Paging on every transition trains people to ignore pages.
//! Instead the alert is reported once as flapping, its notifications are held, and once
//! it has been stable for `stable_for` its final state is notified normally.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[flapping]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlapConfig {
    /// Transitions within `window` that make an alert flapping; 0 disables detection.
    pub max_transitions: usize,
    /// The window transitions are counted in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a flapping alert must keep one state before it is notified again.
    #[serde(with = "humantime_serde")]
    pub stable_for: Duration,
}

impl Default for FlapConfig {
    fn default() -> Self {
        Self {
            // Three fire/resolve cycles in ten minutes: more than any single incident.
            max_transitions: 6,
            window: Duration::from_secs(600),
            stable_for: Duration::from_secs(300),
        }
    }
}

/// Per-fingerprint transition times, bounded by `max_transitions`.
#[derive(Debug, Default)]
pub struct FlapDetector {
    config: FlapConfig,
    seen: HashMap<String, Track>,
}

#[derive(Debug, Default)]
struct Track {
    times_ms: VecDeque<i64>,
    flapping: bool,
}

impl FlapDetector {
    /// A detector with `config`.
    pub fn new(config: FlapConfig) -> Self {
        Self {
            config,
            seen: HashMap::new(),
        }
    }

    /// Records a transition of `fingerprint` at `at_ms`; returns true when this
    /// transition made it start flapping.
    pub fn record(&mut self, fingerprint: &str, at_ms: i64) -> bool {
        if self.config.max_transitions == 0 {
            return false;
        }
        let window = self.config.window.as_millis() as i64;
        let track = self.seen.entry(fingerprint.to_owned()).or_default();
        track.times_ms.push_back(at_ms);
        while track.times_ms.front().is_some_and(|&t| t < at_ms - window)
            || track.times_ms.len() > self.config.max_transitions
        {
            track.times_ms.pop_front();
        }
        if !track.flapping && track.times_ms.len() >= self.config.max_transitions {
            track.flapping = true;
            return true;
        }
        false
    }

    /// Whether `fingerprint` is flapping at `now_ms`. A flapping alert stops flapping
    /// once its last transition is `stable_for` old.
    pub fn is_flapping(&mut self, fingerprint: &str, now_ms: i64) -> bool {
        let stable = self.config.stable_for.as_millis() as i64;
        let Some(track) = self.seen.get_mut(fingerprint) else {
            return false;
        };
        if track.flapping && track.times_ms.back().is_some_and(|&t| now_ms - t >= stable) {
            track.flapping = false;
            track.times_ms.clear();
        }
        track.flapping
    }

    /// When a flapping `fingerprint` becomes stable (if nothing changes), in ms.
    pub fn stable_at(&self, fingerprint: &str) -> Option<i64> {
        let track = self.seen.get(fingerprint).filter(|t| t.flapping)?;
        Some(track.times_ms.back()? + self.config.stable_for.as_millis() as i64)
    }

    /// Forgets a fingerprint that is resolved and no longer flapping.
    pub fn forget(&mut self, fingerprint: &str, now_ms: i64) {
        let window = self.config.window.as_millis() as i64;
        if let Some(t) = self.seen.get(fingerprint) {
            if !t.flapping && t.times_ms.back().is_none_or(|&last| now_ms - last > window) {
                self.seen.remove(fingerprint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flapping_starts_at_the_threshold_and_ends_after_stable_for() {
        let mut d = FlapDetector::new(FlapConfig {
            max_transitions: 4,
            window: Duration::from_secs(60),
            stable_for: Duration::from_secs(30),
        });
        // Spread out: never flapping.
        for i in 0..6 {
            assert!(!d.record("slow", i * 61_000));
        }
        assert!(!d.is_flapping("slow", 400_000));
        // Four within a minute: flapping from the fourth on, reported once.
        let starts: Vec<bool> = (0..6).map(|i| d.record("f", 1_000 + i * 5_000)).collect();
        assert_eq!(starts, [false, false, false, true, false, false]);
        assert!(d.is_flapping("f", 30_000));
        assert_eq!(d.stable_at("f"), Some(26_000 + 30_000));
        assert!(d.is_flapping("f", 55_999));
        assert!(!d.is_flapping("f", 56_000));
        // After it settled, counting starts afresh.
        assert!(!d.record("f", 57_000));
        assert!(!d.is_flapping("f", 57_000));
    }
}
