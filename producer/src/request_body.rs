//! The PutRecords request body (awsJson 1.1), written in one pass into a buffer of its exact
//! size.
//!
//! ```text
//!   records (aggregates: Bytes shared with their members)
//!      └─► {"Records":[{"Data":"<base64>","PartitionKey":"<escaped>"[,"ExplicitHashKey":"<n>"]},…],
//!           "StreamName"|"StreamARN":"<escaped>"}   one Vec, sized before it is written
//!      └─► the SDK's request (its own body for an empty record list replaced before signing):
//!          SigV4, endpoint, HTTP and the response's parsing stay the SDK's
//! ```
//!
//! Why not the SDK's serializer: for each record it copies the data into an owned `Blob` (the
//! aggregate's buffer is shared with its members, so `Vec::from(Bytes)` copies), clones that
//! `Blob` again to serialize it, base64-encodes it into a new `String`, and appends that to a body
//! that grows by doubling to 5 MiB (each growth a copy, and fresh pages to fault in). Here each
//! byte is read once, by the base64 encoder, into a body allocated once. Measured in
//! BENCHMARKS.md ("A request body written once").

use std::io::Write as _;

use kinesis_core::{KinesisRecord, StreamRef};

const RECORDS: &[u8] = br#"{"Records":["#;
const DATA: &[u8] = br#"{"Data":""#;
const PARTITION_KEY: &[u8] = br#"","PartitionKey":""#;
const EXPLICIT_HASH_KEY: &[u8] = br#"","ExplicitHashKey":""#;
const STREAM_NAME: &[u8] = br#"],"StreamName":""#;
const STREAM_ARN: &[u8] = br#"],"StreamARN":""#;
/// A hash key is at most 2^128 - 1: 39 decimal digits.
const HASH_KEY_DIGITS: usize = 39;

/// The JSON body of a PutRecords call of `records` to `stream`.
pub(crate) fn put_records(stream: &StreamRef, records: &[KinesisRecord]) -> Vec<u8> {
    let b64 = base64_simd::STANDARD;
    let (field, stream_text) = match stream {
        StreamRef::Name(n) => (STREAM_NAME, &**n),
        StreamRef::Arn(a) => (STREAM_ARN, &**a),
    };
    let commas = records.len().saturating_sub(1);
    let mut len = RECORDS.len() + commas + field.len() + escaped_len(stream_text) + 2;
    for r in records {
        len += DATA.len() + b64.encoded_length(r.data.len()) + PARTITION_KEY.len();
        len += escaped_len(r.partition_key.as_str()) + 2; // `"}`
        if r.explicit_hash_key.is_some() {
            len += EXPLICIT_HASH_KEY.len() + HASH_KEY_DIGITS;
        }
    }
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(RECORDS);
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(DATA);
        b64.encode_append(&r.data, &mut body);
        body.extend_from_slice(PARTITION_KEY);
        escape_into(r.partition_key.as_str(), &mut body);
        if let Some(h) = r.explicit_hash_key {
            body.extend_from_slice(EXPLICIT_HASH_KEY);
            // Writing into a Vec cannot fail.
            let _ = write!(body, "{}", h.0);
        }
        body.extend_from_slice(b"\"}");
    }
    body.extend_from_slice(field);
    escape_into(stream_text, &mut body);
    body.extend_from_slice(b"\"}");
    debug_assert!(body.len() <= len, "{} > {len}", body.len());
    body
}

/// The length of `s` as the contents of a JSON string.
fn escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum()
}

