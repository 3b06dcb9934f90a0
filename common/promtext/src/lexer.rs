//! Lexing of a single line.
//!
//! Works on bytes with explicit indices. Every index used to slice the `&str`
//! is 0, the line length, or the position of (or just after) an ASCII byte
//! found by the scan, so slices always fall on char boundaries and non-ASCII
//! text can only ever appear inside label values and HELP text, where it is
//! passed through untouched.

use memchr::memchr2;

use crate::error::LineErrorKind;
use crate::exposition::{Label, MetricType, Sample};
use crate::value::{parse_timestamp, parse_value};

/// What a well-formed line contains.
#[derive(Debug, PartialEq)]
pub(crate) enum Line<'a> {
    /// Blank line or a comment other than HELP/TYPE.
    Ignored,
    /// `# HELP name text`.
    Help { name: &'a str, text: &'a str },
    /// `# TYPE name type`.
    Type { name: &'a str, kind: MetricType },
    /// A sample whose labels were appended to the label vector.
    Sample {
        sample: Sample<'a>,
        /// Whether the sample name starts with the `known_name` given to
        /// [`lex_line`], so that the caller need not compare them again.
        extends_known: bool,
    },
}

const METRIC_START: u8 = 1;
const METRIC_CONT: u8 = 2;
const LABEL_START: u8 = 4;
const LABEL_CONT: u8 = 8;

/// Character classes of the name grammars, one table lookup per byte.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        table[i] = if c.is_ascii_alphabetic() || c == b'_' {
            METRIC_START | METRIC_CONT | LABEL_START | LABEL_CONT
        } else if c.is_ascii_digit() {
            METRIC_CONT | LABEL_CONT
        } else if c == b':' {
            METRIC_START | METRIC_CONT
        } else {
            0
        };
        i += 1;
    }
    table
};

#[inline]
fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

#[inline]
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| is_blank(c)) {
        i += 1;
    }
    i
}

/// End of the whitespace-delimited token starting at `i`.
#[inline]
fn token_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| !is_blank(c)) {
        i += 1;
    }
    i
}

/// End of the name starting at `i`, or `None` if no name starts there.
#[inline]
fn name_end(b: &[u8], i: usize, start: u8, cont: u8) -> Option<usize> {
    let first = *b.get(i)?;
    if CLASS[usize::from(first)] & start == 0 {
        return None;
    }
    Some(name_rest_end(b, i + 1, cont))
}

/// End of the run of name characters starting at `i`.
#[inline]
fn name_rest_end(b: &[u8], i: usize, cont: u8) -> usize {
    let rest = b.get(i..).unwrap_or(&[]);
    let len = rest
        .iter()
        .position(|&c| CLASS[usize::from(c)] & cont == 0)
        .unwrap_or(rest.len());
    i + len
}

/// Lexes one line (without its line terminator). Labels of a sample are
/// appended to `labels`; on error some may have been appended, and the caller
/// truncates them away.
///
/// `known_name` must be empty or a valid metric name (in practice the current
/// family's). Sample names usually start with it, and comparing it with
/// `memcmp` is much cheaper than classifying each of its bytes again.
pub(crate) fn lex_line<'a>(
    line: &'a str,
    labels: &mut Vec<Label<'a>>,
    known_name: &str,
) -> Result<Line<'a>, LineErrorKind> {
    let b = line.as_bytes();
    let i = skip_blanks(b, 0);
    match b.get(i) {
        None => Ok(Line::Ignored),
        Some(b'#') => lex_comment(line, i + 1),
        Some(_) => lex_sample(line, i, labels, known_name),
    }
}

