//! Message templates (minijinja) for the receivers' subjects, titles and bodies.
//!
//! ```text
//! Notification --context()--> Value --MessageTemplate::render--> String
//!                                        │ custom (from config) first,
//!                                        └ built-in default when it fails (warn!)
//! ```
//!
//! Every receiver field that is text for people (email subject, Slack title, PagerDuty
//! summary, ...) is a [`MessageTemplate`]: a built-in default from [`defaults`] plus an
//! optional override from the receiver's config. An override must parse when the
//! receiver is built (an invalid config is rejected at startup, naming the field), but it
//! can still fail while rendering (a filter applied to the wrong type, a division by
//! zero). Then the default is rendered instead and a warning is logged: a broken
//! template must never lose a notification. [`MessageTemplate::try_render`] reports that
//! fallback, so callers and tests can see it.
//!
//! Templates see [`context`]: the notification with every timestamp also formatted as
//! RFC 3339 and the alerts split into `firing` and `resolved`. Undefined values render
//! as empty (minijinja's lenient mode), so `{{ alert.labels.member }}` is safe for
//! alerts without that label. Block tags trim their own newline (`trim_blocks` and
//! `lstrip_blocks`), so multi-line templates read naturally. Templates whose name ends in
//! `.html` are HTML-escaped automatically; the `mrkdwn` filter escapes `&`, `<` and `>`
//! for Slack.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use minijinja::{AutoEscape, Environment, Value};
use serde::Serialize;

use crate::notification::{Notification, NotifiedAlert};
use etcdmon_alert::AlertState;

/// A custom template that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid template: {0}")]
pub struct TemplateError(String);

/// The shared template engine: one minijinja environment with the filters and syntax
/// settings every receiver's templates use. Cheap to clone.
#[derive(Clone)]
pub struct Templates {
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// The engine with etcdmon's settings and filters (`mrkdwn`).
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Only HTML needs escaping; minijinja's default would also JSON-escape `.json`.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.add_filter("mrkdwn", mrkdwn_escape);
        // A custom template is configuration, but a loop that never ends would still
        // stall every notification of its receiver: rendering stops after this many
        // instructions (the defaults need a few hundred per alert) and the default
        // template is used instead.
        env.set_fuel(Some(TEMPLATE_FUEL));
        Self { env: Arc::new(env) }
    }
}

/// Instructions one rendering may run (see [`Templates::new`]).
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// Compiles `source` as a custom template and renders it with a small notification
/// (one firing and one resolved alert): the fuzz target of templates. A template
/// that does not compile is simply refused, as at start-up.
pub fn fuzz_render(source: &str) {
    let Ok(template) = MessageTemplate::new(&Templates::new(), "fuzz", "field", "x", Some(source))
    else {
        return;
    };
    let alert = |status: AlertState| NotifiedAlert {
        fingerprint: "f".into(),
        transition: 1,
        status,
        labels: [("cluster".to_string(), "c".to_string())].into(),
        annotations: [("summary".to_string(), "s".to_string())].into(),
        value: f64::NAN,
        starts_at_ms: 0,
        ends_at_ms: (status == AlertState::Resolved).then_some(i64::MAX),
        acknowledged: false,
        generator_url: String::new(),
    };
    let n = Notification {
        receiver: "r".into(),
        group_key: "g".into(),
        group_labels: BTreeMap::new(),
        common_labels: BTreeMap::new(),
        common_annotations: BTreeMap::new(),
        status: AlertState::Firing,
        reason: crate::notification::Reason::New,
        alerts: vec![alert(AlertState::Firing), alert(AlertState::Resolved)],
        external_url: String::new(),
    };
    std::hint::black_box(template.try_render(&context(&n)));
}

