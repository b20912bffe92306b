//! The KPL aggregation decoder, with the KCL's semantics.

use std::collections::HashMap;
use std::sync::Arc;

use super::wire;
use super::{DIGEST_LEN, MAGIC};
use crate::hash::{hash_key, md5_digest};
use crate::types::{HashKey, HashKeyRange};
use bytes::Bytes;

/// Partition keys already decoded, with their hash keys once computed: user records that share
/// a key across aggregates share one `Arc<str>`, the key is copied and checked once, and its
/// MD5 (for the shard-range rule) is computed once, not once per aggregate. Keep one per shard
/// reader. Bounded: emptied when it holds [`KeyCache::CAPACITY`] keys.
///
/// When keys rarely repeat (random keys: fewer than one lookup in eight hits), the cache steps
/// aside for a while rather than pay for keys it will never see again.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: HashMap<Box<[u8]>, CachedKey, foldhash::fast::RandomState>,
    /// Lookups and hits since the last look at the hit rate.
    lookups: u32,
    hits: u32,
    /// Keys still to pass without the cache.
    bypass: u32,
}

/// A decoded key and, once computed, its hash key.
type CachedKey = (Arc<str>, Option<HashKey>);

impl KeyCache {
    /// Most keys held; the cache starts over beyond this.
    pub const CAPACITY: usize = 4096;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lookups between looks at the hit rate, and how many keys pass by after a poor one.
    const WINDOW: u32 = 4096;
    const BYPASS: u32 = 65_536;

    /// The key for these bytes (valid UTF-8, checked by the reader), and its hash if known.
    fn get(&mut self, bytes: &[u8]) -> (Arc<str>, Option<HashKey>) {
        if self.bypass > 0 {
            self.bypass -= 1;
            return (
                Arc::from(std::str::from_utf8(bytes).unwrap_or_default()),
                None,
            );
        }
        self.lookups += 1;
        if self.lookups >= Self::WINDOW {
            if self.hits < self.lookups / 8 {
                self.bypass = Self::BYPASS;
                self.keys.clear();
            }
            self.lookups = 0;
            self.hits = 0;
        }
        if let Some((k, h)) = self.keys.get(bytes) {
            self.hits += 1;
            return (Arc::clone(k), *h);
        }
        if self.keys.len() >= Self::CAPACITY {
            self.keys.clear();
        }
        let key: Arc<str> = Arc::from(std::str::from_utf8(bytes).unwrap_or_default());
        self.keys.insert(bytes.into(), (Arc::clone(&key), None));
        (key, None)
    }

    fn set_hash(&mut self, bytes: &[u8], hash: HashKey) {
        if let Some(entry) = self.keys.get_mut(bytes) {
            entry.1 = Some(hash);
        }
    }
}

/// A user record taken out of a Kinesis record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeaggregatedRecord {
    /// The user record's partition key (the outer key for a plain record).
    pub partition_key: Arc<str>,
    /// The user record's explicit hash key, if the aggregate carried one (always `None` for a
    /// plain record: GetRecords does not return it).
    pub explicit_hash_key: Option<HashKey>,
    /// The user record's data; a slice of the Kinesis record's data, not a copy.
    pub data: Bytes,
    /// Index of the user record inside the aggregate (0 for a plain record); the KCL's
    /// `subSequenceNumber`, used for checkpoints inside an aggregate.
    pub sub_sequence_number: u64,
    /// Whether it came out of a KPL aggregate.
    pub aggregated: bool,
}

impl DeaggregatedRecord {
    /// The hash key that routed (or would route) this record.
    pub fn hash_key(&self) -> HashKey {
        self.explicit_hash_key
            .unwrap_or_else(|| hash_key(&self.partition_key))
    }
}

