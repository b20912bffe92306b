//! How a user record is printed by `kinesis consume` and `kinesis tail`: one JSON line (the
//! default), or a `--format` template over the record's fields, as kcat's `-f`.
//!
//! ```text
//!   "{shard} {seq}/{subseq} {key}: {data}\n" ──Template::parse──► [Field, Lit, Field, …]
//!   PrintedRecord ──Template::write──► bytes      PrintedRecord ──json_line──► {"shard_id":…}
//! ```

use std::fmt::Write as _;

use anyhow::bail;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The fields of one user record, as read from a shard.
#[derive(Debug)]
pub(crate) struct PrintedRecord<'a> {
    pub(crate) shard_id: &'a str,
    pub(crate) sequence_number: &'a str,
    pub(crate) sub_sequence_number: u64,
    pub(crate) partition_key: &'a str,
    /// The user record's explicit hash key, when its aggregate carried one.
    pub(crate) explicit_hash_key: Option<String>,
    /// ApproximateArrivalTimestamp, RFC 3339.
    pub(crate) arrival: Option<String>,
    pub(crate) data: &'a [u8],
}

/// The JSON line `kinesis consume` prints: shard, sequence and sub-sequence number, partition
/// key, and the data as base64 (or as UTF-8 text with `text`, invalid bytes replaced).
pub(crate) fn json_line(r: &PrintedRecord<'_>, text: bool) -> serde_json::Value {
    let data = if text {
        String::from_utf8_lossy(r.data).into_owned()
    } else {
        B64.encode(r.data)
    };
    serde_json::json!({
        "shard_id": r.shard_id,
        "sequence_number": r.sequence_number,
        "sub_sequence_number": r.sub_sequence_number,
        "partition_key": r.partition_key,
        "data": data,
    })
}

/// A field a template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Shard,
    Seq,
    Subseq,
    Key,
    Ehk,
    Ts,
    Data,
    DataB64,
    Len,
}

const FIELDS: &[(&str, Field)] = &[
    ("shard", Field::Shard),
    ("seq", Field::Seq),
    ("subseq", Field::Subseq),
    ("key", Field::Key),
    ("ehk", Field::Ehk),
    ("ts", Field::Ts),
    ("data", Field::Data),
    ("data_b64", Field::DataB64),
    ("len", Field::Len),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(Vec<u8>),
    Field(Field),
}

/// A parsed `--format` template: `{field}` placeholders, `\n` `\t` `\\` escapes, `{{` and `}}`
/// for literal braces. `{data}` is written as raw bytes; a missing explicit hash key or
/// timestamp prints as nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

impl Template {
    /// Parses a template; an unknown field or a stray brace or backslash is an error naming it.
    pub(crate) fn parse(s: &str) -> anyhow::Result<Self> {
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut chars = s.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => lit.push(b'\n'),
                    Some((_, 't')) => lit.push(b'\t'),
                    Some((_, 'r')) => lit.push(b'\r'),
                    Some((_, '\\')) => lit.push(b'\\'),
                    Some((_, other)) => {
                        bail!(
                            "--format: unknown escape \\{other} at {at} (known: \\n \\t \\r \\\\)"
                        )
                    }
                    None => bail!("--format: a lone \\ at the end"),
                },
                '{' if chars.peek().is_some_and(|(_, c)| *c == '{') => {
                    chars.next();
                    lit.push(b'{');
                }
                '}' if chars.peek().is_some_and(|(_, c)| *c == '}') => {
                    chars.next();
                    lit.push(b'}');
                }
                '}' => bail!("--format: unmatched }} at {at} (write }}}} for a literal brace)"),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => name.push(c),
                            None => bail!("--format: {{ at {at} is not closed"),
                        }
                    }
                    let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
                        let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                        bail!(
                            "--format: unknown field {{{name}}} (known: {})",
                            known.join(", ")
                        );
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Field(*field));
                }
                c => {
                    let mut buf = [0u8; 4];
                    lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Self(pieces))
    }

    /// Appends the record, as the template says, to `out`.
    pub(crate) fn write(&self, r: &PrintedRecord<'_>, out: &mut Vec<u8>) {
        let mut s = String::new();
        for piece in &self.0 {
            s.clear();
            match piece {
                Piece::Lit(bytes) => out.extend_from_slice(bytes),
                Piece::Field(Field::Data) => out.extend_from_slice(r.data),
                Piece::Field(f) => {
                    // Writing to a String cannot fail.
                    let _ = match f {
                        Field::Shard => s.write_str(r.shard_id),
                        Field::Seq => s.write_str(r.sequence_number),
                        Field::Subseq => write!(s, "{}", r.sub_sequence_number),
                        Field::Key => s.write_str(r.partition_key),
                        Field::Ehk => s.write_str(r.explicit_hash_key.as_deref().unwrap_or("")),
                        Field::Ts => s.write_str(r.arrival.as_deref().unwrap_or("")),
                        Field::DataB64 => {
                            B64.encode_string(r.data, &mut s);
                            Ok(())
                        }
                        Field::Len => write!(s, "{}", r.data.len()),
                        Field::Data => Ok(()),
                    };
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record() -> PrintedRecord<'static> {
        PrintedRecord {
            shard_id: "shardId-000000000001",
            sequence_number: "4959",
            sub_sequence_number: 3,
            partition_key: "user-7",
            explicit_hash_key: Some("42".into()),
            arrival: Some("2026-12-01T10:00:00Z".into()),
            data: b"hi\x00",
        }
    }

    #[test]
    fn templates_render_every_field() {
        let table: &[(&str, &[u8])] = &[
            ("{shard} {seq}/{subseq}", b"shardId-000000000001 4959/3"),
            (
                "{key}\t{ehk}\t{ts}\n",
                b"user-7\t42\t2026-12-01T10:00:00Z\n",
            ),
            ("[{data}] {len} {data_b64}", b"[hi\x00] 3 aGkA"),
            ("{{{key}}} \\\\", b"{user-7} \\"),
            ("plain é", "plain é".as_bytes()),
            ("", b""),
        ];
        for (fmt, want) in table {
            let mut out = Vec::new();
            Template::parse(fmt).unwrap().write(&record(), &mut out);
            assert_eq!(&out, want, "{fmt}");
        }
    }

    #[test]
    fn bad_templates_are_refused() {
        let table = [
            ("{nope}", "unknown field {nope}"),
            ("{data", "not closed"),
            ("x}", "unmatched }"),
            ("\\q", "unknown escape \\q"),
            ("end\\", "lone \\"),
        ];
        for (fmt, want) in table {
            let err = Template::parse(fmt).unwrap_err().to_string();
            assert!(err.contains(want), "{fmt}: {err}");
        }
    }

    #[test]
    fn json_line_is_consumes() {
        let v = json_line(&record(), false);
        assert_eq!(
            v,
            serde_json::json!({
                "shard_id": "shardId-000000000001",
                "sequence_number": "4959",
                "sub_sequence_number": 3,
                "partition_key": "user-7",
                "data": "aGkA",
            })
        );
        assert_eq!(json_line(&record(), true)["data"], "hi\u{0}");
    }
}