/// Escapes the three characters Slack's mrkdwn treats as control characters.
pub fn mrkdwn_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The outcome of [`MessageTemplate::try_render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The text to send.
    pub text: String,
    /// Why the custom template was not used, when the default was rendered instead.
    pub fallback: Option<String>,
}

/// One text field of a receiver: a built-in default and an optional override.
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    templates: Templates,
    /// Config field name, for logs (e.g. `email.subject`); with `.html` appended for
    /// HTML templates, which also switches on escaping.
    name: String,
    default: &'static str,
    custom: Option<String>,
}

impl MessageTemplate {
    /// A template for `field` (as named in the config, e.g. `subject`) of a receiver of
    /// kind `kind`. `custom` must parse; it is checked here so that a typo stops the
    /// alerter at startup rather than at the first alert.
    pub fn new(
        templates: &Templates,
        kind: &str,
        field: &str,
        default: &'static str,
        custom: Option<&str>,
    ) -> Result<Self, TemplateError> {
        Self::build(templates, format!("{kind}.{field}"), default, custom)
    }

    /// Like [`MessageTemplate::new`], for HTML output: values are HTML-escaped.
    pub fn new_html(
        templates: &Templates,
        kind: &str,
        field: &str,
        default: &'static str,
        custom: Option<&str>,
    ) -> Result<Self, TemplateError> {
        Self::build(templates, format!("{kind}.{field}.html"), default, custom)
    }

    fn build(
        templates: &Templates,
        name: String,
        default: &'static str,
        custom: Option<&str>,
    ) -> Result<Self, TemplateError> {
        if let Some(source) = custom {
            templates
                .env
                .template_from_named_str(&name, source)
                .map_err(|e| TemplateError(format!("{e:#}")))?;
        }
        Ok(Self {
            templates: templates.clone(),
            name,
            default,
            custom: custom.map(str::to_owned),
        })
    }

    /// Renders the custom template, or the default when there is none or it fails (with
    /// a warning). Never fails: see [`MessageTemplate::try_render`].
    pub fn render(&self, ctx: &Value) -> String {
        let rendered = self.try_render(ctx);
        if let Some(error) = &rendered.fallback {
            tracing::warn!(template = %self.name, %error, "custom template failed, used the default");
        }
        rendered.text
    }

    /// Renders like [`MessageTemplate::render`] without logging, telling whether it fell
    /// back to the default.
    pub fn try_render(&self, ctx: &Value) -> Rendered {
        let mut fallback = None;
        if let Some(source) = &self.custom {
            match self.render_source(source, ctx) {
                Ok(text) => return Rendered { text, fallback },
                Err(e) => fallback = Some(e),
            }
        }
        let text = match self.render_source(self.default, ctx) {
            Ok(text) => text,
            // The defaults are tested; this is the last line of defence so that even a
            // bug there still produces a message.
            Err(e) => {
                tracing::error!(template = %self.name, error = %e, "default template failed");
                let attr = |key: &str| ctx.get_attr(key).ok().map(|v| v.to_string());
                format!(
                    "[{}] {}",
                    attr("status").unwrap_or_default().to_uppercase(),
                    attr("group_key").unwrap_or_default()
                )
            }
        };
        Rendered { text, fallback }
    }

    fn render_source(&self, source: &str, ctx: &Value) -> Result<String, String> {
        self.templates
            .env
            .template_from_named_str(&self.name, source)
            .and_then(|t| t.render(ctx))
            .map_err(|e| e.to_string())
    }
}

/// What templates see: the notification, with times formatted.
#[derive(Debug, Serialize)]
struct NotificationContext<'a> {
    receiver: &'a str,
    group_key: &'a str,
    status: &'static str,
    reason: &'static str,
    group_labels: &'a BTreeMap<String, String>,
    common_labels: &'a BTreeMap<String, String>,
    common_annotations: &'a BTreeMap<String, String>,
    external_url: &'a str,
    num_firing: usize,
    num_resolved: usize,
    alerts: Vec<AlertContext<'a>>,
    firing: Vec<AlertContext<'a>>,
    resolved: Vec<AlertContext<'a>>,
}

/// One alert as templates see it.
#[derive(Debug, Clone, Serialize)]
struct AlertContext<'a> {
    fingerprint: &'a str,
    transition: u64,
    status: &'static str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    /// `none` when the alert has no value (NaN).
    value: Option<f64>,
    /// The value for people (`0.25`, `3`), empty when there is none.
    value_text: String,
    starts_at: String,
    starts_at_ms: i64,
    ends_at: Option<String>,
    ends_at_ms: Option<i64>,
    acknowledged: bool,
    generator_url: &'a str,
}

impl<'a> AlertContext<'a> {
    fn new(alert: &'a NotifiedAlert) -> Self {
        let value = (!alert.value.is_nan()).then_some(alert.value);
        Self {
            fingerprint: &alert.fingerprint,
            transition: alert.transition,
            status: alert.status.as_str(),
            labels: &alert.labels,
            annotations: &alert.annotations,
            value,
            value_text: value.map(format_value).unwrap_or_default(),
            starts_at: format_time_ms(alert.starts_at_ms),
            starts_at_ms: alert.starts_at_ms,
            ends_at: alert.ends_at_ms.map(format_time_ms),
            ends_at_ms: alert.ends_at_ms,
            acknowledged: alert.acknowledged,
            generator_url: &alert.generator_url,
        }
    }
}

/// The template context for `n`. Build it once per notification and render every
/// template of the receiver with it.
pub fn context(n: &Notification) -> Value {
    let alerts: Vec<AlertContext<'_>> = n.alerts.iter().map(AlertContext::new).collect();
    let (firing, resolved): (Vec<_>, Vec<_>) =
        alerts.iter().cloned().partition(|a| a.status == "firing");
    Value::from_serialize(NotificationContext {
        receiver: &n.receiver,
        group_key: &n.group_key,
        status: n.status.as_str(),
        reason: n.reason.as_str(),
        group_labels: &n.group_labels,
        common_labels: &n.common_labels,
        common_annotations: &n.common_annotations,
        external_url: &n.external_url,
        num_firing: firing.len(),
        num_resolved: resolved.len(),
        alerts,
        firing,
        resolved,
    })
}

/// The context for a per-alert template (Slack's `alert`): the notification's context
/// plus `alert`, the `index`-th alert.
pub fn alert_context(ctx: &Value, index: usize) -> Value {
    let alert = ctx
        .get_attr("alerts")
        .and_then(|alerts| alerts.get_item(&Value::from(index)))
        .unwrap_or_default();
    minijinja::context! { alert => alert, ..ctx.clone() }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2024-05-01T12:00:00.000Z`). Times before the epoch are shown as the epoch.