/// Appends `s` as the contents of a JSON string (RFC 8259: `"`, `\` and control characters
/// escaped; everything else, UTF-8 included, as it is).
fn escape_into(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => br#"\""#,
            b'\\' => br"\\",
            b'\n' => br"\n",
            b'\r' => br"\r",
            b'\t' => br"\t",
            0..0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

    use bytes::Bytes;
    use kinesis_core::{HashKey, KinesisRecord, PartitionKey, StreamRef};

    fn hostile_keys() -> Vec<String> {
        kinesis_testkit::hostile::partition_keys()
    }

    fn record(key: &str, hash: Option<u128>, data: &[u8]) -> KinesisRecord {
        KinesisRecord {
            partition_key: PartitionKey::new(key).unwrap(),
            explicit_hash_key: hash.map(HashKey),
            data: Bytes::copy_from_slice(data),
            user_records: 1,
        }
    }

    #[test]
    fn a_json_reader_reads_back_every_field() {
        let keys = hostile_keys();
        let records: Vec<KinesisRecord> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let hash = match i % 3 {
                    0 => None,
                    1 => Some(u128::MAX),
                    _ => Some(i as u128),
                };
                // Data of every length mod 3 (base64 padding), empty and binary included.
                let data: Vec<u8> = (0..i * 7).map(|j| (j * 37 % 256) as u8).collect();
                record(k, hash, &data)
            })
            .collect();
        for stream in [
            "orders",
            "arn:aws:kinesis:eu-west-1:123456789012:stream/orders",
        ] {
            let stream = StreamRef::parse(stream).unwrap();
            let body = super::put_records(&stream, &records);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let (field, other) = match &stream {
                StreamRef::Name(_) => ("StreamName", "StreamARN"),
                StreamRef::Arn(_) => ("StreamARN", "StreamName"),
            };
            assert_eq!(v[field], stream.name().or(stream.arn()).unwrap());
            assert!(v.get(other).is_none());
            let entries = v["Records"].as_array().unwrap();
            assert_eq!(entries.len(), records.len());
            for (e, r) in entries.iter().zip(&records) {
                assert_eq!(e["PartitionKey"], r.partition_key.as_str());
                let data = base64_simd::STANDARD
                    .decode_to_vec(e["Data"].as_str().unwrap())
                    .unwrap();
                assert_eq!(data, r.data);
                match r.explicit_hash_key {
                    Some(h) => assert_eq!(e["ExplicitHashKey"], h.0.to_string()),
                    None => assert!(e.get("ExplicitHashKey").is_none()),
                }
                assert_eq!(
                    e.as_object().unwrap().len(),
                    2 + usize::from(r.explicit_hash_key.is_some())
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_key_and_data_read_back_as_written(
            items in proptest::collection::vec(
                ("\\PC{1,40}|[\\x00-\\x1f\"\\\\]{1,8}", proptest::collection::vec(proptest::num::u8::ANY, 0..40), proptest::option::of(proptest::num::u128::ANY)),
                0..8,
            )
        ) {
            let records: Vec<KinesisRecord> = items
                .iter()
                .map(|(k, d, h)| record(k, *h, d))
                .collect();
            let body = super::put_records(&StreamRef::parse("s").unwrap(), &records);
            proptest::prop_assert!(body.len() <= body.capacity());
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let entries = v["Records"].as_array().unwrap();
            proptest::prop_assert_eq!(entries.len(), records.len());
            for (e, r) in entries.iter().zip(&records) {
                proptest::prop_assert_eq!(e["PartitionKey"].as_str().unwrap(), r.partition_key.as_str());
                let data = base64_simd::STANDARD.decode_to_vec(e["Data"].as_str().unwrap()).unwrap();
                proptest::prop_assert_eq!(&data[..], &r.data[..]);
                proptest::prop_assert_eq!(
                    e.get("ExplicitHashKey").and_then(|h| h.as_str()).map(str::to_owned),
                    r.explicit_hash_key.map(|h| h.0.to_string())
                );
            }
        }
    }

    #[test]
    fn the_body_is_sized_before_it_is_written() {
        // No growth: the capacity is reserved once (at most 39 digits per hash key too many).
        let records: Vec<KinesisRecord> = hostile_keys()
            .iter()
            .map(|k| record(k, None, &[7; 1000]))
            .collect();
        let stream = StreamRef::parse("s").unwrap();
        let body = super::put_records(&stream, &records);
        assert_eq!(body.capacity(), body.len());
        assert_eq!(
            super::put_records(&stream, &[]),
            br#"{"Records":[],"StreamName":"s"}"#
        );
    }
}
