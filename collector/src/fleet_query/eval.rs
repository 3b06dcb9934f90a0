//! The arithmetic of fleet queries, on points already read from storage:
//! counter increases and rates over a window, histogram quantiles over a
//! window, and aggregation of many series into one per group. Pure functions,
//! so every edge (a counter reset, a missing bucket, an empty histogram) is
//! tested without a store.
//!
//! The semantics follow Prometheus where it has them, so that numbers on our
//! API, in Grafana and in a Prometheus scraping our exporter agree:
//! `increase`/`rate` count a counter that went down as reset to zero, and
//! `quantile` is `histogram_quantile(q, sum by (group, le) (increase(X_bucket[w])))`.

use crate::rates::OrdF64;
use std::collections::BTreeMap;

/// A counter's increase over `window_ms` ending at each point, for points
/// ascending by time. It is measured from the latest point at least a window
/// back or, when the series is younger than that, from its first point, and
/// scaled to the window (so across a gap, or over a short history, it is the
/// increase at the rate seen, as Prometheus extrapolates); the first point
/// has none. A value below its predecessor means the process restarted and
/// counted from zero again.
pub fn increase(points: &[(i64, f64)], window_ms: i64) -> Vec<(i64, f64)> {
    let window_ms = window_ms.max(1);
    // acc[i]: what the counter gained from points[0] to points[i], resets
    // counted; an increase is then a difference of two entries.
    let mut acc = Vec::with_capacity(points.len());
    let mut total = 0.0;
    for (i, &(_, v)) in points.iter().enumerate() {
        if i > 0 {
            let prev = points[i - 1].1;
            total += if v >= prev { v - prev } else { v };
        }
        acc.push(total);
    }
    let mut out = Vec::with_capacity(points.len());
    // start: the latest point at least a window before point i.
    let mut start = 0;
    for (i, &(t, _)) in points.iter().enumerate() {
        while start + 1 < i && points[start + 1].0 <= t - window_ms {
            start += 1;
        }
        if start >= i {
            continue;
        }
        let span = t - points[start].0;
        let gained = acc[i] - acc[start];
        out.push((t, gained * window_ms as f64 / span as f64));
    }
    out
}

/// A counter's per-second rate over `window_ms` (see [`increase`]).
pub fn rate(points: &[(i64, f64)], window_ms: i64) -> Vec<(i64, f64)> {
    let seconds = window_ms as f64 / 1000.0;
    increase(points, window_ms)
        .into_iter()
        .map(|(t, v)| (t, v / seconds))
        .collect()
}

/// The `q` quantile at each time of one histogram, from its buckets' cumulative
/// counters (`le` bound -> points), each bucket's increase over `window_ms`
/// summed as Prometheus does. Times at which the histogram saw nothing have no
/// point.
pub fn quantile_over(
    q: f64,
    buckets: &[(f64, Vec<(i64, f64)>)],
    window_ms: i64,
) -> Vec<(i64, f64)> {
    // time -> le -> observations in the window.
    let mut at: BTreeMap<i64, BTreeMap<OrdF64, f64>> = BTreeMap::new();
    for (le, points) in buckets {
        for (t, v) in increase(points, window_ms) {
            *at.entry(t).or_default().entry(OrdF64(*le)).or_default() += v;
        }
    }
    at.into_iter()
        .filter_map(|(t, by_le)| {
            let cumulative: Vec<(f64, f64)> = by_le.into_iter().map(|(b, n)| (b.0, n)).collect();
            crate::rates::quantile(q, &monotone(cumulative)).map(|v| (t, v))
        })
        .collect()
}

/// Bucket counts made non-decreasing in `le`: buckets scraped a moment apart,
/// or a bucket missing from one scrape, can leave a higher bound with fewer
/// observations than a lower one, which no histogram has.
fn monotone(mut buckets: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let mut highest: f64 = 0.0;
    for (_, n) in &mut buckets {
        highest = highest.max(*n);
        *n = highest;
    }
    buckets
}

/// How several series of a group become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Each series on its own.
    None,
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Smallest.
    Min,
    /// Largest ("the worst", for latencies).
    Max,
}

impl Aggregate {
    /// `none`, `sum`, `avg`, `min` or `max`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "sum" => Self::Sum,
            "avg" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            _ => return None,
        })
    }
}

