//! Validated Kinesis identifiers: partition keys, hash keys, shard ids, sequence numbers.
//!
//! Every type here is checked once, when it is built from untrusted input, so the rest of the
//! suite can pass it around without re-validating.
//!
//! ```
//! use kinesis_core::{HashKey, PartitionKey, SequenceNumber};
//! let pk = PartitionKey::new("user-42").unwrap();
//! let h = pk.hash_key();
//! assert_eq!(HashKey::parse(&h.to_string()).unwrap(), h);
//! assert!(SequenceNumber::parse("9").unwrap() < SequenceNumber::parse("10").unwrap());
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// Partition keys must hold 1 to 256 Unicode scalar values.
    #[error("partition key must be 1 to 256 characters, got {chars}")]
    PartitionKeyLength {
        /// Number of characters in the rejected key.
        chars: usize,
    },
    /// Explicit hash keys are decimal integers in `0..=2^128-1`.
    #[error("hash key {value:?} is not a decimal integer in 0..=2^128-1")]
    HashKey {
        /// The rejected text (cut to 64 characters).
        value: String,
    },
    /// Sequence numbers are non-empty strings of decimal digits.
    #[error("sequence number {value:?} is not a string of decimal digits")]
    SequenceNumber {
        /// The rejected text (cut to 64 characters).
        value: String,
    },
    /// Shard ids are 1 to 128 characters of `[a-zA-Z0-9_.-]`.
    #[error("shard id {value:?} is not valid")]
    ShardId {
        /// The rejected text (cut to 64 characters).
        value: String,
    },
    /// Stream names are 1 to 128 characters of `[a-zA-Z0-9_.-]`; ARNs start with `arn:`.
    #[error("stream {value:?} is not a valid stream name or ARN")]
    Stream {
        /// The rejected text (cut to 64 characters).
        value: String,
    },
    /// A hash-key range whose start is after its end.
    #[error("hash key range starts at {start} after its end {end}")]
    HashKeyRange {
        /// Range start.
        start: HashKey,
        /// Range end.
        end: HashKey,
    },
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Maximum number of characters in a partition key (Kinesis API).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// Text that carries a hash of itself, computed once when made: equality checks the hash
/// first, `Hash` writes only the hash (a function of the text: equal texts hash equally, however
/// long), and order is the text's. The shared core of [`PartitionKey`] and [`ShardId`].
#[derive(Clone)]
struct HashedText<H> {
    text: Arc<str>,
    hash: H,
}

