//! Label matchers, as in Alertmanager: `name="value"`, `name!="value"`, `name=~"regex"`,
//! `name!~"regex"`. Used by routes, inhibition rules and silences.
//!
//! Regular expressions are anchored (`^(?:re)$`), as in Prometheus, so `rule=~"quorum.*"`
//! means "starts with quorum", not "contains". A missing label matches as the empty
//! string, so `severity!="critical"` matches alerts without a severity.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Labels;

/// How a matcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One label matcher. Serialized as its text form (`cluster="prod"`).
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
    /// Value or regular expression.
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

/// A matcher that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid matcher {input:?}: {reason}")]
pub struct MatcherError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Matcher {
    /// A matcher from its parts; fails on an invalid label name or regular expression.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, MatcherError> {
        let err = |reason: String| MatcherError {
            input: format!("{name}{}{value:?}", op.as_str()),
            reason,
        };
        let valid_name = !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid_name {
            return Err(err(
                "a label name is letters, digits and '_', not starting with a digit".into(),
            ));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                Regex::new(&format!("^(?:{value})$"))
                    .map_err(|e| err(format!("invalid regular expression: {e}")))?,
            ),
            _ => None,
        };
        Ok(Self {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            regex,
        })
    }

    /// Parses `name="value"` (also `=~`, `!=`, `!~`; the value may be unquoted when it
    /// has no spaces, commas or quotes).
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let input = text.trim();
        let err = |reason: &str| MatcherError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let at = input
            .find(['=', '!'])
            .ok_or_else(|| err("expected name=\"value\", name!=, name=~ or name!~"))?;
        let name = input[..at].trim();
        let rest = &input[at..];
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Equal, v)
        } else {
            return Err(err("expected =, !=, =~ or !~ after the label name"));
        };
        let value = value.trim();
        let value = if value.starts_with('"') {
            serde_json::from_str::<String>(value)
                .map_err(|_| err("the value is not a valid double-quoted string"))?
        } else {
            value.to_owned()
        };
        Self::new(name, op, &value)
    }

    /// Whether `labels` satisfy this matcher (a missing label is the empty string).
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            // `new` always compiles the regex for regex operators.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

/// Whether every matcher matches (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // JSON string escaping is the same as Alertmanager's quoted values.
        let quoted = serde_json::to_string(&self.value).map_err(|_| fmt::Error)?;
        write!(f, "{}{}{}", self.name, self.op.as_str(), quoted)
    }
}

impl Serialize for Matcher {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Matcher::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;

    #[test]
    fn parses_every_operator_and_matches() {
        let l = labels(&[("cluster", "prod"), ("rule", "quorum_lost")]);
        for (text, want) in [
            (r#"cluster="prod""#, true),
            (r#"cluster = "dev""#, false),
            ("cluster=prod", true),
            (r#"cluster!="prod""#, false),
            (r#"rule=~"quorum_.*""#, true),
            (r#"rule=~"quorum""#, false), // anchored
            (r#"rule!~"no_.*""#, true),
            (r#"severity!="critical""#, true), // missing label is ""
            (r#"severity="""#, true),
        ] {
            let m = Matcher::parse(text).unwrap();
            assert_eq!(m.matches(&l), want, "{text}");
            // The text form parses back to the same matcher.
            assert_eq!(Matcher::parse(&m.to_string()).unwrap(), m, "{text}");
        }
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        for (text, reason) in [
            ("cluster", "expected"),
            ("=\"x\"", "label name"),
            ("9lives=\"x\"", "label name"),
            (r#"rule=~"(""#, "regular expression"),
            (r#"rule="unterminated"#, "double-quoted"),
        ] {
            let e = Matcher::parse(text).unwrap_err();
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let m: Vec<Matcher> = serde_json::from_str(r#"["a=\"1\"", "b=~\"x|y\""]"#).unwrap();
        assert!(all_match(&m, &labels(&[("a", "1"), ("b", "y")])));
        assert!(!all_match(&m, &labels(&[("a", "1"), ("b", "z")])));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"["a=\"1\"","b=~\"x|y\""]"#
        );
        assert!(serde_json::from_str::<Matcher>(r#""a~1""#).is_err());
    }
}
