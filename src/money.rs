//! Exact money amounts: decimal text to integer minor units and back, never
//! through a float. Used by the configuration (the amount guard's caps) and
//! by the amount guard (a request's amount, read as the JSON text the
//! canonicalizer kept). Pure: no I/O, no clock.
//!
//! One grammar for caps, JSON numbers and JSON strings alike: a JSON number
//! without sign or exponent, `0` or `[1-9][0-9]*`, optionally followed by
//! `.` and at most `minor_units` digits (`"105.50"`, `105.5`, `7`). Anything
//! else is refused with the reason: a sign (`-5`), an exponent (`1e3`: one
//! provider reads it as 1000, another as 1 — never guess), more decimal
//! places than the provider accepts (`1.234` with 2, `1.230` too), leading
//! zeros, blanks, or a value past [`MAX_MINOR`].

use std::fmt;

/// The largest amount, in minor units, the guard counts: 2^53 − 1, so that
/// every amount, cap and total is exact in any arithmetic that meets it
/// (Redis' Lua numbers are doubles). 90 trillion in a currency with 2
/// decimal places.
pub const MAX_MINOR: u64 = (1 << 53) - 1;

/// The most decimal places an amount may have (`minor_units`).
pub const MAX_MINOR_UNITS: u8 = 9;

/// Why a decimal text is not an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalError {
    /// Not a plain decimal number (letters, blanks, `+`, `.5`, `5.`, `007`).
    NotDecimal,
    /// A minus sign.
    Negative,
    /// An exponent (`1e3`, `1.5E2`).
    Exponent,
    /// More decimal places than `minor_units`.
    TooPrecise { minor_units: u8 },
    /// Over [`MAX_MINOR`] minor units.
    TooLarge,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecimalError::NotDecimal => {
                f.write_str("not a plain decimal number (digits, optionally a point and decimals)")
            }
            DecimalError::Negative => f.write_str("negative"),
            DecimalError::Exponent => f.write_str("an exponent form; write the plain decimal"),
            DecimalError::TooPrecise { minor_units: 0 } => {
                f.write_str("has decimal places; this route takes whole units only")
            }
            DecimalError::TooPrecise { minor_units } => write!(f, "more than {minor_units} decimal places"),
            DecimalError::TooLarge => f.write_str("too large"),
        }
    }
}

/// `text` as minor units with `minor_units` decimal places (`"105.5"`, 2 →
/// 10550). Exactly the grammar of the module doc.
pub fn parse_decimal(text: &str, minor_units: u8) -> Result<u64, DecimalError> {
    let b = text.as_bytes();
    if b.first() == Some(&b'-') {
        return Err(if b.len() > 1 {
            DecimalError::Negative
        } else {
            DecimalError::NotDecimal
        });
    }
    if is_exponent_form(text) {
        return Err(DecimalError::Exponent);
    }
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(int) || (int.len() > 1 && int.starts_with('0')) || frac.is_some_and(|f| !digits(f)) {
        return Err(DecimalError::NotDecimal);
    }
    let frac = frac.unwrap_or("");
    if frac.len() > usize::from(minor_units) {
        return Err(DecimalError::TooPrecise { minor_units });
    }
    // 2^53 has 16 digits: anything longer is too large (and would not fit the u128 below).
    if int.len() + usize::from(minor_units) > 30 {
        return Err(DecimalError::TooLarge);
    }
    let mut v: u128 = 0;
    for c in int.bytes().chain(frac.bytes()) {
        v = v * 10 + u128::from(c - b'0');
    }
    for _ in frac.len()..usize::from(minor_units) {
        v *= 10;
    }
    u64::try_from(v)
        .ok()
        .filter(|&v| v <= MAX_MINOR)
        .ok_or(DecimalError::TooLarge)
}

/// `1e3`, `1.5E-2`: a mantissa, `e` or `E`, an optionally signed exponent.
fn is_exponent_form(text: &str) -> bool {
    let Some(at) = text.find(['e', 'E']) else {
        return false;
    };
    let (mantissa, exp) = (&text[..at], &text[at + 1..]);
    let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((i, f)) => digits(i) && digits(f),
        None => digits(mantissa),
    };
    mantissa_ok && digits(exp)
}

/// Minor units as decimal text with exactly `minor_units` places (10550, 2
/// → `"105.50"`).
pub fn format_minor(v: u64, minor_units: u8) -> String {
    let s = v.to_string();
    let places = usize::from(minor_units);
    if places == 0 {
        return s;
    }
    let padded = format!("{s:0>width$}", width = places + 1);
    let (int, frac) = padded.split_at(padded.len() - places);
    format!("{int}.{frac}")
}

