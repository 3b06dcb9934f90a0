//! Counters and the latency histogram shared by all simulated agents.
//!
//! Totals run from start to end; a *window* (one measured step) counts
//! produced and acknowledged batches and the ingest latency of every ack
//! that arrived inside it. Latency is the time from a batch's report
//! timestamp to the arrival of its ack, in milliseconds of wall clock.

use hdrhistogram::Histogram;
use std::sync::Mutex;
use std::time::Instant;

/// Highest latency the histogram records exactly (10 minutes).
const MAX_LATENCY_MS: u64 = 600_000;

/// What a window saw.
#[derive(Debug, Clone)]
pub struct WindowStats {
    /// Length of the window in seconds.
    pub seconds: f64,
    /// Samples in the batches produced (due) in the window.
    pub produced_samples: u64,
    /// Samples of the batches whose acks arrived in the window.
    pub acked_samples: u64,
    /// Batches due but not yet acknowledged, mean over the first quarter
    /// of the window (sampled by [`Recorder::sample_backlog`]).
    pub backlog_first_quarter: f64,
    /// The same over the last quarter.
    pub backlog_last_quarter: f64,
    /// Latency of the acks in the window, ms.
    pub latency: Histogram<u64>,
    /// Acks with `rejected_reason` and agent stream errors in the window.
    pub errors: u64,
}

impl WindowStats {
    /// Acknowledged samples per second.
    pub fn acked_rate(&self) -> f64 {
        self.acked_samples as f64 / self.seconds
    }

    /// A latency quantile in ms (0 without acks).
    pub fn latency_ms(&self, quantile: f64) -> u64 {
        if self.latency.is_empty() {
            0
        } else {
            self.latency.value_at_quantile(quantile)
        }
    }
}

#[derive(Debug)]
struct Inner {
    total_produced: u64,
    total_acked: u64,
    total_acked_samples: u64,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    produced_samples: u64,
    acked_samples: u64,
    backlog: Vec<u64>,
    latency: Histogram<u64>,
    errors: u64,
}

/// Shared by all agent tasks; cheap enough for a few thousand acks a second.
#[derive(Debug)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Zero counters, no window.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                total_produced: 0,
                total_acked: 0,
                total_acked_samples: 0,
                window: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch of `samples` is due.
    pub fn produced(&self, samples: u64) {
        let mut g = self.lock();
        g.total_produced += 1;
        if let Some(w) = &mut g.window {
            w.produced_samples += samples;
        }
    }

    /// The ack of a batch of `samples` arrived `latency_ms` after its
    /// report timestamp.
    pub fn acked(&self, samples: u64, latency_ms: u64) {
        let mut g = self.lock();
        g.total_acked += 1;
        g.total_acked_samples += samples;
        if let Some(w) = &mut g.window {
            w.acked_samples += samples;
            w.latency
                .saturating_record(latency_ms.clamp(1, MAX_LATENCY_MS));
        }
    }

    /// A rejected batch or a failed stream.
    pub fn error(&self) {
        let mut g = self.lock();
        if let Some(w) = &mut g.window {
            w.errors += 1;
        }
    }

    /// Unsent batches an agent dropped when its step ended: they will
    /// never be acknowledged.
    pub fn abandoned(&self, batches: u64) {
        let mut g = self.lock();
        g.total_produced -= batches.min(g.total_produced);
    }

    /// Starts a window (ending any open one).
    pub fn begin(&self) {
        let mut g = self.lock();
        g.window = Some(Window {
            started: Instant::now(),
            produced_samples: 0,
            acked_samples: 0,
            backlog: Vec::new(),
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_MS, 3)
                .expect("valid histogram bounds"),
            errors: 0,
        });
    }

    /// Ends the window and returns what it saw (`None` without one).
    pub fn end(&self) -> Option<WindowStats> {
        let w = self.lock().window.take()?;
        let quarter = w.backlog.len().div_ceil(4).max(1);
        let mean = |v: &[u64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<u64>() as f64 / v.len() as f64
            }
        };
        let first = &w.backlog[..quarter.min(w.backlog.len())];
        let last = &w.backlog[w.backlog.len().saturating_sub(quarter)..];
        Some(WindowStats {
            seconds: w.started.elapsed().as_secs_f64(),
            produced_samples: w.produced_samples,
            acked_samples: w.acked_samples,
            backlog_first_quarter: mean(first),
            backlog_last_quarter: mean(last),
            latency: w.latency,
            errors: w.errors,
        })
    }

    /// Records the current backlog in the open window. Called often (every
    /// 100 ms), so that the quarter means average over many writer flushes:
    /// a single reading depends on where in its flush cycle it falls.
    pub fn sample_backlog(&self) {
        let mut g = self.lock();
        let backlog = g.total_produced.saturating_sub(g.total_acked);
        if let Some(w) = &mut g.window {
            w.backlog.push(backlog);
        }
    }

    /// Seconds, acknowledged samples and backlog of the open window so far.
    pub fn peek(&self) -> Option<(f64, u64, u64)> {
        let g = self.lock();
        let backlog = g.total_produced.saturating_sub(g.total_acked);
        g.window
            .as_ref()
            .map(|w| (w.started.elapsed().as_secs_f64(), w.acked_samples, backlog))
    }

    /// All acknowledged samples since the start.
    pub fn total_acked_samples(&self) -> u64 {
        self.lock().total_acked_samples
    }
}
