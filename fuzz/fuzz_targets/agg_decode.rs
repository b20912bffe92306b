//! Fuzzes the KPL decoder: any input must decode without panicking, and anything that is not
//! an aggregate must come back unchanged as one plain record.
//!
//! Run (nightly): `cargo install cargo-fuzz && cargo +nightly fuzz run agg_decode` from the
//! repository root. Seeds worth adding: the blobs in `shared/vectors/kpl-aggregation.json`.
#![no_main]

use bytes::Bytes;
use kinesis_core::HashKeyRange;
use kinesis_core::agg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let out = agg::deaggregate("pk", data.clone());
    assert!(!out.is_empty());
    if !out[0].aggregated {
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, data);
    }
    for (i, r) in out.iter().enumerate() {
        if r.aggregated {
            assert_eq!(r.sub_sequence_number, i as u64);
        }
    }
    // The KCL hash-range rule never loses records: they come back either way.
    let half = HashKeyRange::new(kinesis_core::HashKey(0), kinesis_core::HashKey(u128::MAX / 2)).unwrap();
    match agg::deaggregate_for_shard("pk", data, half) {
        Ok(v) => assert_eq!(v.len(), out.len()),
        Err(e) => assert_eq!(e.records.len(), out.len()),
    }
});