impl<H: PartialEq> PartialEq for HashedText<H> {
    fn eq(&self, other: &Self) -> bool {
        // Clones of one key (a service reusing its keys) share the text: no need to read it.
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl<H: Eq> Eq for HashedText<H> {}

impl<H: std::hash::Hash> std::hash::Hash for HashedText<H> {
    fn hash<S: std::hash::Hasher>(&self, state: &mut S) {
        self.hash.hash(state);
    }
}

impl<H: Eq> PartialOrd for HashedText<H> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<H: Eq> Ord for HashedText<H> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

/// A partition key: 1 to 256 Unicode characters. Its hash routes the record to a shard.
///
/// The hash (MD5, as Kinesis computes it) is computed once, when the key is made, and travels
/// with every clone: a service that reuses its keys (hosts, tenants, devices) hashes each once,
/// not once per record. Equality, order and `Hash` are the key text's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey(HashedText<HashKey>);

impl PartitionKey {
    /// Validates and wraps a partition key.
    pub fn new(key: impl Into<Arc<str>>) -> Result<Self, InvalidInput> {
        let key: Arc<str> = key.into();
        let chars = key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            return Err(InvalidInput::PartitionKeyLength { chars });
        }
        let hash = crate::hash::hash_key(&key);
        Ok(Self(HashedText { text: key, hash }))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// Number of UTF-8 bytes, as Kinesis counts it against the record size limit.
    pub fn len_bytes(&self) -> usize {
        self.0.text.len()
    }

    /// The 128-bit hash key that Kinesis computes for this partition key.
    pub fn hash_key(&self) -> HashKey {
        self.0.hash
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for PartitionKey {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A point in the 128-bit hash-key space (`0..=2^128-1`); also the type of an explicit hash key.
///
/// Written and parsed as a decimal string, as in the Kinesis API and in the KPL's aggregation
/// tables.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HashKey(pub u128);

impl HashKey {
    /// The smallest hash key.
    pub const MIN: HashKey = HashKey(0);
    /// The largest hash key, `2^128 - 1`.
    pub const MAX: HashKey = HashKey(u128::MAX);

    /// Parses a decimal string as the Kinesis API writes it (`0|[1-9][0-9]{0,38}`), within
    /// `0..=2^128-1`. Leading zeros are accepted when reading (the KCL reads with `BigInteger`).
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let bad = || InvalidInput::HashKey { value: clip(s) };
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u128>().map(HashKey).map_err(|_| bad())
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashKey({})", self.0)
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for HashKey {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<u128> for HashKey {
    fn from(v: u128) -> Self {
        Self(v)
    }
}

/// An inclusive range of hash keys, as a shard's `HashKeyRange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashKeyRange {
    start: HashKey,
    end: HashKey,
}

impl HashKeyRange {
    /// The whole hash-key space.
    pub const FULL: HashKeyRange = HashKeyRange {
        start: HashKey::MIN,
        end: HashKey::MAX,
    };

    /// A range `start..=end`; rejects `start > end`.
    pub fn new(start: HashKey, end: HashKey) -> Result<Self, InvalidInput> {
        if start > end {
            return Err(InvalidInput::HashKeyRange { start, end });
        }
        Ok(Self { start, end })
    }

    /// Parses the decimal strings of a `HashKeyRange` from the API.
    pub fn parse(start: &str, end: &str) -> Result<Self, InvalidInput> {
        Self::new(HashKey::parse(start)?, HashKey::parse(end)?)
    }

    /// First hash key in the range.
    pub fn start(&self) -> HashKey {
        self.start
    }

    /// Last hash key in the range (inclusive).
    pub fn end(&self) -> HashKey {
        self.end
    }

    /// Whether `key` lies in the range (both ends inclusive).
    pub fn contains(&self, key: HashKey) -> bool {
        self.start <= key && key <= self.end
    }
}

/// A shard id such as `shardId-000000000007`.
///
/// Carries a hash of its text, computed once when made: maps keyed by shard (the producer looks
/// one up per record) hash 8 bytes, not the text. Equality and order are the text's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(HashedText<u64>);

impl ShardId {
    /// Validates a shard id: 1 to 128 characters of `[a-zA-Z0-9_.-]` (Kinesis API pattern).
    pub fn new(id: impl Into<Arc<str>>) -> Result<Self, InvalidInput> {
        let id: Arc<str> = id.into();
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(InvalidInput::ShardId { value: clip(&id) });
        }
        use std::hash::BuildHasher as _;
        let hash = foldhash::fast::FixedState::with_seed(0x5348_4152_4449_4421).hash_one(&*id);
        Ok(Self(HashedText { text: id, hash }))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The number in `shardId-000000000123` (123), if the id has that form. Kinesis numbers
    /// shards in creation order, so children have higher numbers than their parents.
    pub fn index(&self) -> Option<u64> {
        self.as_str()
            .strip_prefix("shardId-")
            .and_then(|n| n.parse().ok())
    }
}

impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for ShardId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A stream named by name or by ARN. API calls accept either; an ARN is needed across accounts.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum StreamRef {
    /// A stream name in the client's account and region.
    Name(Arc<str>),
    /// A stream ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
    Arn(Arc<str>),
}

impl StreamRef {
    /// Parses a name (1 to 128 characters of `[a-zA-Z0-9_.-]`) or an ARN (starts with `arn:`).
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        if s.starts_with("arn:") {
            let ok = s.len() <= 2048 && s.contains(":stream/");
            return if ok {
                Ok(Self::Arn(s.into()))
            } else {
                Err(InvalidInput::Stream { value: clip(s) })
            };
        }
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self::Name(s.into()))
        } else {
            Err(InvalidInput::Stream { value: clip(s) })
        }
    }

    /// The stream name, if given by name.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Name(n) => Some(n),
            Self::Arn(_) => None,
        }
    }

    /// The ARN, if given by ARN.
    pub fn arn(&self) -> Option<&str> {
        match self {
            Self::Arn(a) => Some(a),
            Self::Name(_) => None,
        }
    }

    /// The name, or the name part of the ARN.
    pub fn short_name(&self) -> &str {
        match self {
            Self::Name(n) => n,
            Self::Arn(a) => a.rsplit_once("stream/").map_or(a, |(_, n)| n),
        }
    }
}

impl fmt::Debug for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) | Self::Arn(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) | Self::Arn(n) => f.pad(n),
        }
    }
}