/// Why data is not a valid KPL aggregate. [`deaggregate`] then delivers it as one plain record,
/// as the KCL does; [`parse_aggregate`] returns this so a caller can log or count it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotAggregated {
    /// Does not start with the magic `F3 89 9A C2`: an ordinary record.
    #[error("no KPL magic prefix")]
    NoMagic,
    /// Magic present, but nothing longer than the 16-byte digest after it.
    #[error("too short for a KPL aggregate ({len} bytes)")]
    TooShort {
        /// Length of the data.
        len: usize,
    },
    /// The MD5 trailer does not match the protobuf body.
    #[error("MD5 checksum does not match")]
    BadChecksum,
    /// The body is not a valid `AggregatedRecord` message.
    #[error("protobuf does not parse: {0}")]
    BadProtobuf(String),
    /// A proto2 `required` field is missing.
    #[error("required field {0} is missing")]
    MissingField(&'static str),
    /// A record points past the end of a key table.
    #[error("record {record} refers to {table} index {index}, but the table has {len} entries")]
    BadIndex {
        /// Which table.
        table: &'static str,
        /// Record position in the aggregate.
        record: usize,
        /// The index it refers to.
        index: u64,
        /// Table length.
        len: usize,
    },
    /// An explicit hash key table entry that is not a decimal in `0..=2^128-1`.
    #[error("explicit hash key table entry {0:?} is invalid")]
    BadExplicitHashKey(String),
    /// A valid aggregate holding no records (the KCL would deliver nothing; we deliver the raw
    /// record so nothing is lost).
    #[error("aggregate holds no records")]
    Empty,
}

/// KCL rule: an aggregate holding a user record whose hash key is outside the shard's range is
/// dropped whole. [`deaggregate_for_shard`] reports it with the records, so the caller decides
/// (the KCL drops them silently; callers should at least log and count).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "aggregate has a user record (sub-sequence {sub_sequence_number}, hash key {hash_key}) outside \
     the shard's hash key range; the KCL drops the whole aggregate"
)]
pub struct OutsideShard {
    /// The first offending user record's hash key.
    pub hash_key: HashKey,
    /// The first offending user record's sub-sequence number.
    pub sub_sequence_number: u64,
    /// Every user record of the aggregate.
    pub records: Vec<DeaggregatedRecord>,
}

/// Whether `data` starts like a KPL aggregate (magic, and longer than magic + digest). It may
/// still fail to decode.
pub fn has_aggregate_prefix(data: &[u8]) -> bool {
    data.len() > MAGIC.len() + DIGEST_LEN && data.starts_with(&MAGIC)
}

/// Decodes a KPL aggregate, or says why `data` is not one.
pub fn parse_aggregate(data: &Bytes) -> Result<Vec<DeaggregatedRecord>, NotAggregated> {
    parse(data, None).map_err(|e| match e {
        Failure::Not(n) => n,
        // Unreachable without a range; kept total instead of panicking.
        Failure::Outside { .. } => NotAggregated::Empty,
    })
}

/// Splits a Kinesis record into its user records.
///
/// An aggregate yields its user records with sub-sequence numbers `0..n`. Anything else (no
/// magic, too short, bad MD5, bad protobuf, missing field, bad index, empty) is delivered
/// unchanged as one plain record with `partition_key` — the KCL's behaviour, so data written by
/// other producers is never lost.
///
/// ```
/// use bytes::Bytes;
/// let recs = kinesis_core::agg::deaggregate("pk", Bytes::from("plain data"));
/// assert_eq!(recs.len(), 1);
/// assert!(!recs[0].aggregated);
/// ```
pub fn deaggregate(partition_key: &str, data: Bytes) -> Vec<DeaggregatedRecord> {
    match parse(&data, None) {
        Ok(records) => records,
        Err(_) => vec![plain(partition_key, data)],
    }
}

/// [`deaggregate`] with the KCL's hash-range rule for the shard the record was read from:
/// if any user record of an aggregate hashes outside `range`, the aggregate is returned as
/// [`OutsideShard`] instead. Plain records are never checked (the KCL does not check them).
pub fn deaggregate_for_shard(
    partition_key: &str,
    data: Bytes,
    range: HashKeyRange,
) -> Result<Vec<DeaggregatedRecord>, OutsideShard> {
    let mut out = Vec::new();
    shard_into(partition_key, data, range, None, &mut out, &mut |r| r)?;
    Ok(out)
}

