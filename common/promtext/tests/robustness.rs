//! Totality: no input makes the parser panic, every line is accounted for,
//! and the error list stays bounded.

use etcdmon_promtext::{parse, Exposition, LineErrorKind, MAX_RECORDED_ERRORS};
use proptest::prelude::*;

const ETCD: &str = include_str!("fixtures/etcd-3.4.23.txt");
const FIXTURE_SAMPLES: usize = 1290;

/// Lines as the parser sees them: split on `\n`, a final unterminated line
/// counts, a trailing `\n` does not start another one.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n').map(|l| {
        let l = l.strip_suffix('\n').unwrap_or(l);
        l.strip_suffix('\r').unwrap_or(l)
    })
}

fn is_comment_or_blank(line: &str) -> bool {
    let l = line.trim_start_matches([' ', '\t']);
    l.is_empty() || l.starts_with('#')
}

fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Checks everything that must hold for any input.
fn check_invariants(text: &str, exp: &Exposition<'_>) {
    let total = lines(text).count();
    let comment_like = lines(text).filter(|l| is_comment_or_blank(l)).count();

    // Every line is exactly one of: sample, well-formed non-sample, error.
    assert_eq!(
        exp.samples().len() + exp.error_count() + exp.non_sample_lines(),
        total
    );
    // Independent bounds: samples only come from non-comment lines and
    // non-sample lines only from comment-like lines.
    assert!(exp.samples().len() <= total - comment_like);
    assert!(exp.non_sample_lines() <= comment_like);

    // The error list is bounded, ordered, and points at real lines.
    assert_eq!(
        exp.errors().len(),
        exp.error_count().min(MAX_RECORDED_ERRORS)
    );
    assert!(exp.errors().windows(2).all(|w| w[0].line < w[1].line));
    assert!(exp.errors().iter().all(|e| (1..=total).contains(&e.line)));

    // Families tile the samples and respect the naming rules.
    let mut in_families = 0;
    for f in exp.families() {
        assert!(is_metric_name(f.name), "family {:?}", f.name);
        for s in exp.family_samples(f) {
            assert!(f.owns_sample_name(s.name), "{} in {}", s.name, f.name);
        }
        in_families += exp.family_samples(f).len();
    }
    assert_eq!(in_families, exp.samples().len());

    for s in exp.samples() {
        assert!(is_metric_name(s.name), "sample {:?}", s.name);
        let labels = exp.labels(s);
        for (i, l) in labels.iter().enumerate() {
            assert!(is_label_name(l.name), "label {:?}", l.name);
            assert!(
                labels[..i].iter().all(|p| p.name != l.name),
                "duplicate {}",
                l.name
            );
            let value = l.value();
            assert!(value.len() <= l.raw_value().len());
            assert!(!l.raw_value().contains('\n'));
        }
    }
}

/// A mutation of the fixture at a char boundary.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, char),
    Truncate(usize),
}

/// The char boundary at or before `pos % (len + 1)`.
fn boundary(text: &str, pos: usize) -> usize {
    let mut p = pos % (text.len() + 1);
    while !text.is_char_boundary(p) {
        p -= 1;
    }
    p
}

fn apply(text: &mut String, edit: &Edit) {
    match *edit {
        Edit::Delete(pos) => {
            let p = boundary(text, pos);
            if p < text.len() {
                text.remove(p);
            }
        }
        Edit::Insert(pos, c) => {
            let p = boundary(text, pos);
            text.insert(p, c);
        }
        Edit::Truncate(pos) => {
            let p = boundary(text, pos);
            text.truncate(p);
        }
    }
}

