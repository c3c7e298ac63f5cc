//! Arrival traces: CSV files of real request times (and a per-request size signal) to replay.
//!
//! The format is the one of the Azure LLM inference traces (workloads/traces/): a header row
//! naming the columns, a `TIMESTAMP` column (`YYYY-MM-DD HH:MM:SS[.fraction]`, or plain
//! seconds) and optionally `ContextTokens` (a non-negative integer per request). Other columns
//! are ignored. Rows must be in time order (equal times are allowed): the replay keeps it. A
//! UTF-8 byte order mark before the header is skipped. Times are nanoseconds in an `i64`
//! computed with checked arithmetic: a time past [`MAX_TIME_SECONDS`] (2262-04-11) is an error
//! naming its line and column, never a wrapped value.

use std::path::Path;

use crate::error::LoadError;

/// Most rows a trace may have.
pub const MAX_TRACE_ROWS: usize = 10_000_000;
/// Largest trace file, in bytes.
pub const MAX_TRACE_BYTES: u64 = 1 << 30;
/// Latest time a trace may hold, in seconds since 1970 (nanoseconds up to `i64::MAX`:
/// 2262-04-11 23:47:16 UTC).
pub const MAX_TIME_SECONDS: i64 = i64::MAX / 1_000_000_000;

/// A parsed trace: arrival times relative to the first row, and each row's size signal.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Seconds since the first arrival, non-decreasing; `times[0] == 0`.
    pub times: Vec<f64>,
    /// `ContextTokens` of each row (None when the trace has no such column).
    pub tokens: Option<Vec<u32>>,
}

