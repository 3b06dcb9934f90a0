//! Sample values and timestamps.
//!
//! Most values in real payloads are small integers or short decimals such as
//! `0.000108646` or `1.5812e-05`. Those take a fast path that is exact: when
//! the decimal mantissa fits in 53 bits and the power of ten is at most 22,
//! both are exactly representable as `f64`, so a single IEEE multiply or
//! divide yields the correctly rounded result, which is what `str::parse`
//! would return (Clinger's fast path). Everything else, including `NaN`,
//! `+Inf` and long mantissas, goes to `str::parse::<f64>`.

/// Powers of ten that are exact in `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Largest mantissa for which `mantissa as f64` is exact.
const MAX_EXACT_MANTISSA: u64 = 1 << 53;

/// Parses a sample value the way Go's `strconv.ParseFloat` does for what
/// exporters emit: decimal floats with optional exponent, `NaN`, `Inf`,
/// `+Inf`, `-Inf` (any case).
pub(crate) fn parse_value(token: &str) -> Option<f64> {
    match fast_decimal(token.as_bytes()) {
        Some(v) => Some(v),
        // Rust accepts `inf`, `infinity` and `nan` case-insensitively with an
        // optional sign, which covers Go's spellings. It rejects hex floats,
        // which Go accepts but no exporter writes.
        None => match token.parse::<f64>() {
            // Go reports an out-of-range error where Rust rounds to infinity
            // (`1e400`); an infinity must be spelled out.
            Ok(v) if v.is_infinite() && !token.bytes().any(|c| c == b'i' || c == b'I') => None,
            Ok(v) => Some(v),
            Err(_) => None,
        },
    }
}

/// `[+-]?digits[.digits][(e|E)[+-]?digits]` with at most 19 mantissa digits,
/// or `None` to let the caller fall back to the general parser. `None` does
/// not mean the token is invalid.
fn fast_decimal(b: &[u8]) -> Option<f64> {
    let (negative, mut i) = match b.first()? {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    let mut mantissa: u64 = 0;
    let int_start = i;
    while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        // Wrapping is harmless: more than 19 digits are rejected below before
        // the mantissa is used.
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        i += 1;
    }
    let mut digits = i - int_start;
    let mut exponent: i32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            i += 1;
        }
        let frac = i - frac_start;
        digits += frac;
        // `digits <= 19` is checked below, so `frac` fits easily.
        exponent = -(i32::try_from(frac).ok()?);
    }
    if digits == 0 || digits > 19 {
        return None;
    }
    if let Some(&(b'e' | b'E')) = b.get(i) {
        i += 1;
        let exp_negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let exp_start = i;
        let mut e: i32 = 0;
        while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            e = e.saturating_mul(10).saturating_add(i32::from(d - b'0'));
            i += 1;
        }
        if i == exp_start {
            return None;
        }
        exponent = if exp_negative {
            exponent.saturating_sub(e)
        } else {
            exponent.saturating_add(e)
        };
    }
    if i != b.len() || mantissa > MAX_EXACT_MANTISSA {
        return None;
    }
    // Exact conversion: the mantissa is at most 2^53.
    #[allow(clippy::cast_precision_loss)]
    let m = mantissa as f64;
    let scale = *POW10.get(exponent.unsigned_abs() as usize)?;
    let v = if exponent >= 0 { m * scale } else { m / scale };
    Some(if negative { -v } else { v })
}

/// Parses an integer millisecond timestamp (`strconv.ParseInt` syntax).
pub(crate) fn parse_timestamp(token: &str) -> Option<i64> {
    token.parse::<i64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_go_float_spellings() {
        let cases: &[(&str, f64)] = &[
            ("0", 0.0),
            ("1", 1.0),
            ("-1", -1.0),
            ("+1", 1.0),
            ("44", 44.0),
            ("0.000108646", 0.000108646),
            ("1.5812e-05", 1.5812e-05),
            ("2.147483648e+09", 2.147483648e+09),
            ("1E3", 1000.0),
            ("0.1173204870000001", 0.1173204870000001),
            ("0.0012321280000000003", 0.0012321280000000003),
            ("1.7560473e+07", 1.7560473e+07),
            ("5.", 5.0),
            (".5", 0.5),
            ("1e308", 1e308),
            ("18446744073709551615", 18446744073709551615.0),
            ("+Inf", f64::INFINITY),
            ("Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("inf", f64::INFINITY),
        ];
        for &(token, expected) in cases {
            let got = parse_value(token);
            assert_eq!(got, Some(expected), "token {token:?}");
        }
        assert!(parse_value("NaN").is_some_and(f64::is_nan));
        assert!(parse_value("nan").is_some_and(f64::is_nan));
    }

    #[test]
    fn negative_zero_keeps_its_sign() {
        assert!(parse_value("-0").is_some_and(|v| v == 0.0 && v.is_sign_negative()));
        assert!(parse_value("-0.0").is_some_and(|v| v == 0.0 && v.is_sign_negative()));
    }

    #[test]
    fn rejects_non_numbers() {
        for token in [
            "", "-", "+", ".", "e5", "1e", "1e+", "1.2.3", "1,5", "0x10", "abc", "1 ", "Infx",
            "--1", "1_000", "1e400", "-1e400",
        ] {
            assert_eq!(parse_value(token), None, "token {token:?}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("1395066363000"), Some(1_395_066_363_000));
        assert_eq!(parse_timestamp("-5"), Some(-5));
        assert_eq!(parse_timestamp("0"), Some(0));
        assert_eq!(parse_timestamp("1.5"), None);
        assert_eq!(parse_timestamp("99999999999999999999"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The fast path must agree bit for bit with the standard parser,
        /// otherwise values would depend on which path a token took.
        #[test]
        fn fast_path_matches_std(token in "[+-]?[0-9]{0,21}(\\.[0-9]{0,21})?([eE][+-]?[0-9]{1,3})?") {
            let ours = parse_value(&token);
            let std = token.parse::<f64>().ok().filter(|v| v.is_finite());
            prop_assert_eq!(ours.map(f64::to_bits), std.map(f64::to_bits));
        }

        #[test]
        fn never_panics(token in "\\PC{0,40}") {
            let _ = parse_value(&token);
            let _ = parse_timestamp(&token);
        }
    }
}
