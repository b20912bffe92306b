//! Property tests for the KPL codec: random records round-trip exactly, sizes are exact, and no
//! input makes the decoder panic or lose data.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use bytes::Bytes;
use kinesis_core::agg::{self, Aggregator, MAGIC, TryAdd};
use kinesis_core::{HashKey, PartitionKey, UserRecord};
use md5::{Digest, Md5};
use proptest::prelude::*;

fn record() -> impl Strategy<Value = UserRecord> {
    (
        // Few distinct keys (so tables de-duplicate), some multi-byte.
        prop_oneof![
            Just("a".to_string()),
            Just("ключ".to_string()),
            "[a-z0-9🔑]{1,20}"
        ],
        proptest::option::weighted(0.3, any::<u128>()),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(pk, ehk, data)| {
            UserRecord::new(
                PartitionKey::new(pk).unwrap(),
                ehk.map(HashKey),
                Bytes::from(data),
            )
        })
}

fn with_md5(body: &[u8]) -> Bytes {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(body);
    v.extend_from_slice(&Md5::digest(body));
    Bytes::from(v)
}

#[test]
fn a_key_cache_facing_random_keys_steps_aside_and_decodes_the_same() {
    // 200 aggregates of 100 records with keys that never repeat, then some that do: the cache
    // steps aside after its first window of misses, and every result equals the plain decoder's.
    let range = kinesis_core::HashKeyRange::new(HashKey(0), HashKey(u128::MAX / 2)).unwrap();
    let mut keys = agg::KeyCache::new();
    for a in 0..300usize {
        let mut agg = Aggregator::new(1024 * 1024).unwrap();
        for i in 0..100usize {
            let key = if a < 200 {
                format!("k-{a}-{i}")
            } else {
                format!("k-{}", i % 10)
            };
            let r = UserRecord::new(
                PartitionKey::new(key).unwrap(),
                None,
                Bytes::from(vec![1u8; 10]),
            );
            assert!(matches!(agg.try_add(r).unwrap(), TryAdd::Added));
        }
        let kr = agg.finish().unwrap();
        let plain = agg::deaggregate_for_shard(kr.partition_key.as_str(), kr.data.clone(), range);
        let mut out = Vec::new();
        let into = agg::deaggregate_for_shard_into(
            kr.partition_key.as_str(),
            kr.data,
            range,
            &mut keys,
            &mut out,
            |r| r,
        );
        match (plain, into) {
            (Ok(p), Ok(())) => assert_eq!(p, out),
            (Err(p), Err(i)) => assert_eq!((p.hash_key, p.records), (i.hash_key, i.records)),
            (p, i) => panic!("aggregate {a} differs: {:?} vs {:?}", p.is_ok(), i.is_ok()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn round_trip_with_exact_sizes(
        records in proptest::collection::vec(record(), 1..200),
        max in 400usize..8_000,
    ) {
        let mut agg = Aggregator::new(max).unwrap();
        let mut out = Vec::new();
        for r in records.iter().cloned() {
            let predicted = agg.size_with(&r);
            match agg.try_add(r).unwrap() {
                TryAdd::Added => prop_assert_eq!(agg.size_bytes(), predicted),
                TryAdd::Full(r) => {
                    prop_assert!(predicted > max);
                    let before = agg.size_bytes();
                    let kr = agg.finish().unwrap();
                    prop_assert_eq!(kr.size_bytes(), before);
                    prop_assert!(kr.size_bytes() <= max);
                    out.push(kr);
                    prop_assert!(matches!(agg.try_add(r).unwrap(), TryAdd::Added));
                }
            }
        }
        let before = agg.size_bytes();
        let kr = agg.finish().unwrap();
        prop_assert_eq!(kr.size_bytes(), before);
        out.push(kr);
        prop_assert!(agg.finish().is_none());

        let mut back = Vec::new();
        for kr in &out {
            let recs = agg::deaggregate(kr.partition_key.as_str(), kr.data.clone());
            prop_assert_eq!(recs.len(), kr.user_records);
            // The outer keys route the aggregate where its first user record goes.
            prop_assert_eq!(kr.partition_key.as_str(), recs[0].partition_key.as_ref());
            for (i, r) in recs.iter().enumerate() {
                prop_assert_eq!(r.aggregated, kr.user_records > 1);
                prop_assert_eq!(r.sub_sequence_number, if kr.user_records > 1 { i as u64 } else { 0 });
            }
            if kr.user_records > 1 {
                prop_assert_eq!(kr.explicit_hash_key, recs[0].explicit_hash_key);
            }
            back.extend(recs.into_iter().map(|r| (r.partition_key.to_string(), r.data)));
        }
        let want: Vec<_> = records.iter().map(|r| (r.partition_key.to_string(), r.data.clone())).collect();
        prop_assert_eq!(back, want);
    }

    #[test]
    fn decoding_into_with_a_key_cache_matches_the_plain_decoder(
        batches in proptest::collection::vec(proptest::collection::vec(record(), 1..40), 1..6),
        bounds in (any::<u128>(), any::<u128>()),
    ) {
        // Several aggregates through one cache (keys and their hashes carried over), under a
        // random shard range: the same records, or the same refusal, as without the cache.
        let range = kinesis_core::HashKeyRange::new(
            HashKey(bounds.0.min(bounds.1)),
            HashKey(bounds.0.max(bounds.1)),
        )
        .unwrap();
        let mut keys = agg::KeyCache::new();
        for records in batches {
            let mut a = Aggregator::new(1024 * 1024).unwrap();
            for r in records {
                prop_assert!(matches!(a.try_add(r).unwrap(), TryAdd::Added));
            }
            let kr = a.finish().unwrap();
            let plain = agg::deaggregate_for_shard(kr.partition_key.as_str(), kr.data.clone(), range);
            let mut out = Vec::new();
            let into = agg::deaggregate_for_shard_into(
                kr.partition_key.as_str(), kr.data, range, &mut keys, &mut out, |r| r,
            );
            match (plain, into) {
                (Ok(p), Ok(())) => prop_assert_eq!(p, out),
                (Err(p), Err(i)) => {
                    prop_assert_eq!(p.hash_key, i.hash_key);
                    prop_assert_eq!(p.records, i.records);
                    prop_assert!(out.is_empty());
                }
                (p, i) => prop_assert!(false, "differ: {:?} vs {:?}", p.is_ok(), i.is_ok()),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_lose_data(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let data = Bytes::from(data);
        let out = agg::deaggregate("k", data.clone());
        prop_assert!(!out.is_empty());
        if !out[0].aggregated {
            prop_assert_eq!(&out[0].data, &data);
        }
    }

    #[test]
    fn arbitrary_bodies_with_valid_md5_never_panic(body in proptest::collection::vec(any::<u8>(), 1..400)) {
        let data = with_md5(&body);
        let out = agg::deaggregate("k", data.clone());
        prop_assert!(!out.is_empty());
        if !out[0].aggregated {
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(&out[0].data, &data);
        }
    }

    #[test]
    fn corrupted_aggregates_with_fixed_md5_never_panic(
        records in proptest::collection::vec(record(), 2..20),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut agg = Aggregator::new(agg::MAX_RECORD_BYTES_LIMIT).unwrap();
        for r in records { agg.try_add(r).unwrap(); }
        let kr = agg.finish().unwrap();
        let mut body = kr.data[4..kr.data.len() - 16].to_vec();
        for (i, b) in flips { let i = i.index(body.len()); body[i] ^= b | 1; }
        let data = with_md5(&body);
        let out = agg::deaggregate("k", data.clone());
        prop_assert!(!out.is_empty());
        if !out[0].aggregated { prop_assert_eq!(&out[0].data, &data); }
    }
}

/// Hand-built messages for the proto2 rules that the KCL applies.
mod proto2_rules {
    use super::*;

    #[test]
    fn missing_required_fields_mean_not_aggregated() {
        // partition_key_table ["a"], one record with data only (no partition_key_index).
        let body = [0x0A, 0x01, b'a', 0x1A, 0x03, 0x1A, 0x01, b'x'];
        let data = with_md5(&body);
        assert!(matches!(
            agg::parse_aggregate(&data),
            Err(agg::NotAggregated::MissingField("partition_key_index"))
        ));
        // Record with index but no data.
        let body = [0x0A, 0x01, b'a', 0x1A, 0x02, 0x08, 0x00];
        assert!(matches!(
            agg::parse_aggregate(&with_md5(&body)),
            Err(agg::NotAggregated::MissingField("data"))
        ));
        // Both present: fine.
        let body = [0x0A, 0x01, b'a', 0x1A, 0x05, 0x08, 0x00, 0x1A, 0x01, b'x'];
        let out = agg::parse_aggregate(&with_md5(&body)).unwrap();
        assert_eq!(out[0].data, Bytes::from_static(b"x"));
    }

    #[test]
    fn bad_index_and_bad_ehk_mean_not_aggregated() {
        let body = [0x0A, 0x01, b'a', 0x1A, 0x05, 0x08, 0x01, 0x1A, 0x01, b'x'];
        assert!(matches!(
            agg::parse_aggregate(&with_md5(&body)),
            Err(agg::NotAggregated::BadIndex {
                index: 1,
                len: 1,
                ..
            })
        ));
        let body = [
            0x0A, 0x01, b'a', 0x12, 0x02, b'-', b'1', 0x1A, 0x07, 0x08, 0x00, 0x10, 0x00, 0x1A,
            0x01, b'x',
        ];
        assert!(matches!(
            agg::parse_aggregate(&with_md5(&body)),
            Err(agg::NotAggregated::BadExplicitHashKey(_))
        ));
    }

    #[test]
    fn empty_aggregate_is_delivered_raw() {
        let body = [0x0A, 0x01, b'a'];
        let data = with_md5(&body);
        assert!(matches!(
            agg::parse_aggregate(&data),
            Err(agg::NotAggregated::Empty)
        ));
        assert_eq!(agg::deaggregate("k", data.clone())[0].data, data);
    }

    #[test]
    fn required_fields_are_written_even_when_zero() {
        let mut a = Aggregator::new(1000).unwrap();
        for _ in 0..2 {
            a.try_add(UserRecord::new(
                PartitionKey::new("p").unwrap(),
                None,
                Bytes::new(),
            ))
            .unwrap();
        }
        let kr = a.finish().unwrap();
        // table "p", then two records each `08 00 1A 00` (index 0, empty data).
        assert_eq!(
            &kr.data[4..kr.data.len() - 16],
            &[
                0x0A, 0x01, b'p', 0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00, 0x1A, 0x04, 0x08, 0x00, 0x1A,
                0x00
            ]
        );
    }

    #[test]
    fn too_large_record_is_an_error_and_single_records_stay_plain() {
        let mut a = Aggregator::new(100).unwrap();
        let big = UserRecord::new(
            PartitionKey::new("k").unwrap(),
            None,
            Bytes::from(vec![0; 100]),
        );
        assert!(matches!(
            a.try_add(big),
            Err(agg::AggregateError::RecordTooLarge {
                size: 101,
                limit: 100
            })
        ));
        let exact = UserRecord::new(
            PartitionKey::new("k").unwrap(),
            Some(HashKey(7)),
            Bytes::from(vec![1; 99]),
        );
        assert!(matches!(a.try_add(exact.clone()).unwrap(), TryAdd::Added));
        assert_eq!(a.size_bytes(), 100);
        let kr = a.finish().unwrap();
        assert_eq!(
            (kr.data, kr.explicit_hash_key, kr.user_records),
            (exact.data, Some(HashKey(7)), 1)
        );
        assert!(Aggregator::new(0).is_err());
        assert!(Aggregator::new(agg::MAX_RECORD_BYTES_LIMIT + 1).is_err());
    }
}