/// Lexes the part of a comment line after `#`.
fn lex_comment(line: &str, i: usize) -> Result<Line<'_>, LineErrorKind> {
    let b = line.as_bytes();
    let kw_start = skip_blanks(b, i);
    let kw_end = token_end(b, kw_start);
    let is_help = match &b[kw_start..kw_end] {
        b"HELP" => true,
        b"TYPE" => false,
        _ => return Ok(Line::Ignored),
    };
    let bad = if is_help {
        LineErrorKind::InvalidHelpLine
    } else {
        LineErrorKind::InvalidTypeLine
    };
    let name_start = skip_blanks(b, kw_end);
    let name_stop = name_end(b, name_start, METRIC_START, METRIC_CONT).ok_or(bad)?;
    let name = &line[name_start..name_stop];
    match b.get(name_stop) {
        None if is_help => return Ok(Line::Help { name, text: "" }),
        Some(&c) if is_blank(c) => {}
        _ => return Err(bad),
    }
    let rest = skip_blanks(b, name_stop);
    if is_help {
        return Ok(Line::Help {
            name,
            text: &line[rest..],
        });
    }
    let word_end = token_end(b, rest);
    let kind = MetricType::from_type_word(&line[rest..word_end]).ok_or(bad)?;
    if skip_blanks(b, word_end) != b.len() {
        return Err(bad);
    }
    Ok(Line::Type { name, kind })
}

/// Lexes `name{labels} value [timestamp]` starting at `start`.
fn lex_sample<'a>(
    line: &'a str,
    start: usize,
    labels: &mut Vec<Label<'a>>,
    known_name: &str,
) -> Result<Line<'a>, LineErrorKind> {
    let b = line.as_bytes();
    let after_start = b.get(start..).unwrap_or(&[]);
    let extends_known = !known_name.is_empty() && after_start.starts_with(known_name.as_bytes());
    let name_stop = if extends_known {
        name_rest_end(b, start + known_name.len(), METRIC_CONT)
    } else {
        name_end(b, start, METRIC_START, METRIC_CONT).ok_or(LineErrorKind::InvalidMetricName)?
    };
    let name = &line[start..name_stop];
    let labels_start = labels.len();
    let mut i = skip_blanks(b, name_stop);
    match b.get(i) {
        Some(b'{') => i = skip_blanks(b, lex_labels(line, i + 1, labels)?),
        // The name must end at a blank or `{`, otherwise `foo-bar 1` would be
        // read as `foo` with value `-bar`.
        Some(_) if i == name_stop => return Err(LineErrorKind::InvalidMetricName),
        _ => {}
    }
    if i >= b.len() {
        return Err(LineErrorKind::MissingValue);
    }
    let value_end = token_end(b, i);
    let value = parse_value(&line[i..value_end]).ok_or(LineErrorKind::InvalidValue)?;
    i = skip_blanks(b, value_end);
    let timestamp_ms = if i < b.len() {
        let ts_end = token_end(b, i);
        let ts = parse_timestamp(&line[i..ts_end]).ok_or(LineErrorKind::InvalidTimestamp)?;
        if skip_blanks(b, ts_end) != b.len() {
            return Err(LineErrorKind::TrailingGarbage);
        }
        Some(ts)
    } else {
        None
    };
    Ok(Line::Sample {
        sample: Sample {
            name,
            value,
            timestamp_ms,
            labels_start,
            labels_end: labels.len(),
        },
        extends_known,
    })
}

/// Lexes the label set from just after `{`; returns the index after `}`.
fn lex_labels<'a>(
    line: &'a str,
    mut i: usize,
    labels: &mut Vec<Label<'a>>,
) -> Result<usize, LineErrorKind> {
    let b = line.as_bytes();
    let first = labels.len();
    loop {
        i = skip_blanks(b, i);
        match b.get(i) {
            None => return Err(LineErrorKind::UnterminatedLabels),
            // Covers `{}` and a trailing comma.
            Some(b'}') => return Ok(i + 1),
            Some(_) => {}
        }
        let name_stop =
            name_end(b, i, LABEL_START, LABEL_CONT).ok_or(LineErrorKind::InvalidLabel)?;
        let name = &line[i..name_stop];
        i = skip_blanks(b, name_stop);
        expect(b, i, b'=')?;
        i = skip_blanks(b, i + 1);
        expect(b, i, b'"')?;
        let value_start = i + 1;
        let (value_end, escaped) = scan_label_value(b, value_start)?;
        if labels
            .get(first..)
            .unwrap_or(&[])
            .iter()
            .any(|l| l.name == name)
        {
            return Err(LineErrorKind::DuplicateLabel);
        }
        labels.push(Label {
            name,
            raw: &line[value_start..value_end],
            escaped,
        });
        i = skip_blanks(b, value_end + 1);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            None => return Err(LineErrorKind::UnterminatedLabels),
            Some(_) => return Err(LineErrorKind::InvalidLabel),
        }
    }
}

