//! Per-line parse errors.

use std::fmt;

/// Why a line was rejected.
///
/// Each malformed line yields exactly one kind: the first problem found while
/// lexing it left to right. The line is then skipped as a whole, so a sample
/// is never half-recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineErrorKind {
    /// The metric name is empty, starts with a digit, or contains a character
    /// outside `[a-zA-Z0-9_:]`.
    InvalidMetricName,
    /// The label set ends before its closing `}`.
    UnterminatedLabels,
    /// A label value has no closing `"` on this line.
    UnterminatedLabelValue,
    /// A label is malformed: bad name, missing `=`, unquoted value, or a
    /// missing `,` between labels.
    InvalidLabel,
    /// A label value contains a backslash escape other than `\\`, `\"` or `\n`.
    InvalidEscape,
    /// The same label name appears twice in one sample.
    DuplicateLabel,
    /// The sample has a name (and maybe labels) but no value.
    MissingValue,
    /// The value is not a float, `NaN`, `+Inf`, `-Inf` or `Inf`.
    InvalidValue,
    /// The token after the value is not an integer millisecond timestamp.
    InvalidTimestamp,
    /// Something follows the timestamp.
    TrailingGarbage,
    /// A `# HELP` line without a valid metric name.
    InvalidHelpLine,
    /// A `# TYPE` line without a valid metric name, with a missing or unknown
    /// type word, or with text after the type word.
    InvalidTypeLine,
    /// A second `# HELP` line for a family that already has one and no samples yet.
    DuplicateHelp,
    /// A second `# TYPE` line for a family that already has one and no samples yet.
    DuplicateType,
}

impl LineErrorKind {
    /// A short lowercase description, as used by `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            LineErrorKind::InvalidMetricName => "invalid metric name",
            LineErrorKind::UnterminatedLabels => "unterminated label set",
            LineErrorKind::UnterminatedLabelValue => "unterminated label value",
            LineErrorKind::InvalidLabel => "invalid label",
            LineErrorKind::InvalidEscape => "invalid escape sequence in label value",
            LineErrorKind::DuplicateLabel => "duplicate label name",
            LineErrorKind::MissingValue => "missing value",
            LineErrorKind::InvalidValue => "invalid value",
            LineErrorKind::InvalidTimestamp => "invalid timestamp",
            LineErrorKind::TrailingGarbage => "trailing garbage after timestamp",
            LineErrorKind::InvalidHelpLine => "invalid HELP line",
            LineErrorKind::InvalidTypeLine => "invalid TYPE line",
            LineErrorKind::DuplicateHelp => "duplicate HELP line",
            LineErrorKind::DuplicateType => "duplicate TYPE line",
        }
    }
}

impl fmt::Display for LineErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A malformed line that was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LineError {
    /// 1-based line number within the text given to [`parse`](crate::parse) or
    /// [`parse_into`](crate::parse_into).
    pub line: usize,
    /// What was wrong with it.
    pub kind: LineErrorKind,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind)
    }
}

impl std::error::Error for LineError {}
