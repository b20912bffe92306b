//! A zero-copy reader for the `AggregatedRecord` protobuf message.
//!
//! Hand-written rather than prost-derived because decoding is on the consumer's hot path:
//! prost builds an intermediate `Vec<Record>` with owned fields, which measured 57–62 % of MD5
//! throughput for 100-byte records; this one-pass reader yields byte ranges into the original
//! buffer instead (figures in `BENCHMARKS.md`). It implements exactly what prost (and the KCL's
//! proto2 classes) accept: fields in any order, last value wins for scalars, unknown fields and
//! groups skipped, wire-type mismatches and invalid UTF-8 rejected. A property test checks it
//! against the prost-derived messages in `proto.rs`.

use std::ops::Range;

/// A protobuf decoding failure, with the byte offset where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError {
    pub(crate) offset: usize,
    pub(crate) what: &'static str,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

type Result<T> = std::result::Result<T, WireError>;

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

/// Deepest group nesting accepted (prost's default recursion limit).
const MAX_DEPTH: u32 = 100;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn err(&self, what: &'static str) -> WireError {
        WireError {
            offset: self.pos,
            what,
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            // The 10th byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7F) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// Field number and wire type.
    fn key(&mut self) -> Result<(u64, u8)> {
        let k = self.varint()?;
        if k > u64::from(u32::MAX) {
            return Err(self.err("field key larger than 32 bits"));
        }
        let field = k >> 3;
        if field == 0 {
            return Err(self.err("field number 0"));
        }
        // Only the low three bits: the wire type.
        #[allow(clippy::cast_possible_truncation)]
        Ok((field, (k & 7) as u8))
    }

    fn len_delimited(&mut self) -> Result<Range<usize>> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("length past the end of the buffer"))?;
        self.pos = end;
        Ok(start..end)
    }

    fn advance(&mut self, n: usize) -> Result<()> {
        if self.buf.len() - self.pos < n {
            return Err(self.err("truncated fixed-width field"));
        }
        self.pos += n;
        Ok(())
    }

    /// Skips an unknown field's value, groups included (nested at most [`MAX_DEPTH`] deep, as
    /// prost's recursion limit, so hostile input cannot exhaust the stack).
    fn skip(&mut self, field: u64, wire: u8, depth: u32) -> Result<()> {
        match wire {
            VARINT => self.varint().map(|_| ()),
            I64 => self.advance(8),
            LEN => self.len_delimited().map(|_| ()),
            I32 => self.advance(4),
            SGROUP => loop {
                if depth >= MAX_DEPTH {
                    return Err(self.err("groups nested too deep"));
                }
                if self.done() {
                    return Err(self.err("unterminated group"));
                }
                let (f, w) = self.key()?;
                if w == EGROUP {
                    return if f == field {
                        Ok(())
                    } else {
                        Err(self.err("mismatched end group"))
                    };
                }
                self.skip(f, w, depth + 1)?;
            },
            EGROUP => Err(self.err("unexpected end group")),
            _ => Err(self.err("invalid wire type")),
        }
    }

    fn expect(&self, wire: u8, want: u8) -> Result<()> {
        if wire == want {
            Ok(())
        } else {
            Err(self.err("wrong wire type for a known field"))
        }
    }
}

/// The top level of an `AggregatedRecord`: ranges of its key-table strings and records.
#[derive(Debug, Default)]
pub(crate) struct Message {
    pub(crate) partition_keys: Vec<Range<usize>>,
    pub(crate) explicit_hash_keys: Vec<Range<usize>>,
    pub(crate) records: Vec<Range<usize>>,
}

/// One `Record`: its fields, with `None` for absent ones (proto2 `required` is checked by the
/// caller).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) partition_key_index: Option<u64>,
    pub(crate) explicit_hash_key_index: Option<u64>,
    pub(crate) data: Option<Range<usize>>,
    /// A tag without its required `key`.
    pub(crate) tag_missing_key: bool,
}

fn check_utf8(buf: &[u8], r: &Range<usize>) -> Result<()> {
    std::str::from_utf8(&buf[r.clone()])
        .map(|_| ())
        .map_err(|_| WireError {
            offset: r.start,
            what: "string is not valid UTF-8",
        })
}

/// Reads the top-level fields. Strings are checked for UTF-8.
pub(crate) fn read_message(buf: &[u8]) -> Result<Message> {
    let mut r = Reader::new(buf);
    let mut m = Message::default();
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1..=3 => {
                r.expect(wire, LEN)?;
                let range = r.len_delimited()?;
                match field {
                    1 => {
                        check_utf8(buf, &range)?;
                        m.partition_keys.push(range);
                    }
                    2 => {
                        check_utf8(buf, &range)?;
                        m.explicit_hash_keys.push(range);
                    }
                    _ => m.records.push(range),
                }
            }
            _ => r.skip(field, wire, 0)?,
        }
    }
    Ok(m)
}