/// Characters that matter to the grammar, plus some that do not.
fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            '\n', '\r', ' ', '\t', '{', '}', '"', '\\', ',', '=', '#', '.', '-', '+', 'e', '_',
            ':', '0', '9', 'a', 'n',
        ]),
        1 => any::<char>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => any::<usize>().prop_map(Edit::Delete),
        4 => (any::<usize>(), interesting_char()).prop_map(|(p, c)| Edit::Insert(p, c)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        let exp = parse(&text);
        check_invariants(&text, &exp);
    }

    #[test]
    fn grammar_soup_never_panics(
        text in "[a-z_:{}=\",#\\\\ \t\n\r.0-9+eE\\-Iinf\u{e9}\u{1F600}]{0,400}"
    ) {
        let exp = parse(&text);
        check_invariants(&text, &exp);
    }

    #[test]
    fn fixture_lines_with_arbitrary_lines_mixed_in(
        picks in proptest::collection::vec((0usize..1544, "\\PC{0,60}"), 1..40)
    ) {
        let fixture_lines: Vec<&str> = ETCD.lines().collect();
        let mut text = String::new();
        for (i, junk) in &picks {
            text.push_str(fixture_lines[i % fixture_lines.len()]);
            text.push('\n');
            text.push_str(junk);
            text.push('\n');
        }
        let exp = parse(&text);
        check_invariants(&text, &exp);
    }
}

proptest! {
    // Each case parses the whole 150 KB fixture in a debug build.
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn mutated_fixture_never_panics(edits in proptest::collection::vec(edit(), 1..8)) {
        let mut text = ETCD.to_string();
        for e in &edits {
            apply(&mut text, e);
        }
        let exp = parse(&text);
        check_invariants(&text, &exp);
        // An edit touches at most two original lines (deleting a newline
        // joins two, inserting one splits one), so damage stays local.
        if !edits.iter().any(|e| matches!(e, Edit::Truncate(_))) {
            prop_assert!(exp.error_count() <= 2 * edits.len());
            prop_assert!(exp.samples().len() + 2 * edits.len() >= FIXTURE_SAMPLES);
        }
    }
}

/// Deterministic pseudo-random text over an alphabet heavy in syntax characters.
fn pseudo_random_text(len: usize, mut seed: u64) -> String {
    const ALPHABET: &[char] = &[
        '\n', ' ', '\t', '{', '}', '"', '\\', ',', '=', '#', '.', '-', '+', 'e', '_', ':', '0',
        '1', 'a', 'z', '\u{0}', '\u{7f}', '\u{fffd}', 'é', '\r',
    ];
    let mut s = String::with_capacity(len);
    while s.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let c = if seed.is_multiple_of(5) {
            char::from_u32((seed >> 8) as u32 % 0x11_0000).unwrap_or('?')
        } else {
            ALPHABET[(seed >> 8) as usize % ALPHABET.len()]
        };
        s.push(c);
    }
    s
}

#[test]
fn binary_like_text() {
    let every_byte: String = (0u8..=255).map(char::from).cycle().take(100_000).collect();
    let exp = parse(&every_byte);
    check_invariants(&every_byte, &exp);
    assert!(exp.error_count() > 0);

    for seed in 1..=20 {
        let text = pseudo_random_text(50_000, seed);
        let exp = parse(&text);
        check_invariants(&text, &exp);
        assert!(exp.errors().len() <= MAX_RECORDED_ERRORS);
    }
}

