//! Partition key → hash key, as Kinesis computes it.
//!
//! `hash_key(pk)` is the MD5 digest of the key's UTF-8 bytes read as an unsigned big-endian
//! 128-bit integer (PutRecordsRequestEntry docs; the KCL's `new BigInteger(1, md5(pk))`).

use crate::types::HashKey;

/// The hash key Kinesis uses to place a record with this partition key.
pub fn hash_key(partition_key: &str) -> HashKey {
    HashKey(u128::from_be_bytes(md5_digest(partition_key.as_bytes())))
}

/// MD5 of `bytes` (used by the aggregation codec and by [`hash_key`]).
///
/// `md5-many`'s single-message MD5 rather than RustCrypto's `md-5`: the same digest (a property
/// test below checks it against `md-5`), about 1.4× the throughput (the aggregates' MD5 is a
/// fifth of the producer's CPU).
pub(crate) fn md5_digest(bytes: &[u8]) -> [u8; 16] {
    md5_many::md5(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest as _;
    use proptest::prelude::*;

    fn reference(bytes: &[u8]) -> [u8; 16] {
        md5::Md5::digest(bytes).into()
    }

    #[test]
    fn the_digest_is_md5_at_every_length_around_the_block_edges() {
        // Padding changes at 56 bytes mod 64 (the length no longer fits the last block).
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i * 31 + 7).to_le_bytes()[0])
            .collect();
        let mut lengths: Vec<usize> = (0..=300).collect();
        lengths.extend([
            1_000, 4_095, 4_096, 4_097, 51_199, 51_200, 51_201, 65_536, 70_000,
        ]);
        for n in lengths {
            assert_eq!(md5_digest(&data[..n]), reference(&data[..n]), "{n} bytes");
        }
    }

    proptest! {
        #[test]
        fn the_digest_is_md5_of_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..5_000)) {
            prop_assert_eq!(md5_digest(&data), reference(&data));
        }
    }

    #[test]
    fn known_values() {
        // MD5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(hash_key("a").0, 0x0cc175b9c0f1b6a831c399e269772661);
        assert_eq!(
            hash_key("a").to_string(),
            "16955237001963240173058271559858726497"
        );
    }
}