impl Trace {
    /// Reads a trace file.
    pub fn load(path: &Path) -> Result<Trace, LoadError> {
        let len = std::fs::metadata(path)
            .map_err(|e| LoadError::io(path, e))?
            .len();
        if len > MAX_TRACE_BYTES {
            return Err(LoadError::format(
                path,
                format!("is {len} bytes, more than the limit of {MAX_TRACE_BYTES}"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        Trace::parse(&text).map_err(|msg| LoadError::format(path, msg))
    }

    /// Parses trace text; the error names the line.
    pub fn parse(text: &str) -> Result<Trace, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().ok_or("empty trace: no header row")?;
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let find = |name: &str| cols.iter().position(|c| c.eq_ignore_ascii_case(name));
        let t_col = find("TIMESTAMP").ok_or_else(|| {
            format!(
                "line 1: no TIMESTAMP column in the header `{}`",
                header.trim()
            )
        })?;
        let k_col = find("ContextTokens");
        let mut ns: Vec<i64> = Vec::new();
        let mut tokens: Vec<u32> = Vec::new();
        for (i, line) in lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if ns.len() == MAX_TRACE_ROWS {
                return Err(format!("more than the limit of {MAX_TRACE_ROWS} rows"));
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let field = |c: usize, what: &str| {
                fields
                    .get(c)
                    .copied()
                    .ok_or_else(|| format!("line {}: no {what} field", i + 1))
            };
            let t = parse_time(field(t_col, "TIMESTAMP")?)
                .map_err(|e| format!("line {}, column {} (TIMESTAMP): {e}", i + 1, t_col + 1))?;
            if let Some(&prev) = ns.last() {
                if t < prev {
                    return Err(format!(
                        "line {}, column {} (TIMESTAMP): goes back in time (rows must be in \
                         time order)",
                        i + 1,
                        t_col + 1
                    ));
                }
            }
            ns.push(t);
            if let Some(k) = k_col {
                let v = field(k, "ContextTokens")?;
                tokens.push(v.parse().map_err(|_| {
                    format!(
                        "line {}: ContextTokens `{v}` is not a non-negative integer",
                        i + 1
                    )
                })?);
            }
        }
        if ns.len() < 2 || ns.last() == ns.first() {
            return Err("a trace needs at least 2 rows with different times".into());
        }
        let t0 = ns[0];
        Ok(Trace {
            times: ns.iter().map(|&t| (t - t0) as f64 * 1e-9).collect(),
            tokens: k_col.map(|_| tokens),
        })
    }

    /// Rows in the trace.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// True when the trace has no rows (a parsed trace always has at least 2).
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Seconds from the first to the last arrival.
    pub fn span(&self) -> f64 {
        self.times.last().copied().unwrap_or(0.0)
    }

    /// The trace's own mean arrival rate, (rows - 1) / span, per second.
    pub fn mean_rate(&self) -> f64 {
        (self.len() - 1) as f64 / self.span()
    }
}

/// Parses a timestamp into nanoseconds: plain seconds (`12.5`) or
/// `YYYY-MM-DD HH:MM:SS[.fraction]` (also with `T` between date and time), taken as UTC; both
/// from 0 (1970) to [`MAX_TIME_SECONDS`] (2262-04-11), else an error.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let out_of_range = || {
        format!(
            "`{s}` is out of range: times run from 0 (1970-01-01) to {MAX_TIME_SECONDS} s \
             (2262-04-11 23:47:16)"
        )
    };
    if let Ok(x) = s.parse::<f64>() {
        // At most MAX_TIME_SECONDS: below 2^63 ns even after rounding the product.
        if !(0.0..=MAX_TIME_SECONDS as f64).contains(&x) {
            return Err(out_of_range());
        }
        return Ok((x * 1e9).round() as i64);
    }
    let bad = || format!("`{s}` is neither seconds nor `YYYY-MM-DD HH:MM:SS[.fraction]`");
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let t: Vec<&str> = hms.split(':').collect();
    if d.len() != 3 || t.len() != 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |x: &str, lo: i64, hi: i64| -> Result<i64, String> {
        x.parse::<i64>()
            .ok()
            .filter(|v| (lo..=hi).contains(v))
            .ok_or_else(bad)
    };
    let (y, mo, day) = (num(d[0], 1970, 9999)?, num(d[1], 1, 12)?, num(d[2], 1, 31)?);
    let (h, mi, sec) = (num(t[0], 0, 23)?, num(t[1], 0, 60)?, num(t[2], 0, 60)?);
    let mut nanos = 0i64;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
    }
    // Years up to 9999 keep the seconds far inside i64; the nanoseconds may not fit.
    let secs = days_from_civil(y, mo, day) * 86_400 + h * 3_600 + mi * 60 + sec;
    secs.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(nanos))
        .ok_or_else(out_of_range)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_time("1970-01-01 00:00:00").unwrap(), 0);
        assert_eq!(
            parse_time("1970-01-02 00:00:01.5").unwrap(),
            86_401_500_000_000
        );
        assert_eq!(
            parse_time("2023-11-16 18:15:46.6805900").unwrap(),
            1_700_158_546_680_590_000
        );
        assert_eq!(parse_time("2.25").unwrap(), 2_250_000_000);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2023-13-01 00:00:00").is_err());
    }

    #[test]
    fn parse_rows() {
        let t =
            Trace::parse("TIMESTAMP,ContextTokens,GeneratedTokens\n0.5,10,1\n1.5,20,2\n1.5,3,4\n")
                .unwrap();
        assert_eq!(t.times, vec![0.0, 1.0, 1.0]);
        assert_eq!(t.tokens, Some(vec![10, 20, 3]));
        assert!((t.mean_rate() - 2.0).abs() < 1e-12);
        let e = Trace::parse("TIMESTAMP\n2\n1\n").unwrap_err();
        assert!(e.contains("line 3"), "{e}");
        assert!(Trace::parse("time\n1\n").unwrap_err().contains("TIMESTAMP"));
        assert!(Trace::parse("TIMESTAMP,ContextTokens\n1,x\n2,3\n")
            .unwrap_err()
            .contains("line 2: ContextTokens"));
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_skipped() {
        let t = Trace::parse("\u{feff}TIMESTAMP,ContextTokens\n1,10\n2,20\n").unwrap();
        assert_eq!(t.times, vec![0.0, 1.0]);
        assert_eq!(t.tokens, Some(vec![10, 20]));
    }

    #[test]
    fn times_out_of_range_are_errors_naming_line_and_column() {
        // The last representable time and the first one past it, as dates and as seconds.
        assert_eq!(
            parse_time("2262-04-11 23:47:16").unwrap(),
            MAX_TIME_SECONDS * 1_000_000_000
        );
        assert_eq!(
            parse_time(&MAX_TIME_SECONDS.to_string()).unwrap(),
            MAX_TIME_SECONDS * 1_000_000_000
        );
        for bad in [
            "2262-04-11 23:47:17",
            "9999-12-31 23:59:59",
            "1e10",
            "-1",
            "inf",
            "NaN",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("out of range"), "{bad}: {e}");
        }
        // A year-9999 row after a 2023 one: out of range, not "back in time".
        let e = Trace::parse("id,TIMESTAMP\n1,2023-11-16 18:15:46\n2,9999-12-31 23:59:59\n")
            .unwrap_err();
        assert!(
            e.starts_with("line 3, column 2 (TIMESTAMP): `9999-12-31"),
            "{e}"
        );
        assert!(
            e.contains("out of range") && !e.contains("back in time"),
            "{e}"
        );
        // Plain seconds past the range: the same, not "needs at least 2 rows".
        let e = Trace::parse("TIMESTAMP\n1e10\n2e10\n").unwrap_err();
        assert!(e.starts_with("line 2, column 1 (TIMESTAMP): `1e10`"), "{e}");
    }
}