impl FromStr for StreamRef {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Sets `stream_name` or `stream_arn` on an SDK request builder from a [`StreamRef`]: every
/// Kinesis operation that names a stream takes either.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Runs against the testkit's embedded Kinesis emulator.
/// # let env = kinesis_testkit::TestEnv::start().await;
/// # let (client, orders) = (env.kinesis.clone(), env.create_stream(1).await);
/// # let arn = env.kinesis.describe_stream_summary().stream_name(&orders).send().await?
/// #     .stream_description_summary().ok_or("no summary")?.stream_arn().to_owned();
/// use aws_sdk_kinesis::primitives::Blob;
/// // A name ("orders") or an ARN ("arn:aws:kinesis:eu-west-1:123456789012:stream/orders"):
/// for text in [orders.as_str(), arn.as_str()] {
///     let stream = kinesis_core::StreamRef::parse(text)?;
///     let req = kinesis_core::with_stream!(client.put_record(), &stream);
///     let out = req.partition_key("user-1").data(Blob::new("hello")).send().await?;
///     assert_eq!(out.shard_id(), "shardId-000000000000"); // the stream's one shard
/// }
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! with_stream {
    ($req:expr, $stream:expr) => {
        match $stream {
            $crate::StreamRef::Name(n) => $req.stream_name(&**n),
            $crate::StreamRef::Arn(a) => $req.stream_arn(&**a),
        }
    };
}

/// A Kinesis sequence number: a decimal string of up to 128 digits, ordered numerically.
#[derive(Clone)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// Validates a sequence number (non-empty, decimal digits only, at most 128 of them).
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidInput::SequenceNumber { value: clip(s) });
        }
        Ok(Self(s.into()))
    }

    /// The sequence number as the API wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn significant(&self) -> &str {
        let t = self.0.trim_start_matches('0');
        if t.is_empty() { "0" } else { t }
    }
}

impl PartialEq for SequenceNumber {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for SequenceNumber {}

impl std::hash::Hash for SequenceNumber {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for SequenceNumber {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A position in a shard as the KCL records it in a lease's `checkpoint` attribute: a sentinel
/// or a sequence number with a sub-sequence number (the index of a user record inside a KPL
/// aggregate).
///
/// Ordering follows the KCL (`ExtendedSequenceNumber`): `AT_TIMESTAMP < TRIM_HORIZON < LATEST <`
/// every sequence number `< SHARD_END`; sequence numbers compare numerically, then by
/// sub-sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// `TRIM_HORIZON`: start at the oldest record.
    TrimHorizon,
    /// `LATEST`: start after the newest record.
    Latest,
    /// `AT_TIMESTAMP`: start at a time given by configuration (not stored in the lease).
    AtTimestamp,
    /// A record position.
    Sequence {
        /// The Kinesis record's sequence number.
        sequence_number: SequenceNumber,
        /// The user record's index inside the aggregate (0 for a plain record).
        sub_sequence_number: u64,
    },
    /// `SHARD_END`: the shard is closed and every record was processed.
    ShardEnd,
}

impl Checkpoint {
    /// The literal the KCL stores in the `checkpoint` attribute.
    pub fn as_str(&self) -> &str {
        match self {
            Self::TrimHorizon => "TRIM_HORIZON",
            Self::Latest => "LATEST",
            Self::AtTimestamp => "AT_TIMESTAMP",
            Self::ShardEnd => "SHARD_END",
            Self::Sequence {
                sequence_number, ..
            } => sequence_number.as_str(),
        }
    }

    /// Reads a `checkpoint` attribute and its `checkpointSubSequenceNumber`.
    pub fn parse(checkpoint: &str, sub_sequence_number: u64) -> Result<Self, InvalidInput> {
        Ok(match checkpoint {
            "TRIM_HORIZON" => Self::TrimHorizon,
            "LATEST" => Self::Latest,
            "AT_TIMESTAMP" => Self::AtTimestamp,
            "SHARD_END" => Self::ShardEnd,
            seq => Self::Sequence {
                sequence_number: SequenceNumber::parse(seq)?,
                sub_sequence_number,
            },
        })
    }

    /// The sub-sequence number stored beside the checkpoint (0 for sentinels).
    pub fn sub_sequence_number(&self) -> u64 {
        match self {
            Self::Sequence {
                sub_sequence_number,
                ..
            } => *sub_sequence_number,
            _ => 0,
        }
    }