pub fn format_time_ms(ms: i64) -> String {
    // humantime formats years up to 9999 and fails (a panic in `to_string`) after;
    // a candidate is not trusted to stay there (found by fuzzing).
    const LAST_MS: i64 = 253_402_300_799_999;
    if ms > LAST_MS {
        return format!("{ms} ms after the epoch");
    }
    let since_epoch = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string()
}

/// `time` as RFC 3339 UTC with milliseconds.
pub fn format_system_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A measured value for people: integers without decimals, others with up to three.
pub fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 1e15 || (value != 0.0 && value.abs() < 1e-3) {
        format!("{value:e}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The built-in templates.
pub mod defaults {
    /// The one-line title, e.g. `[FIRING:2] NoLeader cluster=prod`: status and count,
    /// the rule, the group labels, and a note when acknowledged or escalated.
    macro_rules! title {
        () => {
            "[{{ status|upper }}{% if status == 'firing' %}:{{ num_firing }}{% endif %}] \
             {{ common_labels.rule or group_labels.rule or 'alerts' }}\
             {% for k, v in group_labels|items if k != 'rule' %} {{ k }}={{ v }}{% endfor %}\
             {% if reason == 'acknowledged' %} (acknowledged)\
             {% elif reason == 'escalation' %} (escalated)\
             {% elif reason == 'flapping' %} (flapping){% endif %}"
        };
    }

    /// Email subject and Slack title.
    pub const TITLE: &str = title!();

    /// PagerDuty summary: the title, plus the alert's summary when only one fires.
    pub const PAGERDUTY_SUMMARY: &str = concat!(
        title!(),
        "{% if num_firing == 1 and firing[0].annotations.summary %}: \
         {{ firing[0].annotations.summary }}{% endif %}"
    );

    /// PagerDuty `source`: the cluster, else `etcd-monitor`.
    pub const PAGERDUTY_SOURCE: &str =
        "{{ common_labels.cluster or group_labels.cluster or 'etcd-monitor' }}";
    /// PagerDuty `component`: the member when all alerts concern one.
    pub const PAGERDUTY_COMPONENT: &str = "{{ common_labels.member }}";
    /// PagerDuty `group`: the cluster.
    pub const PAGERDUTY_GROUP: &str = "{{ common_labels.cluster }}";
    /// PagerDuty `class`: the rule.
    pub const PAGERDUTY_CLASS: &str = "{{ common_labels.rule }}";

    /// Plain-text email body: why it is sent, then every alert with summary,
    /// description, value, member, times and links.
    pub const EMAIL_TEXT: &str = r#"{% macro show(alert) %}
* {{ alert.annotations.summary or alert.labels.rule or alert.fingerprint }}
{% if alert.annotations.description %}
  {{ alert.annotations.description }}
{% endif %}
{% if alert.value_text %}
  Value:    {{ alert.value_text }}
{% endif %}
{% if alert.labels.member %}
  Member:   {{ alert.labels.member }}
{% endif %}
  Labels:   {% for k, v in alert.labels|items %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}

  Started:  {{ alert.starts_at }}
{% if alert.ends_at %}
  Resolved: {{ alert.ends_at }}
{% endif %}
{% if alert.annotations.runbook_url %}
  Runbook:  {{ alert.annotations.runbook_url }}
{% endif %}
{% if alert.generator_url %}
  Details:  {{ alert.generator_url }}
{% endif %}
{% endmacro %}
{% if reason == 'acknowledged' %}
These alerts were acknowledged.
{% elif reason == 'escalation' %}
Escalated: these alerts were not acknowledged in time.
{% elif reason == 'repeat' %}
Still firing.
{% elif reason == 'flapping' %}
This alert changes state too often: its notifications are held until it is stable.
{% endif %}
{{ num_firing }} firing, {{ num_resolved }} resolved{% for k, v in group_labels|items %}{% if loop.first %} ({% endif %}{{ k }}={{ v }}{% if loop.last %}){% else %}, {% endif %}{% endfor %}.
{% if firing %}

Firing:
{% for alert in firing %}
{{ show(alert) }}
{% endfor %}
{% endif %}
{% if resolved %}
{% if not firing %}

{% endif %}
Resolved:
{% for alert in resolved %}
{{ show(alert) }}
{% endfor %}
{% endif %}
{% if external_url %}
-- 
etcd-monitor: {{ external_url }}
{% endif %}
"#;

    /// HTML email body: the same content as [`EMAIL_TEXT`] as a list.
    pub const EMAIL_HTML: &str = r#"{% macro show(alert) %}
<li><b>{{ alert.annotations.summary or alert.labels.rule or alert.fingerprint }}</b>
{% if alert.annotations.description %}<br>{{ alert.annotations.description }}{% endif %}
<br><small>
{% if alert.value_text %}Value: {{ alert.value_text }} &middot; {% endif %}
{% if alert.labels.member %}Member: {{ alert.labels.member }} &middot; {% endif %}
Started: {{ alert.starts_at }}{% if alert.ends_at %} &middot; Resolved: {{ alert.ends_at }}{% endif %}
<br>{% for k, v in alert.labels|items %}<code>{{ k }}={{ v }}</code> {% endfor %}
{% if alert.annotations.runbook_url %}<br><a href="{{ alert.annotations.runbook_url }}">Runbook</a>{% endif %}
{% if alert.generator_url %} <a href="{{ alert.generator_url }}">Details</a>{% endif %}
</small></li>
{% endmacro %}
<html><body>
<p>{% if reason == 'acknowledged' %}These alerts were acknowledged. {% elif reason == 'escalation' %}Escalated: not acknowledged in time. {% elif reason == 'flapping' %}Flapping: notifications are held until it is stable. {% endif %}
{{ num_firing }} firing, {{ num_resolved }} resolved.</p>
{% if firing %}
<h3>Firing</h3>
<ul>
{% for alert in firing %}{{ show(alert) }}{% endfor %}
</ul>
{% endif %}
{% if resolved %}
<h3>Resolved</h3>
<ul>
{% for alert in resolved %}{{ show(alert) }}{% endfor %}
</ul>
{% endif %}
{% if external_url %}<p><a href="{{ external_url }}">etcd-monitor</a></p>{% endif %}
</body></html>
"#;

    /// Slack's plain-text `text`, shown in notifications and where blocks cannot be:
    /// the title and one line per alert.
    pub const SLACK_TEXT: &str = concat!(
        title!(),
        // An explicit newline: the one after the title's last `{% endif %}` is trimmed.
        "{{ '\\n' }}{% for alert in alerts %}\
         {{ alert.status|upper }}: {{ alert.annotations.summary or alert.labels.rule }}\n\
         {% endfor %}"
    );

    /// One Slack section (mrkdwn) per alert, with `alert` in the context.
    pub const SLACK_ALERT: &str = r#"{% if alert.status == 'firing' %}:red_circle:{% else %}:large_green_circle:{% endif %} *{{ (alert.annotations.summary or alert.labels.rule)|mrkdwn }}*
{% if alert.annotations.description %}
{{ alert.annotations.description|mrkdwn }}
{% endif %}
{% if alert.value_text %}*Value:* {{ alert.value_text }}  {% endif %}{% if alert.labels.member %}*Member:* `{{ alert.labels.member|mrkdwn }}`  {% endif %}*Started:* {{ alert.starts_at }}{% if alert.ends_at %}  *Resolved:* {{ alert.ends_at }}{% endif %}

{% if alert.annotations.runbook_url %}<{{ alert.annotations.runbook_url }}|Runbook>  {% endif %}{% if alert.generator_url %}<{{ alert.generator_url }}|Details>{% endif %}"#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::AlertState;

    use crate::notification::Reason;

    fn alert(rule: &str, member: &str, status: AlertState) -> NotifiedAlert {
        NotifiedAlert {
            fingerprint: format!("fp-{rule}-{member}"),
            transition: 3,
            status,
            labels: [
                ("cluster", "prod"),
                ("member", member),
                ("rule", rule),
                ("severity", "critical"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            annotations: [
                ("summary", format!("{member} has no leader")),
                ("description", "Raft lost its leader <b>".to_owned()),
                (
                    "runbook_url",
                    "https://runbooks.invalid/NoLeader".to_owned(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            value: 0.25,
            starts_at_ms: 1_714_564_800_000,
            ends_at_ms: (status == AlertState::Resolved).then_some(1_714_565_100_500),
            acknowledged: false,
            generator_url: "http://etcdmon.invalid/alerts/1".to_owned(),
        }
    }

    fn notification() -> Notification {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        Notification {
            receiver: "ops".to_owned(),
            group_key: "{}:{cluster=\"prod\", rule=\"NoLeader\"}".to_owned(),
            group_labels: labels(&[("cluster", "prod"), ("rule", "NoLeader")]),
            common_labels: labels(&[("cluster", "prod"), ("rule", "NoLeader")]),
            common_annotations: BTreeMap::new(),
            status: AlertState::Firing,
            reason: Reason::New,
            alerts: vec![
                alert("NoLeader", "m1", AlertState::Firing),
                alert("NoLeader", "m2", AlertState::Firing),
                alert("NoLeader", "m3", AlertState::Resolved),
            ],
            external_url: "http://etcdmon.invalid".to_owned(),
        }
    }

    fn template(default: &'static str, custom: Option<&str>) -> MessageTemplate {
        MessageTemplate::new(&Templates::new(), "test", "field", default, custom).unwrap()
    }

    #[test]
    fn a_template_that_never_ends_runs_out_of_fuel_and_the_default_is_used() {
        // 10^8 iterations: minutes of work without the fuel limit.
        let endless =
            "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}";
        let rendered =
            template(defaults::TITLE, Some(endless)).try_render(&context(&notification()));
        assert_eq!(rendered.text, "[FIRING:2] NoLeader cluster=prod");
        let why = rendered.fallback.expect("fell back");
        assert!(why.contains("fuel"), "{why}");
    }

    #[test]
    fn the_defaults_render_a_large_group_within_the_fuel() {
        let mut n = notification();
        let one = n.alerts[0].clone();
        n.alerts = vec![one; 2_000];
        for default in [
            defaults::TITLE,
            defaults::EMAIL_TEXT,
            defaults::SLACK_TEXT,
            defaults::PAGERDUTY_SUMMARY,
        ] {
            let rendered = template(default, None).try_render(&context(&n));
            assert_eq!(rendered.fallback, None);
            assert!(!rendered.text.is_empty());
        }
    }

    #[test]
    fn a_time_beyond_the_year_9999_is_shown_not_a_panic() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time_ms(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            format_time_ms(i64::MAX),
            "9223372036854775807 ms after the epoch"
        );
    }

    #[test]
    fn default_title() {
        let ctx = context(&notification());
        let title = template(defaults::TITLE, None).try_render(&ctx);
        assert_eq!(title.text, "[FIRING:2] NoLeader cluster=prod");
        assert_eq!(title.fallback, None);

        let mut n = notification();
        n.reason = Reason::Acknowledged;
        n.status = AlertState::Resolved;
        let title = template(defaults::TITLE, None).render(&context(&n));
        assert_eq!(title, "[RESOLVED] NoLeader cluster=prod (acknowledged)");
    }

    #[test]
    fn default_bodies_show_every_alert() {
        let ctx = context(&notification());
        let text = template(defaults::EMAIL_TEXT, None).render(&ctx);
        assert!(
            text.contains("2 firing, 1 resolved (cluster=prod, rule=NoLeader)."),
            "{text}"
        );
        for needle in [
            "* m1 has no leader",
            "* m2 has no leader",
            "Raft lost its leader <b>",
            "Value:    0.25",
            "Member:   m2",
            "Started:  2024-05-01T12:00:00.000Z",
            "Resolved: 2024-05-01T12:05:00.500Z",
            "Runbook:  https://runbooks.invalid/NoLeader",
            "Details:  http://etcdmon.invalid/alerts/1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let firing = text.find("Firing:").unwrap();
        let resolved = text.find("Resolved:\n").unwrap();
        assert!(firing < text.find("* m1").unwrap());
        assert!(resolved < text.find("* m3").unwrap());
        assert!(!text.contains("\n\n\n\n"), "runaway blank lines:\n{text}");

        let html = MessageTemplate::new_html(
            &Templates::new(),
            "email",
            "html",
            defaults::EMAIL_HTML,
            None,
        )
        .unwrap()
        .render(&ctx);
        assert!(html.contains("Raft lost its leader &lt;b&gt;"), "{html}");
        assert!(html.contains("<h3>Resolved</h3>"), "{html}");

        let slack = template(defaults::SLACK_TEXT, None).render(&ctx);
        assert!(
            slack.starts_with("[FIRING:2] NoLeader cluster=prod\nFIRING: m1 has no leader\n"),
            "{slack}"
        );

        let pd = template(defaults::PAGERDUTY_SUMMARY, None).render(&ctx);
        assert_eq!(pd, "[FIRING:2] NoLeader cluster=prod");
        let alert = template(defaults::SLACK_ALERT, None).render(&alert_context(&ctx, 0));
        assert!(
            alert.starts_with(":red_circle: *m1 has no leader*\n"),
            "{alert}"
        );
        assert!(alert.contains("Raft lost its leader &lt;b&gt;"), "{alert}");
        assert!(
            alert.contains("<https://runbooks.invalid/NoLeader|Runbook>"),
            "{alert}"
        );
    }

    #[test]
    fn resolved_only_body() {
        let mut n = notification();
        n.alerts.retain(|a| a.status == AlertState::Resolved);
        n.status = AlertState::Resolved;
        let text = template(defaults::EMAIL_TEXT, None).render(&context(&n));
        assert!(
            text.starts_with(
                "0 firing, 1 resolved (cluster=prod, rule=NoLeader).\n\nResolved:\n* m3"
            ),
            "{text}"
        );
        assert!(!text.contains("Firing:"), "{text}");
    }

    #[test]
    fn custom_template_is_used() {
        let ctx = context(&notification());
        let rendered = template(
            defaults::TITLE,
            Some("{{ receiver }}: {{ alerts|length }} {{ firing[0].starts_at }}"),
        )
        .try_render(&ctx);
        assert_eq!(rendered.text, "ops: 3 2024-05-01T12:00:00.000Z");
        assert_eq!(rendered.fallback, None);
    }

    #[test]
    fn broken_override_falls_back_to_default() {
        // Parses, but fails at render time: a string cannot be divided.
        let rendered = template(defaults::TITLE, Some("{{ receiver / 2 }}"))
            .try_render(&context(&notification()));
        assert_eq!(rendered.text, "[FIRING:2] NoLeader cluster=prod");
        let why = rendered.fallback.expect("fallback reported");
        assert!(why.contains("test.field"), "{why}");
    }

    #[test]
    fn unparsable_override_is_rejected_at_build() {
        let err = MessageTemplate::new(
            &Templates::new(),
            "email",
            "subject",
            defaults::TITLE,
            Some("{% if %}"),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid template"), "{err}");
    }

    #[test]
    fn values_and_times_for_people() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(1.23456), "1.235");
        assert_eq!(format_value(0.0001), "1e-4");
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(mrkdwn_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
    }
}
