//! The value grammar of every `ROOMCAST_*` setting and `roomcast` flag, shared by the
//! native binary and the Durable Object so the same text means the same thing on both
//! (they once disagreed on `GiB`).
//!
//! Sizes: a number of bytes, or a number with a unit: `KiB`/`K`, `MiB`/`M`, `GiB`/`G`
//! (binary) or `KB`, `MB`, `GB` (decimal), any case, spaces allowed before the unit.
//! Durations: a number of milliseconds, or a number with `ms`, `s`, `m`/`min` or `h`.
//! Both must be more than zero.

/// Why a setting's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// No number where one belongs.
    #[error("expected a number, optionally with a unit")]
    NotANumber,
    /// A unit this grammar does not know.
    #[error("unknown unit {0:?} (sizes: KiB, MiB, GiB, KB, MB, GB; durations: ms, s, m, h)")]
    UnknownUnit(String),
    /// More than fits.
    #[error("too large")]
    TooLarge,
    /// Zero, where only positive values make sense.
    #[error("must be more than zero")]
    Zero,
}

fn split(v: &str) -> Result<(u64, String), ValueError> {
    let v = v.trim();
    let at = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(at);
    let n = digits.parse().map_err(|_| {
        if digits.is_empty() {
            ValueError::NotANumber
        } else {
            ValueError::TooLarge
        }
    })?;
    Ok((n, unit.trim().to_ascii_lowercase()))
}

fn scaled(n: u64, mult: u64) -> Result<u64, ValueError> {
    match n.checked_mul(mult) {
        Some(0) => Err(ValueError::Zero),
        Some(v) => Ok(v),
        None => Err(ValueError::TooLarge),
    }
}

/// Parses a size in bytes (`1048576`, `64KiB`, `1MiB`, `1GiB`, `1MB`).
pub fn parse_size(v: &str) -> Result<usize, ValueError> {
    let (n, unit) = split(v)?;
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(ValueError::UnknownUnit(unit)),
    };
    usize::try_from(scaled(n, mult)?).map_err(|_| ValueError::TooLarge)
}

/// Parses a duration in milliseconds (`500ms`, `25s`, `2m`, `1h`, or a bare number of
/// milliseconds).
pub fn parse_millis(v: &str) -> Result<u64, ValueError> {
    let (n, unit) = split(v)?;
    let mult: u64 = match unit.as_str() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(ValueError::UnknownUnit(unit)),
    };
    scaled(n, mult)
}

/// As [`parse_millis`], where zero is a setting of its own (it turns a window off).
pub fn parse_millis_or_zero(v: &str) -> Result<u64, ValueError> {
    match parse_millis(v) {
        Err(ValueError::Zero) => Ok(0),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_windows() {
        assert_eq!(parse_millis_or_zero("0"), Ok(0));
        assert_eq!(parse_millis_or_zero("0ms"), Ok(0));
        assert_eq!(parse_millis_or_zero("50ms"), Ok(50));
        assert!(parse_millis_or_zero("x").is_err());
        assert_eq!(parse_millis("0"), Err(ValueError::Zero));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64 kib"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_size("0"), Err(ValueError::Zero));
        assert_eq!(parse_size("-1"), Err(ValueError::NotANumber));
        assert_eq!(parse_size("1XB"), Err(ValueError::UnknownUnit("xb".into())));
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(ValueError::TooLarge)
        );
        assert_eq!(parse_size("20000000000GiB"), Err(ValueError::TooLarge));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_millis("500"), Ok(500));
        assert_eq!(parse_millis("500ms"), Ok(500));
        assert_eq!(parse_millis("25s"), Ok(25_000));
        assert_eq!(parse_millis("2m"), Ok(120_000));
        assert_eq!(parse_millis("2min"), Ok(120_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("0s"), Err(ValueError::Zero));
        assert_eq!(parse_millis("soon"), Err(ValueError::NotANumber));
        assert_eq!(parse_millis("5d"), Err(ValueError::UnknownUnit("d".into())));
    }
}