/// Combines series point by point: at each time, the aggregate of the series
/// that have a point there, and how many did. Series of a stepped query share
/// their step-aligned times, so nothing is interpolated.
pub fn combine<'a>(
    agg: Aggregate,
    series: impl IntoIterator<Item = &'a [(i64, f64)]>,
) -> Vec<(i64, f64, usize)> {
    let mut at: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for points in series {
        for &(t, v) in points {
            let e = at.entry(t).or_insert((
                match agg {
                    Aggregate::Min => f64::INFINITY,
                    Aggregate::Max => f64::NEG_INFINITY,
                    _ => 0.0,
                },
                0,
            ));
            e.0 = match agg {
                Aggregate::Min => e.0.min(v),
                Aggregate::Max => e.0.max(v),
                _ => e.0 + v,
            };
            e.1 += 1;
        }
    }
    at.into_iter()
        .map(|(t, (v, n))| {
            let v = if agg == Aggregate::Avg {
                v / n as f64
            } else {
                v
            };
            (t, v, n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn increase_counts_a_reset_as_a_restart_from_zero() {
        // 10 s apart; the counter restarts between 30 s and 40 s.
        let p = [
            (0, 100.0),
            (10_000, 110.0),
            (20_000, 130.0),
            (30_000, 160.0),
            (40_000, 5.0),
        ];
        let got = increase(&p, 10_000);
        assert_eq!(
            got,
            vec![
                (10_000, 10.0),
                (20_000, 20.0),
                (30_000, 30.0),
                (40_000, 5.0)
            ]
        );
        // A 20 s window sums two steps; the first has only 10 s behind it,
        // at 1/s.
        let wide = increase(&p, 20_000);
        assert_eq!(wide[0], (10_000, 20.0));
        assert_eq!(wide[1], (20_000, 30.0));
        assert_eq!(wide[3], (40_000, 35.0));
        let r = rate(&p, 10_000);
        assert!(close(r[1].1, 2.0), "{r:?}");
    }

    #[test]
    fn increase_across_a_gap_is_scaled_to_the_window() {
        // The 10 s bucket is missing: 40 over 20 s is 20 per 10 s window.
        let p = [(0, 0.0), (20_000, 40.0)];
        assert_eq!(increase(&p, 10_000), vec![(20_000, 20.0)]);
        // One point is no increase.
        assert!(increase(&[(0, 1.0)], 10_000).is_empty());
        assert!(increase(&[], 10_000).is_empty());
    }

    #[test]
    fn quantile_sums_bucket_increases_like_histogram_quantile() {
        // Two scrapes; in between, 100 observations: 50 <= 0.01, 50 in (0.01, 0.1].
        let b = vec![
            (0.001, vec![(0, 7.0), (10_000, 7.0)]),
            (0.01, vec![(0, 10.0), (10_000, 60.0)]),
            (0.1, vec![(0, 10.0), (10_000, 110.0)]),
            (f64::INFINITY, vec![(0, 10.0), (10_000, 110.0)]),
        ];
        let q = quantile_over(0.99, &b, 10_000);
        assert_eq!(q.len(), 1);
        assert!(close(q[0].1, 0.01 + 0.09 * 49.0 / 50.0), "{q:?}");
        // Nothing observed: no quantile rather than a made-up zero.
        let idle = vec![
            (0.1, vec![(0, 5.0), (10_000, 5.0)]),
            (f64::INFINITY, vec![(0, 5.0), (10_000, 5.0)]),
        ];
        assert!(quantile_over(0.99, &idle, 10_000).is_empty());
    }

    #[test]
    fn a_bucket_behind_a_lower_one_cannot_bend_the_quantile() {
        // The +Inf bucket missed one scrape's last observations.
        let b = vec![
            (0.1, vec![(0, 0.0), (10_000, 10.0)]),
            (f64::INFINITY, vec![(0, 0.0), (10_000, 8.0)]),
        ];
        let q = quantile_over(0.5, &b, 10_000);
        assert!(close(q[0].1, 0.05), "{q:?}");
    }

    #[test]
    fn combine_aggregates_the_series_present_at_each_time() {
        let a = [(0, 1.0), (10, 4.0)];
        let b = [(0, 3.0)];
        let both = || [&a[..], &b[..]];
        assert_eq!(
            combine(Aggregate::Sum, both()),
            vec![(0, 4.0, 2), (10, 4.0, 1)]
        );
        assert_eq!(
            combine(Aggregate::Avg, both()),
            vec![(0, 2.0, 2), (10, 4.0, 1)]
        );
        assert_eq!(
            combine(Aggregate::Min, both()),
            vec![(0, 1.0, 2), (10, 4.0, 1)]
        );
        assert_eq!(
            combine(Aggregate::Max, both()),
            vec![(0, 3.0, 2), (10, 4.0, 1)]
        );
        assert_eq!(Aggregate::parse("max"), Some(Aggregate::Max));
        assert_eq!(Aggregate::parse("median"), None);
    }
}
