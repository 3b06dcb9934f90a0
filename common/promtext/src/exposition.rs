//! The parsed result: families, samples and labels in flat, reusable storage.

use std::borrow::Cow;
use std::fmt;

use crate::error::LineError;

/// How many malformed lines [`Exposition::errors`] keeps. Further errors are
/// only counted, so a garbage payload cannot make the error list grow with
/// its size.
pub const MAX_RECORDED_ERRORS: usize = 64;

/// The type of a metric family, from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MetricType {
    /// A monotonically increasing value.
    Counter,
    /// A value that can go up and down.
    Gauge,
    /// Cumulative `_bucket` samples with an `le` label plus `_sum` and `_count`.
    Histogram,
    /// Samples with a `quantile` label plus `_sum` and `_count`.
    Summary,
    /// No `# TYPE` line, or `# TYPE name untyped`.
    #[default]
    Untyped,
}

impl MetricType {
    /// The type word as written in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    /// Parses a `# TYPE` word, ignoring ASCII case like Prometheus does.
    pub fn from_type_word(word: &str) -> Option<MetricType> {
        [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::Summary,
            MetricType::Untyped,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A metric family: the samples sharing a name (plus the histogram/summary
/// suffixes), with the metadata from its `# HELP` and `# TYPE` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family<'a> {
    /// The family name as given by `# HELP`/`# TYPE`, or the sample name for
    /// families without metadata.
    pub name: &'a str,
    /// The declared type, `Untyped` when there is no `# TYPE` line.
    pub kind: MetricType,
    /// The `# HELP` text with escapes (`\\`, `\n`) left as written.
    pub help: Option<&'a str>,
    pub(crate) samples_start: usize,
    pub(crate) samples_end: usize,
    /// Whether a `# TYPE` line set `kind`, so that a second one is detected
    /// even when the first said `untyped`.
    pub(crate) typed: bool,
}

impl<'a> Family<'a> {
    /// Whether a sample called `sample_name` belongs to this family, following
    /// the suffix rules of its type.
    pub fn owns_sample_name(&self, sample_name: &str) -> bool {
        sample_name
            .strip_prefix(self.name)
            .is_some_and(|suffix| self.owns_suffix(suffix))
    }

    /// Whether `family name + suffix` belongs to this family.
    pub(crate) fn owns_suffix(&self, suffix: &str) -> bool {
        match self.kind {
            _ if suffix.is_empty() => true,
            MetricType::Histogram => matches!(suffix, "_bucket" | "_sum" | "_count"),
            MetricType::Summary => matches!(suffix, "_sum" | "_count"),
            _ => false,
        }
    }
}

/// One sample line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The full sample name, including any `_bucket`/`_sum`/`_count` suffix.
    pub name: &'a str,
    /// The value; may be NaN or infinite.
    pub value: f64,
    /// The optional timestamp in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    pub(crate) labels_start: usize,
    pub(crate) labels_end: usize,
}

/// One `name="value"` pair of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label<'a> {
    /// The label name.
    pub name: &'a str,
    pub(crate) raw: &'a str,
    pub(crate) escaped: bool,
}

impl<'a> Label<'a> {
    /// The label value with `\\`, `\"` and `\n` unescaped. Borrows from the
    /// input unless the value actually contains an escape.
    pub fn value(&self) -> Cow<'a, str> {
        if !self.escaped {
            return Cow::Borrowed(self.raw);
        }
        let mut out = String::with_capacity(self.raw.len());
        let mut chars = self.raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            // The lexer only lets `\\`, `\"` and `\n` through.
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        Cow::Owned(out)
    }

    /// The value exactly as written between the quotes, escapes included.
    pub fn raw_value(&self) -> &'a str {
        self.raw
    }
}

/// The result of parsing one or more payloads.
///
/// Samples of all families live in one vector and labels of all samples in
/// another; families and samples refer to them by index range. That keeps
/// the number of allocations constant per payload and lets
/// [`recycle`](Exposition::recycle) reuse them for the next one.
#[derive(Debug, Clone, Default)]
pub struct Exposition<'a> {
    pub(crate) families: Vec<Family<'a>>,
    pub(crate) samples: Vec<Sample<'a>>,
    pub(crate) labels: Vec<Label<'a>>,
    pub(crate) errors: Vec<LineError>,
    pub(crate) error_count: usize,
    pub(crate) non_sample_lines: usize,
}

impl<'a> Exposition<'a> {
    /// All families in input order.
    pub fn families(&self) -> &[Family<'a>] {
        &self.families
    }

    /// All samples in input order.
    pub fn samples(&self) -> &[Sample<'a>] {
        &self.samples
    }