#[test]
fn one_megabyte_lines() {
    let mb = 1 << 20;
    let long_value = "x".repeat(mb);

    let valid = format!("big{{v=\"{long_value}\"}} 1\nafter 2\n");
    let exp = parse(&valid);
    check_invariants(&valid, &exp);
    assert_eq!(exp.error_count(), 0);
    assert_eq!(exp.labels(&exp.samples()[0])[0].raw_value().len(), mb);
    assert_eq!(exp.samples()[1].name, "after");

    let unterminated = format!("big{{v=\"{long_value} 1\nafter 2\n");
    let exp = parse(&unterminated);
    check_invariants(&unterminated, &exp);
    assert_eq!(exp.errors()[0].kind, LineErrorKind::UnterminatedLabelValue);
    assert_eq!(exp.samples().len(), 1);

    for (line, kind) in [
        ("a".repeat(mb), LineErrorKind::MissingValue),
        ("{".repeat(mb), LineErrorKind::InvalidMetricName),
        (format!("a{}", "{".repeat(mb)), LineErrorKind::InvalidLabel),
        (
            format!("a 1 2{}", " x".repeat(mb / 2)),
            LineErrorKind::TrailingGarbage,
        ),
        (format!("a {}", "9".repeat(mb)), LineErrorKind::InvalidValue),
    ] {
        let text = format!("{line}\nafter 2\n");
        let exp = parse(&text);
        check_invariants(&text, &exp);
        assert_eq!(exp.errors()[0].kind, kind);
        assert_eq!(exp.samples().len(), 1);
    }

    let long_help = format!("# HELP a {long_value}\n# TYPE a gauge\na 1\n");
    let exp = parse(&long_help);
    assert_eq!(exp.error_count(), 0);
    assert_eq!(exp.families()[0].help.map(str::len), Some(mb));
}

#[test]
fn unbalanced_braces_and_quotes() {
    let cases = [
        ("foo{{a=\"b\"}} 1", LineErrorKind::InvalidLabel),
        ("foo{a=\"b\"}} 1", LineErrorKind::InvalidValue),
        ("foo} 1", LineErrorKind::InvalidMetricName),
        ("foo{a=\"b\"", LineErrorKind::UnterminatedLabels),
        ("foo{a=\"b\"} {c=\"d\"} 1", LineErrorKind::InvalidValue),
        ("foo{a=\"b} 1", LineErrorKind::UnterminatedLabelValue),
        ("foo{a=\"b\\\"} 1", LineErrorKind::UnterminatedLabelValue),
        ("foo{a=\"\"\"} 1", LineErrorKind::InvalidLabel),
        ("foo{a=\"b\\", LineErrorKind::UnterminatedLabelValue),
        ("foo{\"a\"=\"b\"} 1", LineErrorKind::InvalidLabel),
    ];
    for (line, kind) in cases {
        let text = format!("ok 1\n{line}\nok 2\n");
        let exp = parse(&text);
        check_invariants(&text, &exp);
        assert_eq!(exp.error_count(), 1, "{line:?}");
        assert_eq!(exp.errors()[0].line, 2);
        assert_eq!(exp.errors()[0].kind, kind, "{line:?}");
        let values: Vec<f64> = exp.samples().iter().map(|s| s.value).collect();
        assert_eq!(values, [1.0, 2.0]);
    }
    // A quote in HELP text is just text.
    let exp = parse("# HELP foo \"unterminated {\nfoo 1\n");
    assert_eq!(exp.error_count(), 0);
}

#[test]
fn error_list_is_bounded() {
    let text = "bad\n".repeat(10_000) + "good 1\n";
    let exp = parse(&text);
    check_invariants(&text, &exp);
    assert_eq!(exp.error_count(), 10_000);
    assert_eq!(exp.errors().len(), MAX_RECORDED_ERRORS);
    let lines: Vec<usize> = exp.errors().iter().map(|e| e.line).collect();
    assert_eq!(lines, (1..=MAX_RECORDED_ERRORS).collect::<Vec<_>>());
    assert_eq!(exp.samples().len(), 1);
    assert_eq!(exp.samples()[0].name, "good");
}

#[test]
fn every_truncation_of_a_fixture_prefix() {
    // Truncating mid-line must cost at most that one line.
    let head: String = ETCD.lines().take(40).collect::<Vec<_>>().join("\n");
    let full = parse(&head).samples().len();
    for end in (0..=head.len()).filter(|&i| head.is_char_boundary(i)) {
        let text = &head[..end];
        let exp = parse(text);
        check_invariants(text, &exp);
        assert!(exp.error_count() <= 1, "cut at {end}");
        assert!(exp.samples().len() <= full);
    }
}
