//! What the HTTP receivers share: the client, one request, and how a failure is
//! classified.
//!
//! Classification (the same for webhook, Slack and PagerDuty, which all document it this
//! way): 2xx is delivered; 408, 429 and 5xx may succeed later and are retryable, with the
//! server's `Retry-After` (seconds or an HTTP date) passed on to the dispatcher; any
//! other status is permanent (a 400 stays a 400 however often it is sent). Redirects
//! are not followed: a POST turned into a GET by a 302 would silently drop the alert,
//! so a 3xx is reported (permanent) and the URL should be fixed. Network errors and
//! timeouts are retryable.
//!
//! The reply body is read up to [`MAX_REPLY_BYTES`] only, so a misbehaving endpoint
//! cannot make us buffer an unbounded answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};

use super::BuildError;
use crate::notification::NotifyError;

/// How much of a reply body is kept (for errors in the history and PagerDuty's JSON).
pub(crate) const MAX_REPLY_BYTES: usize = 16 * 1024;

/// How much of a failed reply goes into the error reason.
const MAX_REASON_BODY_CHARS: usize = 300;

/// A 2xx reply.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    /// The first [`MAX_REPLY_BYTES`] of the body, lossily decoded.
    pub body: String,
}

/// A client that does not follow redirects, with `timeout` for the whole exchange and
/// the extra trusted root certificates in `ca_pem` (a PEM bundle), if any.
pub(crate) fn client(
    timeout: Duration,
    ca_pem: Option<&[u8]>,
    ca_field: &'static str,
) -> Result<reqwest::Client, BuildError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("etcdmon-alerter/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| BuildError::new(ca_field, format!("parse PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(BuildError::new(ca_field, "contains no PEM certificate"));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| BuildError::new(ca_field, format!("build HTTP client: {e}")))
}

/// Parses an `http` or `https` URL from the config.
pub(crate) fn parse_url(text: &str, field: &'static str) -> Result<reqwest::Url, BuildError> {
    let url = reqwest::Url::parse(text).map_err(|e| BuildError::new(field, format!("{e}")))?;
    match url.scheme() {
        "http" | "https" if url.has_host() => Ok(url),
        "http" | "https" => Err(BuildError::new(field, "URL has no host")),
        other => Err(BuildError::new(
            field,
            format!("scheme {other:?} is not http or https"),
        )),
    }
}

/// Sends `request` once and classifies the outcome.
pub(crate) async fn send(request: RequestBuilder) -> Result<Reply, NotifyError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let body = read_capped(response).await;
    if status.is_success() {
        return Ok(Reply { status, body });
    }
    let mut reason = format!("HTTP {status}");
    let snippet = body.trim();
    if !snippet.is_empty() {
        reason.push_str(": ");
        reason.push_str(&super::truncate_chars(snippet, MAX_REASON_BODY_CHARS));
    }
    if is_retryable(status) {
        Err(NotifyError::Retryable {
            reason,
            retry_after,
        })
    } else {
        Err(NotifyError::Permanent(reason))
    }
}

fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
}

fn transport_error(e: reqwest::Error) -> NotifyError {
    // Without the URL: a Slack webhook's path is its token, and this reason goes to
    // the log, the delivery history and the API.
    let e = e.without_url();
    // `{:#}`-style chain: reqwest's own message is often just "error sending request".
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_builder() {
        // The request itself is malformed (e.g. a header value); sending again won't help.
        NotifyError::Permanent(reason)
    } else {
        NotifyError::Retryable {
            reason,
            retry_after: None,
        }
    }
}

async fn read_capped(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    // A body that fails halfway still leaves what arrived; the status decides anyway.
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_REPLY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_REPLY_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The `Retry-After` header as a duration from `now`: delta-seconds or an HTTP date
/// (a date in the past means "now", i.e. zero).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only HTTP date format
/// RFC 9110 lets senders generate. The obsolete RFC 850 and asctime forms are not
/// accepted; such a `Retry-After` is ignored and the dispatcher's own backoff applies.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let (_weekday, rest) = text.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" || parts.next().is_some() || clock.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // A receiver's header is not trusted: a year like 99999999999 must not overflow.
    let days = u64::try_from(days_from_civil(year.clamp(1, 1_000_000), month, day)).ok()?;
    let seconds = days
        .checked_mul(86_400)?
        .checked_add(hour * 3600 + minute * 60 + second)?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            retry_after(&headers("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:50:07 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&headers("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(
            retry_after(&headers("Sunday, 06-Nov-94 08:49:37 GMT"), now),
            None
        );
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        // A hostile receiver's absurd dates: an answer (capped later), never a panic.
        for absurd in [
            "Sun, 06 Nov 99999999999 08:49:37 GMT",
            "Sun, 06 Nov -99999999999 08:49:37 GMT",
            "Sun, 31 Dec 9223372036854775807 23:59:60 GMT",
        ] {
            let _ = retry_after(&headers(absurd), now);
        }
    }

    #[test]
    fn http_dates_across_leap_years() {
        let at = |s| {
            parse_http_date(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
        assert_eq!(at("Thu, 29 Feb 2024 12:00:00 GMT"), 1_709_208_000);
        assert_eq!(at("Wed, 01 Mar 2000 00:00:00 GMT"), 951_868_800);
        assert_eq!(parse_http_date("Thu, 29 Feb 2024 12:00:00 UTC"), None);
        assert_eq!(parse_http_date("Thu, 32 Feb 2024 12:00:00 GMT"), None);
    }

    #[test]
    fn statuses() {
        for code in [408, 429, 500, 502, 503] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 410, 413] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn urls() {
        assert!(parse_url("https://hooks.slack.com/services/x", "url").is_ok());
        assert_eq!(parse_url("ftp://x", "url").unwrap_err().field, "url");
        assert!(parse_url("not a url", "url").is_err());
    }
}
