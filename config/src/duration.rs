//! Human-friendly durations: `500ms`, `10s`, `2m`, `1h`, `1m30s`.

use std::time::Duration;

const UNITS_HINT: &str = "use ms, s, m or h, like \"10s\" or \"1m30s\"";

/// Parses a duration written as a sequence of integer+unit parts (`500ms`, `10s`, `2m`, `1h`, `1m30s`).
///
/// Units are `ms`, `s`, `m` and `h`. The error is a short reason, without the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("empty duration ({UNITS_HINT})"));
    }
    let bytes = s.as_bytes();
    let mut total_ms: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "expected a number at \"{}\" ({UNITS_HINT})",
                &s[start..]
            ));
        }
        let number: u64 = s[start..i]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[unit_start..i];
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" if i == bytes.len() => {
                return Err(format!("missing unit after {number} ({UNITS_HINT})"));
            }
            "" => {
                let rest = &s[i..];
                return Err(format!(
                    "unexpected \"{rest}\" after {number} ({UNITS_HINT})"
                ));
            }
            other => return Err(format!("unknown unit \"{other}\" ({UNITS_HINT})")),
        };
        total_ms = number
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "duration too large".to_string())?;
    }
    Ok(Duration::from_millis(total_ms))
}
