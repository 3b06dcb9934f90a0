//! The driver: splits the payload into lines and groups samples into families.

use memchr::memchr_iter;

use crate::error::{LineError, LineErrorKind};
use crate::exposition::{Exposition, Family, MetricType, Sample};
use crate::lexer::{lex_line, Line};

/// Parser state for one `parse_into` call.
struct Parser<'a, 'o> {
    out: &'o mut Exposition<'a>,
    /// Whether the last family in `out` was created by this call and is still
    /// open. Samples can only join the current family, which is what keeps
    /// every family's samples contiguous.
    has_current: bool,
    line_no: usize,
}

/// Most samples reserved up front (about 1 MB of `Sample`s).
const RESERVE_CAP: usize = 1 << 14;

pub(crate) fn parse_into<'a>(text: &'a str, out: &mut Exposition<'a>) {
    // Rough upper estimates for exporter output (lines of ~100 bytes with a
    // few labels each), so that a fresh exposition grows at most once or
    // twice; a recycled one usually has the capacity already. Capped so that
    // a huge payload of long lines cannot reserve far more than it uses.
    out.samples.reserve((text.len() / 100).min(RESERVE_CAP));
    out.labels.reserve((text.len() / 40).min(4 * RESERVE_CAP));
    let mut parser = Parser {
        out,
        has_current: false,
        line_no: 0,
    };
    let mut start = 0;
    for newline in memchr_iter(b'\n', text.as_bytes()) {
        // Both ends are at or next to an ASCII `\n`, so on char boundaries.
        parser.line(&text[start..newline]);
        start = newline + 1;
    }
    if start < text.len() {
        parser.line(&text[start..]);
    }
}

