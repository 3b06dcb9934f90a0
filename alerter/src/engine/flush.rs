//! `Engine::due`: which notifications the current state calls for.

use std::collections::BTreeMap;

use super::{Alert, Engine, Group, Told};
use etcdmon_alert::AlertState;

use crate::notification::{Notification, NotifiedAlert, Reason};

/// One receiver's view of a group at one moment.
struct Audience {
    receiver: String,
    /// Alerts this receiver may be told about now.
    alerts: Vec<Alert>,
    /// `New` for the route's receiver, `Escalation` for escalation steps.
    reason: Reason,
    /// Whether unchanged firing alerts are repeated to it.
    repeats: bool,
}

impl Engine {
    /// The notifications due at `now_ms`, each already marked as told (the caller
    /// must hand every one to the sender). Call after every change and periodically
    /// (timers: group_wait, group_interval, repeat_interval, escalation, flap, silence
    /// expiry).
    pub fn due(&mut self, now_ms: i64) -> Vec<Notification> {
        self.next_wake_ms = None;
        let mut out = self.flap_reports(now_ms);
        let keys: Vec<String> = self.groups.keys().cloned().collect();
        for key in keys {
            let audiences = self.audiences(&key, now_ms);
            for audience in audiences {
                if let Some(n) = self.notify_audience(&key, audience, now_ms) {
                    out.push(n);
                }
            }
        }
        self.collect_garbage(now_ms);
        out
    }

    /// Alerts of the group that may be notified: not silenced, inhibited or flapping.
    fn visible(&mut self, key: &str, now_ms: i64) -> Vec<Alert> {
        let members: Vec<String> = self.groups[key].members.iter().cloned().collect();
        let mut out = Vec::new();
        for fp in members {
            let Some(alert) = self.alerts.get(&fp).cloned() else {
                continue;
            };
            if self.is_flapping(&fp, now_ms) || self.silenced_by(&alert, now_ms).is_some() {
                continue;
            }
            // Held back by inhibition, or for its timing: a cause may follow within
            // the wait; a cause that just resolved lingers. Woken when that ends.
            if let Some(until) = self.inhibited_until(&alert, now_ms) {
                if until != i64::MAX {
                    self.wake_at(until);
                }
                continue;
            }
            if let Some(until) = self.waits_for_cause_until(&alert) {
                if now_ms < until {
                    self.wake_at(until);
                    continue;
                }
            }
            out.push(alert);
        }
        out
    }

    fn audiences(&mut self, key: &str, now_ms: i64) -> Vec<Audience> {
        let visible = self.visible(key, now_ms);
        let group = &self.groups[key];
        let mut out = vec![Audience {
            receiver: group.route.receiver.clone(),
            alerts: visible.clone(),
            reason: Reason::New,
            repeats: true,
        }];
        for step in &group.route.escalation {
            let after = step.after.as_millis() as i64;
            // Escalated: firing, unacknowledged and old enough. Alerts this step was
            // already told about stay in its view, so it also hears of their
            // acknowledgement and resolution.
            let alerts = visible
                .iter()
                .filter(|a| {
                    let told = self.told(&step.receiver, &a.fingerprint).is_some();
                    match a.status {
                        AlertState::Firing => {
                            told || (!self.is_acked(a) && now_ms >= a.starts_at_ms + after)
                        }
                        AlertState::Resolved => told,
                    }
                })
                .cloned()
                .collect();
            out.push(Audience {
                receiver: step.receiver.clone(),
                alerts,
                reason: Reason::Escalation,
                repeats: false,
            });
        }
        out
    }