#[inline]
fn expect(b: &[u8], i: usize, wanted: u8) -> Result<(), LineErrorKind> {
    match b.get(i) {
        Some(&c) if c == wanted => Ok(()),
        Some(_) => Err(LineErrorKind::InvalidLabel),
        None => Err(LineErrorKind::UnterminatedLabels),
    }
}

/// How many bytes of a label value are searched a word at a time before
/// handing over to `memchr2`, whose setup only pays off on long values.
const SHORT_VALUE: usize = 64;

/// Finds the closing quote of a label value starting at `i`; returns its
/// index and whether the value contains escapes.
fn scan_label_value(b: &[u8], mut i: usize) -> Result<(usize, bool), LineErrorKind> {
    let mut escaped = false;
    loop {
        let rest = b.get(i..).unwrap_or(&[]);
        let short = rest.get(..SHORT_VALUE).unwrap_or(rest);
        let found = match find_quote_or_backslash(short) {
            Some(offset) => Some(offset),
            None => memchr2(b'"', b'\\', &rest[short.len()..]).map(|o| o + short.len()),
        };
        let Some(offset) = found else {
            return Err(LineErrorKind::UnterminatedLabelValue);
        };
        let j = i + offset;
        if b[j] == b'"' {
            return Ok((j, escaped));
        }
        match b.get(j + 1) {
            Some(b'\\' | b'"' | b'n') => {
                escaped = true;
                i = j + 2;
            }
            Some(_) => return Err(LineErrorKind::InvalidEscape),
            None => return Err(LineErrorKind::UnterminatedLabelValue),
        }
    }
}

