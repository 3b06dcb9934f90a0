//! Calendar arithmetic for the `date` columns and for retention by partition.
//!
//! Every table with a retention is partitioned by the UTC day (`toYYYYMMDD(date)`) or,
//! for the 1-hour rollup and the alert history, the UTC month (`toYYYYMM(date)`) of its
//! rows (`silences` is the exception, see `alert_store.rs`), and `date` is
//! computed here, on the client, from the row's millisecond timestamp. Doing it on the
//! client keeps partitions independent of the server's time zone, which differs between
//! installations. Retention then reads the partition ids from `system.parts` and drops a
//! partition once its last possible row is older than the cutoff: no `DELETE` (which 18.16
//! can only do as a heavy mutation) and no `TTL` (which 18.16 does not have).

use std::time::Duration;

/// Milliseconds in a day.
pub(super) const DAY_MS: i64 = 86_400_000;

/// How long batch marks are kept: far longer than any agent keeps unacknowledged batches.
pub(super) const BATCH_MARKS_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// What one partition of a table spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Granularity {
    /// `toYYYYMMDD(date)`.
    Day,
    /// `toYYYYMM(date)`.
    Month,
}

/// The UTC day number (days since 1970-01-01) of a millisecond timestamp.
pub(super) fn day_of_ms(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The last day this backend stores, 2105-12-31. A `Date` is a `UInt16` day number and
/// current servers accept days up to 2149-06-06, but 18.16's calendar ends earlier:
/// there `toDate('2149-06-06')` is the zero date and `toYYYYMMDD` wraps after
/// 2106-02-07, so partitions and filters would break beyond this day.
pub(super) const MAX_DAY: i64 = 49_672;

/// The value of a `Date` column for `ts_ms`; `None` outside 1970-01-01 to [`MAX_DAY`].
pub(super) fn date_column(ts_ms: i64) -> Option<u16> {
    let day = day_of_ms(ts_ms);
    if (0..=MAX_DAY).contains(&day) {
        u16::try_from(day).ok()
    } else {
        None
    }
}

/// `YYYY-MM-DD` of a day number, clamped to the days this backend stores, for
/// `toDate('...')` in filters (a string works on every server version, while `toDate` of
/// a number changed meaning over the versions).
pub(super) fn date_literal(day: i64) -> String {
    let (y, m, d) = civil_from_days(day.clamp(0, MAX_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day) of a day number; Howard Hinnant's `civil_from_days`.
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // The casts cannot truncate: 1 <= d <= 31 and 1 <= m <= 12 by construction.
    (y, m as u32, d as u32)
}

/// The day number of (year, month, day); Howard Hinnant's `days_from_civil`.
pub(super) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first day of the month holding `day`. Rows dated before the month of a
/// retention horizon lie in exactly the monthly partitions [`partition_expired`] drops.
pub(super) fn month_start(day: i64) -> i64 {
    let (y, m, _) = civil_from_days(day);
    days_from_civil(y, m, 1)
}

/// The first day after the partition whose id is `partition` (`20240105` for a day,
/// `202401` for a month); `None` for an id this schema does not produce.
pub(super) fn partition_end_day(granularity: Granularity, partition: &str) -> Option<i64> {
    let digits = match granularity {
        Granularity::Day => 8,
        Granularity::Month => 6,
    };
    if partition.len() != digits || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = partition.parse().ok()?;
    match granularity {
        Granularity::Day => {
            let (y, m, d) = (n / 10_000, (n / 100 % 100) as u32, (n % 100) as u32);
            let day = days_from_civil(y, m, d);
            // Reject ids like 20240231 that do not name a real day.
            (civil_from_days(day) == (y, m, d)).then_some(day + 1)
        }
        Granularity::Month => {
            let (y, m) = (n / 100, (n % 100) as u32);
            if !(1..=12).contains(&m) {
                return None;
            }
            Some(if m == 12 {
                days_from_civil(y + 1, 1, 1)
            } else {
                days_from_civil(y, m + 1, 1)
            })
        }
    }
}

/// Whether every row a partition can hold is older than `now_ms - keep`; `None` for a
/// partition id this schema does not produce.
pub(super) fn partition_expired(
    granularity: Granularity,
    partition: &str,
    now_ms: i64,
    keep: Duration,
) -> Option<bool> {
    let end_ms = partition_end_day(granularity, partition)?.checked_mul(DAY_MS)?;
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    Some(end_ms <= now_ms.saturating_sub(keep_ms))
}