impl<'a> Parser<'a, '_> {
    fn line(&mut self, line: &'a str) {
        self.line_no += 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let labels_mark = self.out.labels.len();
        let known_name = match self.out.families.last() {
            Some(f) if self.has_current => f.name,
            _ => "",
        };
        let result = match lex_line(line, &mut self.out.labels, known_name) {
            Ok(Line::Sample {
                sample,
                extends_known,
            }) => {
                self.push_sample(sample, extends_known);
                return;
            }
            Ok(Line::Ignored) => Ok(()),
            Ok(Line::Help { name, text }) => self.help(name, text),
            Ok(Line::Type { name, kind }) => self.type_line(name, kind),
            Err(kind) => {
                // A sample rejected after some of its labels were lexed must
                // not leave them behind for the next sample's range.
                self.out.labels.truncate(labels_mark);
                Err(kind)
            }
        };
        match result {
            Ok(()) => self.out.non_sample_lines += 1,
            Err(kind) => self.out.record_error(LineError {
                line: self.line_no,
                kind,
            }),
        }
    }

    /// `extends_known`: the lexer found that the sample name starts with the
    /// current family's name, so only the suffix is left to check.
    fn push_sample(&mut self, sample: Sample<'a>, extends_known: bool) {
        let joins_current = extends_known
            && self.has_current
            && self.out.families.last().is_some_and(|f| {
                sample
                    .name
                    .get(f.name.len()..)
                    .is_some_and(|suffix| f.owns_suffix(suffix))
            });
        if !joins_current {
            self.open_family(sample.name, MetricType::Untyped, None, false);
        }
        self.out.samples.push(sample);
        let end = self.out.samples.len();
        if let Some(family) = self.out.families.last_mut() {
            family.samples_end = end;
        }
    }

    /// The current family if it is called `name` and has no samples yet, i.e.
    /// the one a HELP or TYPE line for `name` should annotate.
    fn pending_family(&mut self, name: &str) -> Option<&mut Family<'a>> {
        if !self.has_current {
            return None;
        }
        let samples = self.out.samples.len();
        self.out
            .families
            .last_mut()
            .filter(|f| f.name == name && f.samples_start == samples)
    }

    fn help(&mut self, name: &'a str, text: &'a str) -> Result<(), LineErrorKind> {
        match self.pending_family(name) {
            Some(f) if f.help.is_some() => Err(LineErrorKind::DuplicateHelp),
            Some(f) => {
                f.help = Some(text);
                Ok(())
            }
            None => {
                self.open_family(name, MetricType::Untyped, Some(text), false);
                Ok(())
            }
        }
    }

    fn type_line(&mut self, name: &'a str, kind: MetricType) -> Result<(), LineErrorKind> {
        match self.pending_family(name) {
            Some(f) if f.typed => Err(LineErrorKind::DuplicateType),
            Some(f) => {
                f.kind = kind;
                f.typed = true;
                Ok(())
            }
            None => {
                self.open_family(name, kind, None, true);
                Ok(())
            }
        }
    }

    fn open_family(&mut self, name: &'a str, kind: MetricType, help: Option<&'a str>, typed: bool) {
        let at = self.out.samples.len();
        self.out.families.push(Family {
            name,
            kind,
            help,
            samples_start: at,
            samples_end: at,
            typed,
        });
        self.has_current = true;
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse, parse_into, Exposition, LineError, LineErrorKind, MetricType};

    /// (family name, kind, help, sample names) for every family.
    fn shape<'a>(
        exp: &Exposition<'a>,
    ) -> Vec<(&'a str, MetricType, Option<&'a str>, Vec<&'a str>)> {
        exp.families()
            .iter()
            .map(|f| {
                (
                    f.name,
                    f.kind,
                    f.help,
                    exp.family_samples(f).iter().map(|s| s.name).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn histogram_family_takes_its_suffixes() {
        let exp = parse(
            "# HELP h Latency.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\nh 9\nh_total 1\n",
        );
        assert_eq!(
            shape(&exp),
            vec![
                (
                    "h",
                    MetricType::Histogram,
                    Some("Latency."),
                    vec!["h_bucket", "h_bucket", "h_sum", "h_count", "h"]
                ),
                ("h_total", MetricType::Untyped, None, vec!["h_total"]),
            ]
        );
        assert_eq!(exp.error_count(), 0);
    }

    #[test]
    fn summary_family_takes_sum_and_count_but_not_bucket() {
        let exp = parse(
            "# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 2\ns_count 3\ns_bucket{le=\"1\"} 4\n",
        );
        assert_eq!(
            shape(&exp),
            vec![
                (
                    "s",
                    MetricType::Summary,
                    None,
                    vec!["s", "s_sum", "s_count"]
                ),
                ("s_bucket", MetricType::Untyped, None, vec!["s_bucket"]),
            ]
        );
    }

    #[test]
    fn counter_and_gauge_take_exact_name_only() {
        let exp = parse("# TYPE c counter\nc 1\nc_sum 2\n# TYPE g gauge\ng 1\ng 2\n");
        assert_eq!(
            shape(&exp),
            vec![
                ("c", MetricType::Counter, None, vec!["c"]),
                ("c_sum", MetricType::Untyped, None, vec!["c_sum"]),
                ("g", MetricType::Gauge, None, vec!["g", "g"]),
            ]
        );
    }

    #[test]
    fn help_and_type_in_either_order() {
        let exp =
            parse("# HELP a Ah.\n# TYPE a gauge\na 1\n# TYPE b counter\n# HELP b Bee.\nb 2\n");
        assert_eq!(
            shape(&exp),
            vec![
                ("a", MetricType::Gauge, Some("Ah."), vec!["a"]),
                ("b", MetricType::Counter, Some("Bee."), vec!["b"]),
            ]
        );
        assert_eq!(exp.non_sample_lines(), 4);
    }

    #[test]
    fn metadata_for_another_name_starts_a_new_family() {
        let exp = parse("# HELP a Ah.\n# TYPE b gauge\nb 1\n# HELP c\n");
        assert_eq!(
            shape(&exp),
            vec![
                ("a", MetricType::Untyped, Some("Ah."), vec![]),
                ("b", MetricType::Gauge, None, vec!["b"]),
                ("c", MetricType::Untyped, Some(""), vec![]),
            ]
        );
    }

    #[test]
    fn samples_without_metadata_form_untyped_families() {
        let exp = parse("x 1\nx{a=\"1\"} 2\ny 3\nx 4\n");
        assert_eq!(
            shape(&exp),
            vec![
                ("x", MetricType::Untyped, None, vec!["x", "x"]),
                ("y", MetricType::Untyped, None, vec!["y"]),
                ("x", MetricType::Untyped, None, vec!["x"]),
            ]
        );
    }

    #[test]
    fn non_contiguous_family_gets_a_second_entry() {
        let exp = parse("# TYPE a counter\na 1\n# TYPE b gauge\nb 2\n# TYPE a counter\na 3\n");
        let names: Vec<_> = exp.families().iter().map(|f| (f.name, f.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("a", MetricType::Counter),
                ("b", MetricType::Gauge),
                ("a", MetricType::Counter),
            ]
        );
        assert_eq!(exp.family_samples(&exp.families()[2])[0].value, 3.0);
    }

    #[test]
    fn type_after_samples_starts_a_new_family() {
        let exp = parse("a 1\n# TYPE a counter\na 2\n");
        assert_eq!(
            shape(&exp),
            vec![
                ("a", MetricType::Untyped, None, vec!["a"]),
                ("a", MetricType::Counter, None, vec!["a"]),
            ]
        );
        assert_eq!(exp.error_count(), 0);
    }

    #[test]
    fn duplicate_metadata_is_an_error() {
        let exp = parse("# HELP a one\n# HELP a two\n# TYPE a untyped\n# TYPE a counter\na 1\n");
        assert_eq!(
            exp.errors(),
            &[
                LineError {
                    line: 2,
                    kind: LineErrorKind::DuplicateHelp
                },
                LineError {
                    line: 4,
                    kind: LineErrorKind::DuplicateType
                },
            ]
        );
        assert_eq!(
            shape(&exp),
            vec![("a", MetricType::Untyped, Some("one"), vec!["a"])]
        );
    }

    #[test]
    fn malformed_lines_are_skipped_and_numbered() {
        let exp = parse(
            "# TYPE a counter\na{x=\"1\"} 1\na{x=\"2\" 2\n\na{x=\"3\"} 3\nbad\n# TYPE a nope\n",
        );
        assert_eq!(exp.samples().len(), 2);
        assert_eq!(
            exp.errors(),
            &[
                LineError {
                    line: 3,
                    kind: LineErrorKind::InvalidLabel
                },
                LineError {
                    line: 6,
                    kind: LineErrorKind::MissingValue
                },
                LineError {
                    line: 7,
                    kind: LineErrorKind::InvalidTypeLine
                },
            ]
        );
        assert_eq!(exp.errors()[1].to_string(), "line 6: missing value");
        // The failed line's label must not leak into the next sample.
        let second = exp.samples()[1];
        let labels: Vec<_> = exp.labels(&second).iter().map(|l| l.raw_value()).collect();
        assert_eq!(labels, vec!["3"]);
        assert_eq!(exp.labels.len(), 2);
        // Both good samples stay in the same family despite the bad line between them.
        assert_eq!(exp.families().len(), 1);
        assert_eq!(exp.family_samples(&exp.families()[0]).len(), 2);
    }

    #[test]
    fn crlf_and_missing_final_newline() {
        let exp = parse("# TYPE a gauge\r\na{x=\"y\"} 1 5\r\n\r\na 2");
        assert_eq!(exp.error_count(), 0);
        assert_eq!(exp.samples().len(), 2);
        assert_eq!(exp.samples()[0].timestamp_ms, Some(5));
        assert_eq!(exp.samples()[1].value, 2.0);
        assert_eq!(exp.families()[0].kind, MetricType::Gauge);
        assert_eq!(exp.non_sample_lines(), 2);
    }

    #[test]
    fn stray_carriage_return_is_an_error() {
        let exp = parse("a 1\r\r\n");
        assert_eq!(exp.errors()[0].kind, LineErrorKind::InvalidValue);
    }

    #[test]
    fn empty_input() {
        let exp = parse("");
        assert!(exp.families().is_empty() && exp.samples().is_empty());
        assert_eq!(exp.error_count() + exp.non_sample_lines(), 0);
    }

    #[test]
    fn parse_into_appends_and_restarts_line_numbers() {
        let first = String::from("# TYPE a counter\na 1\n");
        let second = String::from("a 2\nbad\n");
        let mut exp = Exposition::default();
        parse_into(&first, &mut exp);
        parse_into(&second, &mut exp);
        // The second payload does not continue the first one's family.
        assert_eq!(exp.families().len(), 2);
        assert_eq!(exp.families()[1].kind, MetricType::Untyped);
        assert_eq!(exp.samples().len(), 2);
        assert_eq!(exp.errors()[0].line, 2);
        let exp = exp.recycle();
        let mut exp = exp;
        parse_into(&second, &mut exp);
        assert_eq!(exp.samples().len(), 1);
        assert_eq!(exp.error_count(), 1);
    }
}