/// Position of the first `"` or `\\` in `s`, eight bytes per step.
///
/// Label values are mostly a few to a few dozen bytes long: too short for a
/// vectorised search to amortise its setup, too long for a byte loop to be
/// cheap.
fn find_quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    /// High bit set in each byte of `x` that is zero. Bytes above the first
    /// zero byte may be flagged wrongly, which is harmless because only the
    /// lowest flag (the first byte in memory order) is used.
    fn zero_bytes(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGHS
    }
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let word = u64::from_le_bytes(bytes);
        let hits = zero_bytes(word ^ QUOTES) | zero_bytes(word ^ BACKSLASHES);
        if hits != 0 {
            return Some(base + (hits.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|p| base + p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn word_search_matches_byte_search(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(b'"' ^ 0x80), Just(0u8), any::<u8>()],
                0..40,
            )
        ) {
            let expected = bytes.iter().position(|&c| c == b'"' || c == b'\\');
            prop_assert_eq!(find_quote_or_backslash(&bytes), expected);
        }
    }

    /// (line, name, labels, value, timestamp).
    type SampleCase = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        f64,
        Option<i64>,
    );

    /// Known names the parser may pass; none of them may change a result.
    const HINTS: [&str; 4] = ["", "f", "foo", "a:b"];

    /// Lexes a sample line and returns (name, [(label, raw value)], value, timestamp).
    fn sample(line: &str, hint: &str) -> (String, Vec<(String, String)>, f64, Option<i64>) {
        let mut labels = Vec::new();
        match lex_line(line, &mut labels, hint) {
            Ok(Line::Sample {
                sample: s,
                extends_known,
            }) => {
                assert_eq!(
                    extends_known,
                    !hint.is_empty() && line.trim_start().starts_with(hint)
                );
                (
                    s.name.to_string(),
                    labels[s.labels_start..s.labels_end]
                        .iter()
                        .map(|l| (l.name.to_string(), l.raw.to_string()))
                        .collect(),
                    s.value,
                    s.timestamp_ms,
                )
            }
            other => panic!("{line:?}: expected a sample, got {other:?}"),
        }
    }

    fn lv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn valid_samples() {
        let cases: &[SampleCase] = &[
            ("foo 1", "foo", &[], 1.0, None),
            ("foo\t1", "foo", &[], 1.0, None),
            ("  foo   1  ", "foo", &[], 1.0, None),
            ("a:b_c:d9 2.5", "a:b_c:d9", &[], 2.5, None),
            (":x 1", ":x", &[], 1.0, None),
            ("_x 1", "_x", &[], 1.0, None),
            (
                "foo 1 1395066363000",
                "foo",
                &[],
                1.0,
                Some(1_395_066_363_000),
            ),
            ("foo 1 -5", "foo", &[], 1.0, Some(-5)),
            ("foo 1 7 \t", "foo", &[], 1.0, Some(7)),
            ("foo{} 3", "foo", &[], 3.0, None),
            ("foo { } 3", "foo", &[], 3.0, None),
            ("foo{a=\"b\"} 3", "foo", &[("a", "b")], 3.0, None),
            ("foo{a=\"b\",} 3", "foo", &[("a", "b")], 3.0, None),
            ("foo{a=\"b\"}3", "foo", &[("a", "b")], 3.0, None),
            (
                "foo{ a = \"b\" , c=\"d\" , } 3",
                "foo",
                &[("a", "b"), ("c", "d")],
                3.0,
                None,
            ),
            ("foo{_a1=\"\"} 3", "foo", &[("_a1", "")], 3.0, None),
            (
                r#"foo{path="C:\\DIR",msg="say \"hi\"\nbye"} 1"#,
                "foo",
                &[("path", r"C:\\DIR"), ("msg", r#"say \"hi\"\nbye"#)],
                1.0,
                None,
            ),
            (
                "foo{a=\"},{=\\\"#\",b=\"日本語 ✓\"} 1",
                "foo",
                &[("a", "},{=\\\"#"), ("b", "日本語 ✓")],
                1.0,
                None,
            ),
            ("foo 1e3", "foo", &[], 1000.0, None),
            (
                r#"foo{long="0123456789012345678901234567890123456789\"x",b="é"} 1"#,
                "foo",
                &[
                    ("long", r#"0123456789012345678901234567890123456789\"x"#),
                    ("b", "é"),
                ],
                1.0,
                None,
            ),
            ("foo -1.5E-2", "foo", &[], -0.015, None),
            ("foo +Inf", "foo", &[], f64::INFINITY, None),
            ("foo -Inf", "foo", &[], f64::NEG_INFINITY, None),
            ("foo Inf", "foo", &[], f64::INFINITY, None),
        ];
        for hint in HINTS {
            for &(line, name, labels, value, ts) in cases {
                assert_eq!(
                    sample(line, hint),
                    (name.to_string(), lv(labels), value, ts),
                    "line {line:?}, hint {hint:?}"
                );
            }
        }
        assert!(sample("foo NaN", "foo").2.is_nan());
        assert_eq!(sample("foobar 1", "foo").0, "foobar");
        assert_eq!(sample("foo_bucket 1", "foo").0, "foo_bucket");
    }

    #[test]
    fn invalid_lines() {
        use LineErrorKind::*;
        let cases: &[(&str, LineErrorKind)] = &[
            ("1foo 1", InvalidMetricName),
            ("foo- 1", InvalidMetricName),
            ("foo\u{e9} 1", InvalidMetricName),
            ("foo-bar 1", InvalidMetricName),
            ("foo\"x 1", InvalidMetricName),
            ("{a=\"b\"} 1", InvalidMetricName),
            ("é 1", InvalidMetricName),
            ("foo{a=\"b\" 1", InvalidLabel),
            ("foo{a=\"b\"", UnterminatedLabels),
            ("foo{a=\"b\",", UnterminatedLabels),
            ("foo{a", UnterminatedLabels),
            ("foo{a=", UnterminatedLabels),
            ("foo{", UnterminatedLabels),
            ("foo{a=\"b} 1", UnterminatedLabelValue),
            (
                "foo{a=\"0123456789012345678901234567890123456789} 1",
                UnterminatedLabelValue,
            ),
            (
                "foo{a=\"0123456789012345678901234567890123456789\\q\"} 1",
                InvalidEscape,
            ),
            ("foo{a=\"b\\", UnterminatedLabelValue),
            ("foo{a=\"b\\\"} 1", UnterminatedLabelValue),
            ("foo{1a=\"b\"} 1", InvalidLabel),
            ("foo{a:b=\"b\"} 1", InvalidLabel),
            ("foo{a-b=\"b\"} 1", InvalidLabel),
            ("foo{a=b} 1", InvalidLabel),
            ("foo{a:\"b\"} 1", InvalidLabel),
            ("foo{a=\"b\" c=\"d\"} 1", InvalidLabel),
            ("foo{,} 1", InvalidLabel),
            ("foo{a=\"b\",,c=\"d\"} 1", InvalidLabel),
            ("foo{a=\"\\t\"} 1", InvalidEscape),
            ("foo{a=\"\\x\"} 1", InvalidEscape),
            ("foo{a=\"1\",a=\"2\"} 1", DuplicateLabel),
            ("foo{a=\"1\",b=\"\",a=\"1\"} 1", DuplicateLabel),
            ("foo", MissingValue),
            ("foo   ", MissingValue),
            ("foo{a=\"b\"}", MissingValue),
            ("foo{a=\"b\"}  \t", MissingValue),
            ("foo bar", InvalidValue),
            ("foo 1,5", InvalidValue),
            ("foo 0x10", InvalidValue),
            ("foo 1.2.3", InvalidValue),
            ("foo{a=\"b\"}x", InvalidValue),
            ("foo 1 abc", InvalidTimestamp),
            ("foo 1 1.5", InvalidTimestamp),
            ("foo 1 99999999999999999999", InvalidTimestamp),
            ("foo 1 2 3", TrailingGarbage),
            ("foo 1 2 #", TrailingGarbage),
            ("# HELP", InvalidHelpLine),
            ("# HELP   ", InvalidHelpLine),
            ("# HELP 1foo text", InvalidHelpLine),
            ("# HELP foo{ text", InvalidHelpLine),
            ("# TYPE", InvalidTypeLine),
            ("# TYPE foo", InvalidTypeLine),
            ("# TYPE foo  ", InvalidTypeLine),
            ("# TYPE foo histogramm", InvalidTypeLine),
            ("# TYPE foo counter extra", InvalidTypeLine),
            ("# TYPE foo-bar counter", InvalidTypeLine),
            ("# TYPE 9foo counter", InvalidTypeLine),
        ];
        for hint in HINTS {
            for &(line, kind) in cases {
                let mut labels = Vec::new();
                assert_eq!(
                    lex_line(line, &mut labels, hint),
                    Err(kind),
                    "line {line:?}, hint {hint:?}"
                );
            }
        }
    }

    #[test]
    fn comments_and_blanks() {
        let cases: &[(&str, Line<'_>)] = &[
            ("", Line::Ignored),
            ("   \t ", Line::Ignored),
            ("#", Line::Ignored),
            ("# just a comment", Line::Ignored),
            ("#HELPER foo", Line::Ignored),
            ("# help foo lowercase is a plain comment", Line::Ignored),
            (
                "# HELP foo Some text.",
                Line::Help {
                    name: "foo",
                    text: "Some text.",
                },
            ),
            (
                "  #\tHELP  foo   text with  spaces \\n and \\\\ ",
                Line::Help {
                    name: "foo",
                    text: "text with  spaces \\n and \\\\ ",
                },
            ),
            (
                "#HELP foo x",
                Line::Help {
                    name: "foo",
                    text: "x",
                },
            ),
            (
                "# HELP foo",
                Line::Help {
                    name: "foo",
                    text: "",
                },
            ),
            (
                "# HELP foo ",
                Line::Help {
                    name: "foo",
                    text: "",
                },
            ),
            (
                "# HELP a:b ünïcödé",
                Line::Help {
                    name: "a:b",
                    text: "ünïcödé",
                },
            ),
            (
                "# TYPE foo counter",
                Line::Type {
                    name: "foo",
                    kind: MetricType::Counter,
                },
            ),
            (
                "# TYPE foo GAUGE  ",
                Line::Type {
                    name: "foo",
                    kind: MetricType::Gauge,
                },
            ),
            (
                "# TYPE foo\thistogram",
                Line::Type {
                    name: "foo",
                    kind: MetricType::Histogram,
                },
            ),
            (
                "# TYPE foo summary",
                Line::Type {
                    name: "foo",
                    kind: MetricType::Summary,
                },
            ),
            (
                "# TYPE foo untyped",
                Line::Type {
                    name: "foo",
                    kind: MetricType::Untyped,
                },
            ),
        ];
        for (line, expected) in cases {
            let mut labels = Vec::new();
            assert_eq!(
                lex_line(line, &mut labels, "").as_ref(),
                Ok(expected),
                "line {line:?}"
            );
            assert!(labels.is_empty());
        }
    }
}