/// Reads one `Record` message found at `range` of `buf` (offsets in the result are into `buf`).
pub(crate) fn read_record(buf: &[u8], range: Range<usize>) -> Result<Record> {
    let base = range.start;
    let mut r = Reader::new(&buf[range]);
    let mut rec = Record {
        partition_key_index: None,
        explicit_hash_key_index: None,
        data: None,
        tag_missing_key: false,
    };
    let shift = |e: WireError| WireError {
        offset: e.offset + base,
        what: e.what,
    };
    while !r.done() {
        let (field, wire) = r.key().map_err(shift)?;
        match field {
            1 => {
                r.expect(wire, VARINT).map_err(shift)?;
                rec.partition_key_index = Some(r.varint().map_err(shift)?);
            }
            2 => {
                r.expect(wire, VARINT).map_err(shift)?;
                rec.explicit_hash_key_index = Some(r.varint().map_err(shift)?);
            }
            3 => {
                r.expect(wire, LEN).map_err(shift)?;
                let d = r.len_delimited().map_err(shift)?;
                rec.data = Some(d.start + base..d.end + base);
            }
            4 => {
                r.expect(wire, LEN).map_err(shift)?;
                let t = r.len_delimited().map_err(shift)?;
                let has_key = read_tag(buf, t.start + base..t.end + base)?;
                rec.tag_missing_key |= !has_key;
            }
            _ => r.skip(field, wire, 0).map_err(shift)?,
        }
    }
    Ok(rec)
}

/// Validates a `Tag` message; returns whether it has its required `key`.
fn read_tag(buf: &[u8], range: Range<usize>) -> Result<bool> {
    let base = range.start;
    let mut r = Reader::new(&buf[range]);
    let shift = |e: WireError| WireError {
        offset: e.offset + base,
        what: e.what,
    };
    let mut has_key = false;
    while !r.done() {
        let (field, wire) = r.key().map_err(shift)?;
        match field {
            1 | 2 => {
                r.expect(wire, LEN).map_err(shift)?;
                let s = r.len_delimited().map_err(shift)?;
                check_utf8(buf, &(s.start + base..s.end + base))?;
                has_key |= field == 1;
            }
            _ => r.skip(field, wire, 0).map_err(shift)?,
        }
    }
    Ok(has_key)
}

#[cfg(test)]
mod tests {
    use super::super::proto;
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;

    /// What prost makes of a body: records as (pk index, ehk index, data) or an error.
    /// (pk index, ehk index, data, a tag lacks its key) per record.
    type Decoded = Option<Vec<(Option<u64>, Option<u64>, Option<Vec<u8>>, bool)>>;

    fn with_prost(body: &[u8]) -> Decoded {
        let m = proto::AggregatedRecord::decode(body).ok()?;
        Some(
            m.records
                .into_iter()
                .map(|r| {
                    let missing = r.tags.iter().any(|t| t.key.is_none());
                    (
                        r.partition_key_index,
                        r.explicit_hash_key_index,
                        r.data.map(|d| d.to_vec()),
                        missing,
                    )
                })
                .collect(),
        )
    }

    fn with_reader(body: &[u8]) -> Decoded {
        let m = read_message(body).ok()?;
        m.records
            .into_iter()
            .map(|r| {
                read_record(body, r).ok().map(|r| {
                    (
                        r.partition_key_index,
                        r.explicit_hash_key_index,
                        r.data.map(|d| body[d].to_vec()),
                        r.tag_missing_key,
                    )
                })
            })
            .collect()
    }

    fn sample() -> Vec<u8> {
        proto::AggregatedRecord {
            partition_key_table: vec!["a".into(), "ключ".into()],
            explicit_hash_key_table: vec!["12345".into()],
            records: vec![
                proto::Record {
                    partition_key_index: Some(0),
                    explicit_hash_key_index: None,
                    data: Some(bytes::Bytes::from_static(b"one")),
                    tags: vec![],
                },
                proto::Record {
                    partition_key_index: Some(1),
                    explicit_hash_key_index: Some(0),
                    data: Some(bytes::Bytes::from_static(b"")),
                    tags: vec![proto::Tag {
                        key: Some("k".into()),
                        value: Some("v".into()),
                    }],
                },
            ],
        }
        .encode_to_vec()
    }

    #[test]
    fn agrees_with_prost_on_a_valid_message() {
        let body = sample();
        assert!(with_prost(&body).is_some());
        assert_eq!(with_reader(&body), with_prost(&body));
    }

    #[test]
    fn deep_groups_are_an_error_not_a_stack_overflow() {
        // 100,000 nested start-group keys for field 9.
        let body = vec![0x4B; 100_000];
        assert!(read_message(&body).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn agrees_with_prost_on_mutations(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)
        ) {
            let mut body = sample();
            for (i, b, op) in edits {
                let i = i.index(body.len().max(1));
                match op {
                    0 if !body.is_empty() => body[i] = b,
                    1 => body.insert(i.min(body.len()), b),
                    _ if !body.is_empty() => { body.remove(i); }
                    _ => {}
                }
            }
            let ours = with_reader(&body);
            let theirs = with_prost(&body);
            // Where prost decodes, we decode the same; where it fails, we fail. (UTF-8 is
            // checked by both.)
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn agrees_with_prost_on_random_bytes(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(with_reader(&body), with_prost(&body));
        }
    }
}
