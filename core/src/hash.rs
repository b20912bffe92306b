//! Partition key → hash key, as Kinesis computes it.
//!
//! `hash_key(pk)` is the MD5 digest of the key's UTF-8 bytes read as an unsigned big-endian
//! 128-bit integer (PutRecordsRequestEntry docs; the KCL's `new BigInteger(1, md5(pk))`).

use md5::{Digest, Md5};

use crate::types::HashKey;

/// The hash key Kinesis uses to place a record with this partition key.
pub fn hash_key(partition_key: &str) -> HashKey {
    HashKey(u128::from_be_bytes(md5_digest(partition_key.as_bytes())))
}

/// MD5 of `bytes` (used by the aggregation codec and by [`hash_key`]).
pub(crate) fn md5_digest(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

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
