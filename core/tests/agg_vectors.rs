//! The KPL codec against the reference vectors made by PyPI `aws-kinesis-agg`
//! (`../shared/vectors/kpl-aggregation.json` beside the repository, or `$KPL_VECTORS`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use kinesis_core::agg::{self, Aggregator, NotAggregated, TryAdd};
use kinesis_core::{HashKey, HashKeyRange, PartitionKey, UserRecord, hash_key};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    magic_hex: String,
    cases: Vec<Case>,
    negative_cases: Vec<Negative>,
    partition_key_hash_keys: Vec<PkHash>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    user_records: Vec<Rec>,
    aggregated: Agg,
}

#[derive(Deserialize)]
struct Rec {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data_b64: String,
}

#[derive(Deserialize)]
struct Agg {
    partition_key: String,
    data_b64: String,
    size_bytes: usize,
}

#[derive(Deserialize)]
struct Negative {
    name: String,
    data_b64: String,
}

#[derive(Deserialize)]
struct PkHash {
    partition_key: String,
    hash_key_decimal: String,
}

fn vectors() -> Vectors {
    let path = std::env::var_os("KPL_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/vectors/kpl-aggregation.json")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read KPL vectors at {} ({e}); set KPL_VECTORS",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("vectors parse")
}

fn user_record(r: &Rec) -> UserRecord {
    UserRecord::new(
        PartitionKey::new(r.partition_key.as_str()).unwrap(),
        r.explicit_hash_key
            .as_deref()
            .map(|h| HashKey::parse(h).unwrap()),
        Bytes::from(B64.decode(&r.data_b64).unwrap()),
    )
}

#[test]
fn magic_matches() {
    let v = vectors();
    let hex: String = agg::MAGIC.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, v.magic_hex);
}

#[test]
fn decodes_every_reference_aggregate() {
    let v = vectors();
    assert!(v.cases.len() >= 8);
    for case in &v.cases {
        let data = Bytes::from(B64.decode(&case.aggregated.data_b64).unwrap());
        assert_eq!(data.len(), case.aggregated.size_bytes, "{}", case.name);
        let out = agg::parse_aggregate(&data)
            .unwrap_or_else(|e| panic!("{}: not decoded: {e}", case.name));
        assert_eq!(out.len(), case.user_records.len(), "{}", case.name);
        for (i, (got, want)) in out.iter().zip(&case.user_records).enumerate() {
            let want = user_record(want);
            assert_eq!(
                got.partition_key.as_ref(),
                want.partition_key.as_str(),
                "{} #{i}",
                case.name
            );
            assert_eq!(
                got.explicit_hash_key, want.explicit_hash_key,
                "{} #{i}",
                case.name
            );
            assert_eq!(got.data, want.data, "{} #{i}", case.name);
            assert_eq!(got.sub_sequence_number, i as u64);
            assert!(got.aggregated);
        }
    }
}

#[test]
fn our_encoding_decodes_to_the_same_records_and_is_no_larger() {
    let v = vectors();
    for case in &v.cases {
        let mut a = Aggregator::new(agg::MAX_RECORD_BYTES_LIMIT).unwrap();
        for r in &case.user_records {
            assert!(matches!(a.try_add(user_record(r)).unwrap(), TryAdd::Added));
        }
        let predicted = a.size_bytes();
        let kr = a.finish().unwrap();
        assert_eq!(kr.size_bytes(), predicted, "{}", case.name);
        assert_eq!(kr.user_records, case.user_records.len());
        // Same choices as the reference (first PK outer, de-duplicated tables): no larger.
        assert_eq!(
            kr.partition_key.as_str(),
            case.aggregated.partition_key,
            "{}",
            case.name
        );
        assert!(kr.data.len() <= case.aggregated.size_bytes, "{}", case.name);
        let back = agg::parse_aggregate(&kr.data).unwrap();
        let want: Vec<_> = case.user_records.iter().map(user_record).collect();
        assert_eq!(back.len(), want.len());
        for (got, want) in back.iter().zip(&want) {
            assert_eq!(got.partition_key.as_ref(), want.partition_key.as_str());
            assert_eq!(got.explicit_hash_key, want.explicit_hash_key);
            assert_eq!(got.data, want.data);
        }
    }
}

