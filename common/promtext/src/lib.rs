//! A fast, allocation-light and total parser for the Prometheus text
//! exposition format, version 0.0.4 (what etcd's `/metrics` serves).
//!
//! # How it works
//!
//! The payload is split into lines with `memchr` and each line is lexed
//! once, left to right, over its bytes. Names, label values and HELP texts
//! are returned as `&str` slices borrowed from the input, so a sample costs
//! no allocation of its own: samples of all families go into one `Vec`,
//! labels of all samples into another, and families and samples refer into
//! those by index range. Label values are only unescaped on demand by
//! [`Label::value`], and only when they contain an escape. Values go through
//! an exact fast path for plain decimals before falling back to
//! `str::parse::<f64>`. [`Exposition::recycle`] keeps all of that storage for
//! the next scrape.
//!
//! Samples are grouped into [`Family`] entries as they come: a sample joins
//! the family opened by the latest `# HELP`/`# TYPE` line if its name matches
//! (with `_bucket`/`_sum`/`_count` for histograms and `_sum`/`_count` for
//! summaries), otherwise it opens an untyped family of its own. Families are
//! therefore always contiguous ranges of samples; a name that reappears later
//! gets a second entry.
//!
//! # Why it is total
//!
//! A scrape target is outside our control, and one bad line must not cost us
//! the rest of the payload, let alone the process. Each line is lexed on its
//! own, so a malformed line is recorded as a [`LineError`] (line number and
//! [`LineErrorKind`]) and skipped, and parsing resumes at the next line. The
//! lexer only slices the input at positions of ASCII bytes it found itself
//! and reads bytes through bounds-checked accessors, so no input can make it
//! panic; this is checked by property tests on arbitrary and mutated input.
//! Only the first [`MAX_RECORDED_ERRORS`] errors are kept, so memory stays
//! bounded on garbage; [`Exposition::error_count`] counts them all.
//!
//! ```
//! let exp = etcdmon_promtext::parse(
//!     "# TYPE etcd_cluster_version gauge\netcd_cluster_version{cluster_version=\"3.4\"} 1\n",
//! );
//! let family = &exp.families()[0];
//! let sample = &exp.family_samples(family)[0];
//! assert_eq!(sample.value, 1.0);
//! assert_eq!(exp.labels(sample)[0].value(), "3.4");
//! assert_eq!(exp.error_count(), 0);
//! ```

mod error;
mod exposition;
mod lexer;
mod parser;
mod value;

pub use error::{LineError, LineErrorKind};
pub use exposition::{Exposition, Family, Label, MetricType, Sample, MAX_RECORDED_ERRORS};

/// Parses a whole payload.
pub fn parse(text: &str) -> Exposition<'_> {
    let mut out = Exposition::default();
    parse_into(text, &mut out);
    out
}

/// Parses a payload, appending its families, samples and errors to `out`.
///
/// Meant to be called on an exposition emptied by [`Exposition::recycle`],
/// so that its allocations are reused. Line numbers in errors restart at 1,
/// and the first sample of `text` never joins a family from earlier input.
pub fn parse_into<'a>(text: &'a str, out: &mut Exposition<'a>) {
    parser::parse_into(text, out);
}