    fn notify_audience(&mut self, key: &str, a: Audience, now_ms: i64) -> Option<Notification> {
        if self.config.quiet_resolved.contains(&a.receiver) {
            self.resolve_quietly(&a);
        }
        let group = &self.groups[key];
        let timing = group.timing.get(&a.receiver).copied().unwrap_or_default();
        let told = |alert: &Alert| self.told(&a.receiver, &alert.fingerprint);
        let firing: Vec<&Alert> = a
            .alerts
            .iter()
            .filter(|x| x.status == AlertState::Firing)
            .collect();
        let new_firing = firing
            .iter()
            .any(|x| told(x).is_none_or(|t| t.episode() < x.episode));
        let new_resolved: Vec<&Alert> = a
            .alerts
            .iter()
            .filter(|x| {
                x.status == AlertState::Resolved
                    && matches!(told(x), Some(Told::Firing(e) | Told::Acknowledged(e)) if e < x.episode)
            })
            .collect();
        // group_interval batches the changes of an incident that is still going
        // on. Once everything this receiver sees of the group has resolved there is
        // nothing left to batch: the all-clear goes out at once, as fast as the
        // firing notice did (a flapping alert is held back by flap detection, not
        // by this timer).
        let all_clear = firing.is_empty() && !new_resolved.is_empty();
        let allowed = match timing.last_notified_ms {
            None => now_ms >= group.created_ms + group.route.group_wait_ms,
            Some(last) => all_clear || now_ms >= last + group.route.group_interval_ms,
        };
        if !allowed {
            return None;
        }
        let newly_acked: Vec<&Alert> = if self.config.ack_receivers.contains(&a.receiver) {
            firing
                .iter()
                .copied()
                .filter(|x| self.is_acked(x) && told(x) == Some(Told::Firing(x.episode)))
                .collect()
        } else {
            Vec::new()
        };

        let (reason, included): (Reason, Vec<&Alert>) = if new_firing || !new_resolved.is_empty() {
            (
                a.reason,
                firing.iter().copied().chain(new_resolved).collect(),
            )
        } else if !newly_acked.is_empty() {
            (Reason::Acknowledged, newly_acked)
        } else if a.repeats
            && firing.iter().any(|x| !self.is_acked(x))
            && now_ms
                >= timing.last_repeat_ms.max(group.created_ms) + group.route.repeat_interval_ms
        {
            (Reason::Repeat, firing.clone())
        } else {
            return None;
        };
        let notification = self.build(key, &a.receiver, reason, &included);
        let included: Vec<Alert> = included.into_iter().cloned().collect();
        for alert in &included {
            let t = match (alert.status, reason) {
                (AlertState::Resolved, _) => Told::Resolved(alert.episode),
                (AlertState::Firing, Reason::Acknowledged) => Told::Acknowledged(alert.episode),
                // A repeat or a new notification must not undo "acknowledged".
                (AlertState::Firing, _) => match self.told(&a.receiver, &alert.fingerprint) {
                    Some(t @ Told::Acknowledged(e)) if e == alert.episode => t,
                    _ => Told::Firing(alert.episode),
                },
            };
            let fp = alert.fingerprint.clone();
            self.mark_told(&a.receiver, &fp, t);
        }
        let timing = self
            .groups
            .get_mut(key)
            .expect("group exists")
            .timing
            .entry(a.receiver.clone())
            .or_default();
        timing.last_notified_ms = Some(now_ms);
        if reason != Reason::Acknowledged {
            timing.last_repeat_ms = now_ms;
        }
        Some(notification)
    }

    /// Marks the audience's resolved alerts that its receiver was told were
    /// firing as told, without telling it.
    fn resolve_quietly(&mut self, a: &Audience) {
        let resolved: Vec<(String, u64)> = a
            .alerts
            .iter()
            .filter(|x| x.status == AlertState::Resolved)
            .filter(|x| {
                matches!(self.told(&a.receiver, &x.fingerprint),
                    Some(Told::Firing(e) | Told::Acknowledged(e)) if e < x.episode)
            })
            .map(|x| (x.fingerprint.clone(), x.episode))
            .collect();
        for (fingerprint, episode) in resolved {
            self.mark_told(&a.receiver, &fingerprint, Told::Resolved(episode));
        }
    }

    /// One notification per receiver for alerts that just started flapping.
    fn flap_reports(&mut self, now_ms: i64) -> Vec<Notification> {
        let fps: Vec<String> = std::mem::take(&mut self.flap_reports).into_iter().collect();
        let mut out = Vec::new();
        for fp in fps {
            let Some(alert) = self.alerts.get(&fp).cloned() else {
                continue;
            };
            if self.silenced_by(&alert, now_ms).is_some() || self.is_inhibited(&alert, now_ms) {
                continue;
            }
            let keys: Vec<(String, String)> = self
                .groups
                .iter()
                .filter(|(_, g)| g.members.contains(&fp))
                .map(|(k, g)| (k.clone(), g.route.receiver.clone()))
                .collect();
            for (key, receiver) in keys {
                out.push(self.build(&key, &receiver, Reason::Flapping, &[&alert]));
            }
        }
        out
    }

    fn build(&self, key: &str, receiver: &str, reason: Reason, alerts: &[&Alert]) -> Notification {
        let group: &Group = &self.groups[key];
        let base = self.config.external_url.trim_end_matches('/');
        let notified: Vec<NotifiedAlert> = alerts
            .iter()
            .map(|a| NotifiedAlert {
                fingerprint: a.fingerprint.clone(),
                transition: a.episode,
                status: a.status,
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                value: a.value,
                starts_at_ms: a.starts_at_ms,
                ends_at_ms: a.ends_at_ms,
                acknowledged: self.is_acked(a),
                generator_url: format!(
                    "{base}/api/v1/alerts?state=all&fingerprint={}",
                    a.fingerprint
                ),
            })
            .collect();
        let status = if notified.iter().any(|a| a.status == AlertState::Firing) {
            AlertState::Firing
        } else {
            AlertState::Resolved
        };
        Notification {
            receiver: receiver.to_owned(),
            group_key: group.key.clone(),
            group_labels: group.labels.clone(),
            common_labels: common(notified.iter().map(|a| &a.labels)),
            common_annotations: common(notified.iter().map(|a| &a.annotations)),
            status,
            reason,
            alerts: notified,
            external_url: base.to_owned(),
        }
    }
}

/// The pairs every map has in common.
fn common<'a>(
    mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let Some(first) = maps.next() else {
        return BTreeMap::new();
    };
    let mut out = first.clone();
    for m in maps {
        out.retain(|k, v| m.get(k) == Some(v));
    }
    out
}