#[test]
fn negative_cases_are_delivered_unchanged() {
    let v = vectors();
    assert!(v.negative_cases.len() >= 5);
    for case in &v.negative_cases {
        let data = Bytes::from(B64.decode(&case.data_b64).unwrap());
        let out = agg::deaggregate("outer-key", data.clone());
        assert_eq!(out.len(), 1, "{}", case.name);
        assert_eq!(out[0].data, data, "{}", case.name);
        assert_eq!(out[0].partition_key.as_ref(), "outer-key");
        assert!(!out[0].aggregated);
        assert_eq!(out[0].sub_sequence_number, 0);
        let why = agg::parse_aggregate(&data).unwrap_err();
        let expected = match case.name.as_str() {
            "bad_checksum" => matches!(why, NotAggregated::BadChecksum),
            "magic_only" | "magic_plus_16_bytes" => matches!(why, NotAggregated::TooShort { .. }),
            "truncated_protobuf_valid_md5" => matches!(why, NotAggregated::BadProtobuf(_)),
            "plain_record" => matches!(why, NotAggregated::NoMagic),
            _ => true,
        };
        assert!(expected, "{}: {why:?}", case.name);
    }
}

#[test]
fn partition_key_hash_vectors() {
    let v = vectors();
    assert!(v.partition_key_hash_keys.len() >= 7);
    for p in &v.partition_key_hash_keys {
        assert_eq!(
            hash_key(&p.partition_key).to_string(),
            p.hash_key_decimal,
            "{:?}",
            p.partition_key
        );
    }
}

#[test]
fn hash_range_rule_on_reference_aggregate() {
    let v = vectors();
    let case = v
        .cases
        .iter()
        .find(|c| c.name == "two_records_distinct_keys")
        .unwrap();
    let data = Bytes::from(B64.decode(&case.aggregated.data_b64).unwrap());
    let alpha = hash_key("alpha");
    let beta = hash_key("beta");
    let (lo, hi) = (alpha.min(beta), alpha.max(beta));
    let all = HashKeyRange::new(lo, hi).unwrap();
    assert_eq!(
        agg::deaggregate_for_shard("alpha", data.clone(), all)
            .unwrap()
            .len(),
        2
    );
    let only_low = HashKeyRange::new(HashKey::MIN, lo).unwrap();
    let err = agg::deaggregate_for_shard("alpha", data.clone(), only_low).unwrap_err();
    assert_eq!(err.hash_key, hi);
    assert_eq!(
        err.records.len(),
        2,
        "the records are handed back, not lost"
    );
    // Into a caller's vector: the same rule, and a refused aggregate leaves it as it was.
    let mut out = vec![99u64];
    let mut keys = agg::KeyCache::new();
    let sub = |r: agg::DeaggregatedRecord| r.sub_sequence_number;
    let err =
        agg::deaggregate_for_shard_into("alpha", data.clone(), only_low, &mut keys, &mut out, sub)
            .unwrap_err();
    assert_eq!((err.hash_key, err.records.len()), (hi, 2));
    assert_eq!(out, [99], "nothing of the refused aggregate stays");
    agg::deaggregate_for_shard_into("alpha", data.clone(), all, &mut keys, &mut out, sub).unwrap();
    assert_eq!(out, [99, 0, 1]);
    // The full range (a stream's only shard) takes every aggregate.
    agg::deaggregate_for_shard_into(
        "alpha",
        data.clone(),
        HashKeyRange::FULL,
        &mut keys,
        &mut out,
        sub,
    )
    .unwrap();
    assert_eq!(out, [99, 0, 1, 0, 1]);
    // The cache remembers the keys' hashes: the rule still holds on the next aggregate.
    let err = agg::deaggregate_for_shard_into("alpha", data, only_low, &mut keys, &mut out, sub)
        .unwrap_err();
    assert_eq!(err.hash_key, hi);
    assert_eq!(out.len(), 5);
}