/// [`deaggregate_for_shard`] into the caller's vector: each user record goes through `map` and
/// is pushed onto `out` (no intermediate vector), with partition keys shared through `keys`.
/// On `Err`, `out` is left as it was.
///
/// ```
/// use bytes::Bytes;
/// use kinesis_core::{agg::KeyCache, HashKeyRange};
/// let (mut keys, mut out) = (KeyCache::new(), Vec::new());
/// kinesis_core::agg::deaggregate_for_shard_into("pk", Bytes::from("plain"), HashKeyRange::FULL,
///     &mut keys, &mut out, |r| (r.sub_sequence_number, r.data.len())).unwrap();
/// assert_eq!(out, [(0, 5)]);
/// ```
pub fn deaggregate_for_shard_into<T>(
    partition_key: &str,
    data: Bytes,
    range: HashKeyRange,
    keys: &mut KeyCache,
    out: &mut Vec<T>,
    mut map: impl FnMut(DeaggregatedRecord) -> T,
) -> Result<(), OutsideShard> {
    shard_into(partition_key, data, range, Some(keys), out, &mut map)
}

fn shard_into<T>(
    partition_key: &str,
    data: Bytes,
    range: HashKeyRange,
    keys: Option<&mut KeyCache>,
    out: &mut Vec<T>,
    map: &mut impl FnMut(DeaggregatedRecord) -> T,
) -> Result<(), OutsideShard> {
    match parse_into(&data, Some(range), keys, out, map) {
        Ok(()) => Ok(()),
        Err(Failure::Outside {
            hash_key,
            sub_sequence_number,
        }) => {
            let records = parse(&data, None).unwrap_or_default();
            Err(OutsideShard {
                hash_key,
                sub_sequence_number,
                records,
            })
        }
        Err(Failure::Not(_)) => {
            out.push(map(plain(partition_key, data)));
            Ok(())
        }
    }
}

fn plain(partition_key: &str, data: Bytes) -> DeaggregatedRecord {
    DeaggregatedRecord {
        partition_key: partition_key.into(),
        explicit_hash_key: None,
        data,
        sub_sequence_number: 0,
        aggregated: false,
    }
}

enum Failure {
    Not(NotAggregated),
    Outside {
        hash_key: HashKey,
        sub_sequence_number: u64,
    },
}

impl From<NotAggregated> for Failure {
    fn from(n: NotAggregated) -> Self {
        Self::Not(n)
    }
}

fn parse(data: &Bytes, range: Option<HashKeyRange>) -> Result<Vec<DeaggregatedRecord>, Failure> {
    let mut out = Vec::new();
    parse_into(data, range, None, &mut out, &mut |r| r)?;
    Ok(out)
}

