//! Scrapes etcd's Prometheus endpoint and keeps every sample with its
//! labels. Histograms keep their buckets so quantiles can be computed over
//! any window downstream; counters keep raw values (rates are computed
//! downstream too).
//!
//! The payload is read with a byte limit (memory bound), parsed by
//! `etcdmon-promtext` (malformed lines are counted and skipped), and
//! converted to the wire types in one pass.

use super::{Probe, Target};
use crate::error_kind::{chain_message, classify, failure};
use anyhow::Context as _;
use etcdmon_promtext::{Exposition, MetricType as TextType};
use etcdmon_proto::v1::{
    report::Body, ErrorKind, Failure, Label, MetricFamily, MetricType, MetricsScrape, Sample,
};
use futures::future::BoxFuture;
use std::time::Duration;

mod config;

pub use config::MetricsConfig;

/// Collects [`MetricsScrape`]s.
pub struct MetricsProbe {
    url: String,
    client: reqwest::Client,
    interval: Duration,
    max_bytes: u64,
    /// Reused between scrapes so steady-state parsing allocates nothing.
    buffers: Option<Exposition<'static>>,
}

impl MetricsProbe {
    /// Builds the HTTP client (TLS material applied for https URLs).
    pub fn new(cfg: &MetricsConfig, target: &Target) -> anyhow::Result<Self> {
        let url = target.etcd.effective_metrics_url();
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(1)
            .user_agent(concat!("etcdmon-agent/", env!("CARGO_PKG_VERSION")));
        if url.starts_with("https://") {
            b = target.tls.reqwest(b)?;
        }
        let client = b.build().context("build HTTP client for etcd metrics")?;
        Ok(Self {
            url,
            client,
            interval: cfg.interval,
            max_bytes: cfg.max_payload_bytes,
            buffers: Some(Exposition::default()),
        })
    }

    async fn scrape(&mut self) -> MetricsScrape {
        let mut out = MetricsScrape {
            url: self.url.clone(),
            ..Default::default()
        };
        let text = match self.fetch().await {
            Ok(t) => t,
            Err(f) => {
                out.failure = Some(f);
                return out;
            }
        };
        out.payload_bytes = text.len() as u64;
        let mut expo = self.buffers.take().unwrap_or_default().recycle();
        etcdmon_promtext::parse_into(&text, &mut expo);
        out.parse_errors = u32::try_from(expo.error_count()).unwrap_or(u32::MAX);
        if let Some(first) = expo.errors().first() {
            tracing::debug!(url = %self.url, errors = expo.error_count(), first = %first, "malformed lines in etcd metrics");
        }
        out.families = to_wire(&expo);
        self.buffers = Some(expo.recycle());
        out
    }

    async fn fetch(&self) -> Result<String, Failure> {
        let call = "scrape";
        let mut resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| failure(call, classify(&e), &e))?;
        let status = resp.status();
        if !status.is_success() {
            let kind = if status.as_u16() == 401 || status.as_u16() == 403 {
                ErrorKind::Auth
            } else {
                ErrorKind::Server
            };
            return Err(Failure::new(
                call,
                kind,
                format!("{} answered {status}", self.url),
            ));
        }
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(self.too_large());
        }
        // Read chunk by chunk so a server that lies about (or omits) its
        // length cannot make us buffer more than the limit.
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(64 * 1024) as usize);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| failure(call, classify(&e), &e))?
        {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(self.too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|e| {
            Failure::new(
                call,
                ErrorKind::Protocol,
                format!("payload is not UTF-8: {}", chain_message(&e)),
            )
        })
    }

    fn too_large(&self) -> Failure {
        Failure::new(
            "scrape",
            ErrorKind::Protocol,
            format!(
                "payload larger than metrics.max_payload_bytes ({} bytes)",
                self.max_bytes
            ),
        )
    }
}

impl Probe for MetricsProbe {
    fn name(&self) -> &'static str {
        "metrics"
    }
    fn interval(&self) -> Duration {
        self.interval
    }
    fn collect(&mut self) -> BoxFuture<'_, Body> {
        Box::pin(async move { Body::Metrics(self.scrape().await) })
    }
}

/// Converts a parsed exposition into wire families.
pub fn to_wire(expo: &Exposition<'_>) -> Vec<MetricFamily> {
    expo.families()
        .iter()
        .map(|f| MetricFamily {
            name: f.name.to_string(),
            r#type: wire_type(f.kind) as i32,
            samples: expo
                .family_samples(f)
                .iter()
                .map(|s| Sample {
                    name: s.name.to_string(),
                    labels: expo
                        .labels(s)
                        .iter()
                        .map(|l| Label {
                            name: l.name.to_string(),
                            value: l.value().into_owned(),
                        })
                        .collect(),
                    value: s.value,
                    timestamp_unix_ms: s.timestamp_ms.unwrap_or(0),
                })
                .collect(),
        })
        .collect()
}

fn wire_type(t: TextType) -> MetricType {
    match t {
        TextType::Counter => MetricType::Counter,
        TextType::Gauge => MetricType::Gauge,
        TextType::Histogram => MetricType::Histogram,
        TextType::Summary => MetricType::Summary,
        TextType::Untyped => MetricType::Untyped,
    }
}

/// The value of the first sample named `name` whose labels include all of
/// `labels`; a convenience for tables and tests.
pub fn find_sample<'a>(
    families: &'a [MetricFamily],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a Sample> {
    families.iter().flat_map(|f| f.samples.iter()).find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|l| l.name == *k && l.value == *v))
    })
}