    /// The samples of `family`, in input order. Empty for a family that does
    /// not come from this exposition.
    pub fn family_samples(&self, family: &Family<'a>) -> &[Sample<'a>] {
        self.samples
            .get(family.samples_start..family.samples_end)
            .unwrap_or(&[])
    }

    /// The labels of `sample`, in input order. Empty for a sample that does
    /// not come from this exposition.
    pub fn labels(&self, sample: &Sample<'a>) -> &[Label<'a>] {
        self.labels
            .get(sample.labels_start..sample.labels_end)
            .unwrap_or(&[])
    }

    /// The label called `name` of `sample`, if any.
    pub fn label(&self, sample: &Sample<'a>, name: &str) -> Option<&Label<'a>> {
        self.labels(sample).iter().find(|l| l.name == name)
    }

    /// The first [`MAX_RECORDED_ERRORS`] malformed lines.
    pub fn errors(&self) -> &[LineError] {
        &self.errors
    }

    /// The number of malformed lines, including those beyond
    /// [`MAX_RECORDED_ERRORS`].
    pub fn error_count(&self) -> usize {
        self.error_count
    }

    /// The number of well-formed lines that carry no sample: blank lines,
    /// comments, `# HELP` and `# TYPE` lines. Every input line is counted
    /// exactly once in `samples().len()`, `error_count()` or this.
    pub fn non_sample_lines(&self) -> usize {
        self.non_sample_lines
    }

    /// Empties the exposition but keeps its allocations, so that parsing the
    /// next payload (which borrows from a different buffer, hence the new
    /// lifetime) does not allocate once capacities have settled.
    pub fn recycle<'b>(self) -> Exposition<'b> {
        Exposition {
            families: reuse(self.families),
            samples: reuse(self.samples),
            labels: reuse(self.labels),
            errors: reuse(self.errors),
            error_count: 0,
            non_sample_lines: 0,
        }
    }

    pub(crate) fn record_error(&mut self, error: LineError) {
        self.error_count += 1;
        if self.errors.len() < MAX_RECORDED_ERRORS {
            self.errors.push(error);
        }
    }
}

/// Turns an emptied `Vec<T>` into a `Vec<U>` of the same layout. The standard
/// library collects a `Vec`'s `IntoIter` in place when sizes and alignments
/// match, so this keeps the buffer without `unsafe`. The closure never runs
/// because the vector is empty.
fn reuse<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| -> U { unreachable!() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn recycle_keeps_capacity() {
        let text = String::from("# TYPE a counter\na{x=\"1\",y=\"2\"} 1\nbad line\n");
        let exp = parse(&text);
        let caps = (
            exp.families.capacity(),
            exp.samples.capacity(),
            exp.labels.capacity(),
            exp.errors.capacity(),
        );
        assert!(caps.0 > 0 && caps.1 > 0 && caps.2 > 0 && caps.3 > 0);
        let recycled: Exposition<'_> = exp.recycle();
        assert!(recycled.samples.is_empty() && recycled.errors.is_empty());
        assert_eq!(recycled.error_count(), 0);
        assert_eq!(recycled.non_sample_lines(), 0);
        assert_eq!(
            (
                recycled.families.capacity(),
                recycled.samples.capacity(),
                recycled.labels.capacity(),
                recycled.errors.capacity(),
            ),
            caps
        );
    }

    #[test]
    fn label_value_unescapes_only_when_needed() {
        let text = r#"m{a="plain",b="x\\y\"z\nw",c="é\"ü"} 1"#;
        let exp = parse(text);
        let s = exp.samples()[0];
        let labels = exp.labels(&s);
        assert!(matches!(labels[0].value(), Cow::Borrowed("plain")));
        assert_eq!(labels[1].raw_value(), r#"x\\y\"z\nw"#);
        assert_eq!(labels[1].value(), "x\\y\"z\nw");
        assert!(matches!(labels[1].value(), Cow::Owned(_)));
        assert_eq!(labels[2].value(), "é\"ü");
    }

    #[test]
    fn metric_type_words() {
        for t in [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::Summary,
            MetricType::Untyped,
        ] {
            assert_eq!(MetricType::from_type_word(t.as_str()), Some(t));
            assert_eq!(
                MetricType::from_type_word(&t.as_str().to_uppercase()),
                Some(t)
            );
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(MetricType::from_type_word("histogramm"), None);
        assert_eq!(MetricType::from_type_word(""), None);
    }

    #[test]
    fn foreign_family_or_sample_gives_empty_slices() {
        let big = parse("a 1\nb 2\nc{x=\"1\"} 3\n");
        let small = parse("z 1\n");
        let fam = big.families()[2];
        let s = big.samples()[2];
        assert!(small.family_samples(&fam).is_empty());
        assert!(small.labels(&s).is_empty());
    }
}
