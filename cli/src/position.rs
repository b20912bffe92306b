//! Where a reader starts: the `--from` argument of `kinesis consume` and `kinesis tail`.
//!
//! ```text
//!   "trim-horizon" | "latest"          ─► TrimHorizon | Latest
//!   RFC 3339 time (Z or ±hh:mm offset) ─► AtTimestamp
//!   seconds since the epoch (≤ 12 integer digits, optional fraction) ─► AtTimestamp
//!   a longer string of digits          ─► AtSequence   (tail only; a Kinesis sequence number)
//! ```
//!
//! RFC 3339 is parsed by the `time` crate (already in the tree through the AWS SDK).

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use kinesis_core::SequenceNumber;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A starting position as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartAt {
    TrimHorizon,
    Latest,
    AtTimestamp(SystemTime),
    AtSequence(SequenceNumber),
}

/// Integer digits an epoch-seconds value may have (year 33658 and beyond need 13); anything
/// longer made of digits is a sequence number (Kinesis's have 56 digits).
const MAX_EPOCH_DIGITS: usize = 12;

/// Parses `--from`. `allow_sequence` says whether a sequence number is acceptable here.
pub(crate) fn parse_from(s: &str, allow_sequence: bool) -> anyhow::Result<StartAt> {
    let expected = if allow_sequence {
        "expected trim-horizon, latest, an RFC 3339 time (2026-12-01T10:00:00Z), seconds since \
         the epoch, or a sequence number"
    } else {
        "expected trim-horizon, latest, an RFC 3339 time (2026-12-01T10:00:00Z) or seconds since \
         the epoch"
    };
    match s {
        "trim-horizon" | "TRIM_HORIZON" => return Ok(StartAt::TrimHorizon),
        "latest" | "LATEST" => return Ok(StartAt::Latest),
        _ => {}
    }
    let integer_digits = s.split('.').next().unwrap_or_default();
    let all_digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if all_digits && s.len() > MAX_EPOCH_DIGITS {
        if !allow_sequence {
            bail!("--from {s:?}: a sequence number is not accepted here; {expected}");
        }
        let seq = SequenceNumber::parse(s).with_context(|| format!("--from {s:?}"))?;
        return Ok(StartAt::AtSequence(seq));
    }
    if !integer_digits.is_empty()
        && integer_digits.bytes().all(|b| b.is_ascii_digit())
        && integer_digits.len() <= MAX_EPOCH_DIGITS
    {
        let secs: f64 = s
            .parse()
            .map_err(|_| anyhow::anyhow!("--from {s:?}: {expected}"))?;
        if !secs.is_finite() || secs < 0.0 {
            bail!("--from {s:?}: must be a non-negative number of seconds");
        }
        return Ok(StartAt::AtTimestamp(
            SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs),
        ));
    }
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| anyhow::anyhow!("--from {s:?}: {e}; {expected}"))?;
    let nanos = t.unix_timestamp_nanos();
    if nanos < 0 {
        bail!("--from {s:?}: before 1970-01-01T00:00:00Z");
    }
    let nanos = u64::try_from(nanos).with_context(|| format!("--from {s:?}: too far ahead"))?;
    Ok(StartAt::AtTimestamp(
        SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(secs: u64, nanos: u32) -> StartAt {
        StartAt::AtTimestamp(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn accepted_forms() {
        // 2026-12-01T10:00:00Z is 1 796 119 200 s after the epoch.
        let seq = "49590338271490256608559692538361571095921575989136588898";
        let table: &[(&str, StartAt)] = &[
            ("trim-horizon", StartAt::TrimHorizon),
            ("TRIM_HORIZON", StartAt::TrimHorizon),
            ("latest", StartAt::Latest),
            ("LATEST", StartAt::Latest),
            ("2026-12-01T10:00:00Z", at(1_796_119_200, 0)),
            ("2026-12-01T10:00:00z", at(1_796_119_200, 0)),
            ("2026-12-01t10:00:00Z", at(1_796_119_200, 0)),
            ("2026-12-01T11:30:00+01:30", at(1_796_119_200, 0)),
            ("2026-12-01T05:00:00-05:00", at(1_796_119_200, 0)),
            ("2026-12-01T10:00:00.25Z", at(1_796_119_200, 250_000_000)),
            ("1970-01-01T00:00:00Z", at(0, 0)),
            ("1796119200", at(1_796_119_200, 0)),
            ("1796119200.5", at(1_796_119_200, 500_000_000)),
            ("0", at(0, 0)),
            (
                seq,
                StartAt::AtSequence(SequenceNumber::parse(seq).unwrap()),
            ),
        ];
        for (input, want) in table {
            assert_eq!(&parse_from(input, true).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn refused_forms() {
        let seq = "49590338271490256608559692538361571095921575989136588898";
        let table: &[(&str, bool, &str)] = &[
            ("yesterday", true, "expected trim-horizon"),
            ("", true, "expected trim-horizon"),
            ("2026-12-01", true, "expected trim-horizon"),
            ("2026-12-01 10:00:00", true, "expected trim-horizon"),
            ("2026-12-01T10:00:00", true, "expected trim-horizon"),
            ("2026-13-01T10:00:00Z", true, "expected trim-horizon"),
            ("2026-12-01T25:00:00Z", true, "expected trim-horizon"),
            ("1969-12-31T23:59:59Z", true, "before 1970"),
            ("-5", true, "expected trim-horizon"),
            ("12.5.3", true, "expected trim-horizon"),
            ("1e9", true, "expected trim-horizon"),
            (seq, false, "not accepted here"),
        ];
        for (input, allow_sequence, want) in table {
            let err = parse_from(input, *allow_sequence).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }
}