    fn rank(&self) -> i8 {
        match self {
            Self::AtTimestamp => -3,
            Self::TrimHorizon => -2,
            Self::Latest => -1,
            Self::Sequence { .. } => 0,
            Self::ShardEnd => 1,
        }
    }
}

impl Ord for Checkpoint {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Self::Sequence {
                    sequence_number: a,
                    sub_sequence_number: sa,
                },
                Self::Sequence {
                    sequence_number: b,
                    sub_sequence_number: sb,
                },
            ) => a.cmp(b).then(sa.cmp(sb)),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Checkpoint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sequence {
                sequence_number,
                sub_sequence_number,
            } => {
                write!(f, "{sequence_number}/{sub_sequence_number}")
            }
            other => f.write_str(other.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_bounds() {
        assert!(PartitionKey::new("").is_err());
        assert!(PartitionKey::new("a").is_ok());
        assert!(PartitionKey::new("x".repeat(256)).is_ok());
        assert_eq!(
            PartitionKey::new("x".repeat(257)),
            Err(InvalidInput::PartitionKeyLength { chars: 257 })
        );
        // 256 characters of 4 bytes each is fine: the limit is in characters.
        assert!(PartitionKey::new("🔑".repeat(256)).is_ok());
        assert!(PartitionKey::new("🔑".repeat(257)).is_err());
    }

    #[test]
    fn shard_id_equality_hash_and_order_follow_the_text() {
        let ids = [
            "shardId-000000000002",
            "shardId-000000000010",
            "s",
            "shardId-000000000002",
        ]
        .map(|k| ShardId::new(k).unwrap());
        assert_eq!(ids[0], ids[3]);
        assert_ne!(ids[0], ids[1]);
        let mut sorted = ids.to_vec();
        sorted.sort();
        let text: Vec<&str> = sorted.iter().map(ShardId::as_str).collect();
        assert_eq!(
            text,
            [
                "s",
                "shardId-000000000002",
                "shardId-000000000002",
                "shardId-000000000010"
            ]
        );
        let set: std::collections::HashSet<ShardId> = ids.iter().cloned().collect();
        assert_eq!(set.len(), 3);
        assert_eq!(ids[1].index(), Some(10));
        assert_eq!(format!("{} {:?}", ids[2], ids[2]), "s s");
    }

    #[test]
    fn partition_key_hash_equality_and_order_follow_the_text() {
        let keys = ["b", "a", "user-42", "🔑", "a"].map(|k| PartitionKey::new(k).unwrap());
        for k in &keys {
            assert_eq!(k.hash_key(), crate::hash::hash_key(k.as_str()));
            assert_eq!(k.clone(), *k);
        }
        assert_eq!(keys[1], keys[4]);
        assert_ne!(keys[0], keys[1]);
        let mut sorted: Vec<&str> = keys.iter().map(PartitionKey::as_str).collect();
        sorted.sort_unstable();
        let mut by_key = keys.to_vec();
        by_key.sort();
        assert_eq!(
            by_key.iter().map(PartitionKey::as_str).collect::<Vec<_>>(),
            sorted
        );
        let set: std::collections::HashSet<PartitionKey> = keys.iter().cloned().collect();
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn hash_key_parse() {
        assert_eq!(HashKey::parse("0"), Ok(HashKey(0)));
        assert_eq!(
            HashKey::parse("340282366920938463463374607431768211455"),
            Ok(HashKey::MAX)
        );
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            " 1",
            "abc",
            "340282366920938463463374607431768211456",
        ] {
            assert!(HashKey::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HashKey::MAX.to_string(),
            "340282366920938463463374607431768211455"
        );
    }

    #[test]
    fn hash_key_range() {
        let r = HashKeyRange::parse("10", "20").unwrap();
        assert!(r.contains(HashKey(10)) && r.contains(HashKey(20)));
        assert!(!r.contains(HashKey(9)) && !r.contains(HashKey(21)));
        assert!(HashKeyRange::parse("21", "20").is_err());
    }

    #[test]
    fn shard_id() {
        let s = ShardId::new("shardId-000000000123").unwrap();
        assert_eq!(s.index(), Some(123));
        assert!(ShardId::new("").is_err());
        assert!(ShardId::new("shard id").is_err());
        assert_eq!(ShardId::new("custom").unwrap().index(), None);
    }

    #[test]
    fn stream_ref() {
        assert_eq!(StreamRef::parse("orders").unwrap().name(), Some("orders"));
        let arn = StreamRef::parse("arn:aws:kinesis:us-east-1:123456789012:stream/orders").unwrap();
        assert_eq!(arn.short_name(), "orders");
        assert!(arn.arn().is_some());
        assert!(StreamRef::parse("").is_err());
        assert!(StreamRef::parse("bad name").is_err());
        assert!(StreamRef::parse("arn:aws:s3:::bucket").is_err());
    }

    #[test]
    fn sequence_numbers_compare_numerically() {
        let p = |s| SequenceNumber::parse(s).unwrap();
        assert!(p("9") < p("10"));
        assert!(p("49590338271490256608559692538361571095921575989136588898") > p("4959"));
        assert_eq!(p("007"), p("7"));
        assert!(SequenceNumber::parse("12a").is_err());
        assert!(SequenceNumber::parse("").is_err());
    }

    #[test]
    fn checkpoint_order_matches_kcl() {
        let seq = |s: &str, sub| Checkpoint::Sequence {
            sequence_number: SequenceNumber::parse(s).unwrap(),
            sub_sequence_number: sub,
        };
        let ordered = [
            Checkpoint::AtTimestamp,
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            seq("9", 0),
            seq("9", 1),
            seq("10", 0),
            Checkpoint::ShardEnd,
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        assert_eq!(Checkpoint::parse("SHARD_END", 0), Ok(Checkpoint::ShardEnd));
        assert_eq!(Checkpoint::parse("123", 4), Ok(seq("123", 4)));
        assert!(Checkpoint::parse("NOPE", 0).is_err());
    }
}