/// Decodes into `out` through `map`; on failure `out` is as it was.
fn parse_into<T>(
    data: &Bytes,
    range: Option<HashKeyRange>,
    cache: Option<&mut KeyCache>,
    out: &mut Vec<T>,
    map: &mut impl FnMut(DeaggregatedRecord) -> T,
) -> Result<(), Failure> {
    let start = out.len();
    let result = parse_each(data, range, cache, out, map);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn parse_each<T>(
    data: &Bytes,
    range: Option<HashKeyRange>,
    mut cache: Option<&mut KeyCache>,
    out: &mut Vec<T>,
    map: &mut impl FnMut(DeaggregatedRecord) -> T,
) -> Result<(), Failure> {
    // Every key hashes into the full range (a stream's only shard): nothing to check, and no
    // MD5 of each partition key.
    let range = range.filter(|r| *r != HashKeyRange::FULL);
    if !data.starts_with(&MAGIC) {
        return Err(NotAggregated::NoMagic.into());
    }
    if data.len() <= MAGIC.len() + DIGEST_LEN {
        return Err(NotAggregated::TooShort { len: data.len() }.into());
    }
    let split = data.len() - DIGEST_LEN;
    let body = &data[MAGIC.len()..split];
    if md5_digest(body) != data[split..] {
        return Err(NotAggregated::BadChecksum.into());
    }
    let bad = |e: wire::WireError| NotAggregated::BadProtobuf(e.to_string());
    let msg = wire::read_message(body).map_err(bad)?;
    if msg.records.is_empty() {
        return Err(NotAggregated::Empty.into());
    }
    // read_message checked the strings are UTF-8.
    let text =
        |r: &std::ops::Range<usize>| std::str::from_utf8(&body[r.clone()]).unwrap_or_default();
    // Keys, and their hashes when the cache knows them.
    let mut pks: Vec<Arc<str>> = Vec::with_capacity(msg.partition_keys.len());
    let mut known: Vec<Option<HashKey>> = Vec::with_capacity(msg.partition_keys.len());
    for r in &msg.partition_keys {
        let (k, h) = match cache.as_deref_mut() {
            Some(c) => c.get(&body[r.clone()]),
            None => (Arc::from(text(r)), None),
        };
        pks.push(k);
        known.push(h);
    }
    let ehks = msg
        .explicit_hash_keys
        .iter()
        .map(|r| {
            HashKey::parse(text(r))
                .map_err(|_| NotAggregated::BadExplicitHashKey(text(r).to_owned()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Hash of each partition-key table entry, computed once per entry (or once per cache) and
    // only when checking.
    let mut pk_hashes = known;

    // Offsets from the reader are into `body`, which starts after the magic.
    let offset = MAGIC.len();
    out.reserve(msg.records.len());
    for (i, rec_range) in msg.records.into_iter().enumerate() {
        let r = wire::read_record(body, rec_range).map_err(bad)?;
        let pk_idx = r
            .partition_key_index
            .ok_or(NotAggregated::MissingField("partition_key_index"))?;
        let data_range = r.data.ok_or(NotAggregated::MissingField("data"))?;
        if r.tag_missing_key {
            return Err(NotAggregated::MissingField("tags.key").into());
        }
        let (pk_pos, pk) = index(&pks, "partition_key_table", i, pk_idx)?;
        let ehk = match r.explicit_hash_key_index {
            Some(e) => Some(*index(&ehks, "explicit_hash_key_table", i, e)?.1),
            None => None,
        };
        let sub_sequence_number = i as u64;
        if let Some(range) = range {
            let h = match ehk {
                Some(h) => h,
                None => match pk_hashes.get_mut(pk_pos) {
                    Some(Some(h)) => *h,
                    Some(slot) => {
                        let h = hash_key(pk);
                        *slot = Some(h);
                        if let (Some(c), Some(r)) =
                            (cache.as_deref_mut(), msg.partition_keys.get(pk_pos))
                        {
                            c.set_hash(&body[r.clone()], h);
                        }
                        h
                    }
                    None => hash_key(pk),
                },
            };
            if !range.contains(h) {
                return Err(Failure::Outside {
                    hash_key: h,
                    sub_sequence_number,
                });
            }
        }
        out.push(map(DeaggregatedRecord {
            partition_key: Arc::clone(pk),
            explicit_hash_key: ehk,
            data: data.slice(data_range.start + offset..data_range.end + offset),
            sub_sequence_number,
            aggregated: true,
        }));
    }
    Ok(())
}

fn index<'a, T>(
    table: &'a [T],
    name: &'static str,
    record: usize,
    idx: u64,
) -> Result<(usize, &'a T), NotAggregated> {
    let found = usize::try_from(idx)
        .ok()
        .and_then(|i| Some((i, table.get(i)?)));
    found.ok_or(NotAggregated::BadIndex {
        table: name,
        record,
        index: idx,
        len: table.len(),
    })
}