/// Why a JSON value is not an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmountError {
    /// No value there, or `null`.
    Missing,
    /// `true`, an object, an array: not a number or a numeric string.
    NotANumber,
    /// A number or string that breaks the decimal grammar.
    Decimal(DecimalError),
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountError::Missing => f.write_str("missing"),
            AmountError::NotANumber => f.write_str("not a number or a numeric string"),
            AmountError::Decimal(e) => e.fmt(f),
        }
    }
}

/// An amount from its JSON text (as `canonical::pointer` returns it): a
/// number (`105.5`) or a string holding one (`"105.50"`).
pub fn amount_from_json(text: Option<&str>, minor_units: u8) -> Result<u64, AmountError> {
    let text = match text {
        None | Some("null") => return Err(AmountError::Missing),
        Some(t) => t,
    };
    let decimal = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|_| AmountError::NotANumber)?
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        text.to_string()
    } else {
        return Err(AmountError::NotANumber);
    };
    parse_decimal(&decimal, minor_units).map_err(AmountError::Decimal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimals_become_exact_minor_units() {
        for (text, units, want) in [
            ("105.50", 2, 10_550),
            ("105.5", 2, 10_550),
            ("105", 2, 10_500),
            ("0", 2, 0),
            ("0.01", 2, 1),
            ("0.1", 2, 10),
            ("7", 0, 7),
            ("50000.00", 2, 5_000_000),
            // A double would round these two to the same value.
            ("90071992547409.91", 2, 9_007_199_254_740_991),
            ("0.123456789", 9, 123_456_789),
        ] {
            assert_eq!(parse_decimal(text, units), Ok(want), "{text}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        use DecimalError::*;
        for (text, units, why) in [
            ("-5", 2, Negative),
            ("-0.01", 2, Negative),
            ("1e3", 2, Exponent),
            ("1.5E2", 2, Exponent),
            ("1e-2", 2, Exponent),
            ("e", 2, NotDecimal),
            ("1e", 2, NotDecimal),
            ("1.234", 2, TooPrecise { minor_units: 2 }),
            ("1.230", 2, TooPrecise { minor_units: 2 }),
            ("1.5", 0, TooPrecise { minor_units: 0 }),
            ("abc", 2, NotDecimal),
            ("", 2, NotDecimal),
            ("-", 2, NotDecimal),
            (" 1", 2, NotDecimal),
            ("1 ", 2, NotDecimal),
            ("+1", 2, NotDecimal),
            (".5", 2, NotDecimal),
            ("5.", 2, NotDecimal),
            ("007", 2, NotDecimal),
            ("1,000.00", 2, NotDecimal),
            ("1.2.3", 2, NotDecimal),
            ("0x10", 2, NotDecimal),
            ("Infinity", 2, NotDecimal),
            ("NaN", 2, NotDecimal),
            ("١٢", 2, NotDecimal),
            ("90071992547409.92", 2, TooLarge),
            ("100000000000000000000000000000000000", 2, TooLarge),
        ] {
            assert_eq!(parse_decimal(text, units), Err(why), "{text:?}");
        }
    }

    #[test]
    fn minor_units_format_back_exactly() {
        assert_eq!(format_minor(10_550, 2), "105.50");
        assert_eq!(format_minor(5, 2), "0.05");
        assert_eq!(format_minor(0, 2), "0.00");
        assert_eq!(format_minor(7, 0), "7");
        assert_eq!(format_minor(MAX_MINOR, 2), "90071992547409.91");
        assert_eq!(format_minor(1, 9), "0.000000001");
        for v in [0, 1, 99, 100, 12_345, MAX_MINOR] {
            assert_eq!(parse_decimal(&format_minor(v, 2), 2), Ok(v));
        }
    }

    #[test]
    fn json_amounts_are_numbers_or_numeric_strings() {
        let a = |t: &str| amount_from_json(Some(t), 2);
        assert_eq!(a("105.5"), Ok(10_550));
        assert_eq!(a("\"105.50\""), Ok(10_550));
        assert_eq!(a("\"1\\u0030\""), Ok(1_000), "escapes are decoded first");
        assert_eq!(a("true"), Err(AmountError::NotANumber));
        assert_eq!(a("{\"v\":1}"), Err(AmountError::NotANumber));
        assert_eq!(a("[1]"), Err(AmountError::NotANumber));
        assert_eq!(a("null"), Err(AmountError::Missing));
        assert_eq!(amount_from_json(None, 2), Err(AmountError::Missing));
        assert_eq!(a("-1"), Err(AmountError::Decimal(DecimalError::Negative)));
        assert_eq!(a("1e3"), Err(AmountError::Decimal(DecimalError::Exponent)));
        assert_eq!(a("\"1e3\""), Err(AmountError::Decimal(DecimalError::Exponent)));
        assert_eq!(a("\"abc\""), Err(AmountError::Decimal(DecimalError::NotDecimal)));
        assert_eq!(
            a("\"1.234\""),
            Err(AmountError::Decimal(DecimalError::TooPrecise { minor_units: 2 }))
        );
    }
}
