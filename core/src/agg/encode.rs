//! The KPL aggregation encoder with exact, incremental size accounting.

use std::collections::HashMap;
use std::hash::BuildHasher as _;

use foldhash::fast::RandomState;

use bytes::Bytes;

use super::{DIGEST_LEN, MAGIC};
use crate::hash::{md5_digest, md5_digests};
use crate::record::{KinesisRecord, UserRecord};
use crate::types::{HashKey, PartitionKey};

/// Default maximum size of one Kinesis record (data + partition key): 1 MiB, the API's default
/// per-record limit.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The largest per-record limit a stream can be configured with (`UpdateMaxRecordSize`): 10 MiB.
pub const MAX_RECORD_BYTES_LIMIT: usize = 10 * 1024 * 1024;

/// Why an aggregator refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    /// The record alone is larger than the maximum, so it can never be sent.
    #[error("record is {size} bytes (data + partition key); the limit is {limit}")]
    RecordTooLarge {
        /// Data plus partition key, in bytes.
        size: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// A maximum outside `1..=10 MiB`.
    #[error("maximum record size {0} is outside 1..=10485760 bytes")]
    InvalidMaxSize(usize),
}

/// An [`Aggregator`] that could not take a record hands it back.
#[derive(Debug)]
pub enum TryAdd {
    /// The record was added.
    Added,
    /// The aggregate is full: finish it, then add the record to a new one.
    Full(UserRecord),
}

/// Builds one aggregated Kinesis record from user records.
///
/// Sizes are exact: [`Aggregator::size_bytes`] is the size (data + outer partition key) of the
/// record that [`Aggregator::finish`] will return, and [`Aggregator::size_with`] tells, before
/// adding, what it would be with one more record. A single user record is returned as a plain
/// Kinesis record, not wrapped, as the KPL does.
///
/// The outer partition key and explicit hash key are the first user record's, so the aggregate
/// goes to the shard that the first record would go to. A caller that groups records by predicted
/// shard (the producer does) therefore keeps every user record on its own shard.
///
/// A caller that keeps the records itself (to hand them back on failure, as the producer does)
/// uses [`AggregateLayout`] instead: the same accounting without a second reference to each
/// record's data.
///
/// ```
/// use bytes::Bytes;
/// use kinesis_core::{agg::{Aggregator, TryAdd}, PartitionKey, UserRecord};
/// let mut agg = Aggregator::new(1024 * 1024).unwrap();
/// for i in 0..3 {
///     let rec = UserRecord::new(PartitionKey::new(format!("k{i}")).unwrap(), None, Bytes::from("hi"));
///     assert!(matches!(agg.try_add(rec).unwrap(), TryAdd::Added));
/// }
/// let size = agg.size_bytes();
/// let kr = agg.finish().unwrap();
/// assert_eq!(kr.user_records, 3);
/// assert_eq!(kr.data.len() + kr.partition_key.len_bytes(), size);
/// ```
#[derive(Debug)]
pub struct Aggregator {
    layout: AggregateLayout,
    data: Vec<Bytes>,
}

impl Aggregator {
    /// An empty aggregator for records of at most `max_bytes` (data + partition key),
    /// `1..=10 MiB`; [`DEFAULT_MAX_RECORD_BYTES`] is the API default.
    pub fn new(max_bytes: usize) -> Result<Self, AggregateError> {
        Ok(Self {
            layout: AggregateLayout::new(max_bytes)?,
            data: Vec::new(),
        })
    }

    /// The configured maximum record size.
    pub fn max_bytes(&self) -> usize {
        self.layout.max_bytes()
    }

    /// Number of user records added since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.layout.len()
    }

    /// Whether no user record is waiting.
    pub fn is_empty(&self) -> bool {
        self.layout.is_empty()
    }

    /// Size (data + outer partition key) of the Kinesis record [`finish`](Self::finish) would
    /// return now; 0 when empty.
    pub fn size_bytes(&self) -> usize {
        self.layout.size_bytes()
    }

    /// The exact size the Kinesis record would have with `record` added.
    pub fn size_with(&self, record: &UserRecord) -> usize {
        self.layout.size_with(record)
    }

    /// Adds `record` if the result still fits the maximum; otherwise hands it back in
    /// [`TryAdd::Full`]. A record that could never fit, even alone, is an error.
    pub fn try_add(&mut self, record: UserRecord) -> Result<TryAdd, AggregateError> {
        if !self.layout.try_add(&record)? {
            return Ok(TryAdd::Full(record));
        }
        self.data.push(record.data);
        Ok(TryAdd::Added)
    }

    /// Takes what was added as one Kinesis record and empties the aggregator; `None` if empty.
    pub fn finish(&mut self) -> Option<KinesisRecord> {
        let out = self.layout.finish(&self.data).ok().flatten();
        self.data.clear();
        out
    }
}

/// The data given to [`AggregateLayout::finish`] is not that of the records added (another
/// count or other lengths: a caller's bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("aggregate of {expected} records finished with data that does not match them")]
pub struct LayoutMismatch {
    /// Records added.
    pub expected: usize,
}

/// The exact size accounting and key tables of one aggregate whose records the caller keeps:
/// [`try_add`](Self::try_add) takes a reference (no copy, no reference count), and
/// [`finish`](Self::finish) is given the same records' data, in the same order, to write.
///
/// ```
/// use bytes::Bytes;
/// use kinesis_core::{agg::AggregateLayout, PartitionKey, UserRecord};
/// let records: Vec<UserRecord> = (0..3)
///     .map(|i| UserRecord::new(PartitionKey::new(format!("k{i}")).unwrap(), None, Bytes::from("hi")))
///     .collect();
/// let mut layout = AggregateLayout::new(1024 * 1024).unwrap();
/// for r in &records {
///     assert!(layout.try_add(r).unwrap()); // false: full, finish first
/// }
/// let kr = layout.finish(records.iter().map(|r| &r.data)).unwrap().unwrap();
/// assert_eq!(kr.user_records, 3);
/// ```
#[derive(Debug)]
pub struct AggregateLayout {
    max_bytes: usize,
    /// Positions in `pk_table`, found by the key's hash: one copy of each key (a key clone is
    /// an atomic count, twice per new key per aggregate with a map holding keys).
    pk_index: hashbrown::HashTable<u32>,
    pk_hasher: RandomState,
    pk_table: Vec<PartitionKey>,
    ehk_index: HashMap<HashKey, u64, RandomState>,
    ehk_table: Vec<String>,
    records: Vec<Entry>,
    /// The first record's explicit hash key: the aggregate's outer explicit hash key.
    first_ehk: Option<HashKey>,
    /// Exact length of the serialized `AggregatedRecord` message.
    body_len: usize,
}

/// Table positions of a record's keys, if already present.
struct Lookup {
    /// The partition key's hash in `pk_index`.
    pk_hash: u64,
    pk: Option<u64>,
    ehk: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    pk: u64,
    ehk: Option<u64>,
    data_len: usize,
    /// Length of the `Record` message (without its tag and length prefix).
    len: usize,
}

/// Bytes a varint takes.
pub(crate) fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes 1 byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes a length-delimited field (1-byte tag + length + payload) takes.
fn field_len(payload: usize) -> usize {
    1 + varint_len(payload as u64) + payload
}

impl AggregateLayout {
    /// An empty layout for records of at most `max_bytes` (data + partition key), `1..=10 MiB`.
    pub fn new(max_bytes: usize) -> Result<Self, AggregateError> {
        if max_bytes == 0 || max_bytes > MAX_RECORD_BYTES_LIMIT {
            return Err(AggregateError::InvalidMaxSize(max_bytes));
        }
        Ok(Self {
            max_bytes,
            pk_index: hashbrown::HashTable::new(),
            pk_hasher: RandomState::default(),
            pk_table: Vec::new(),
            ehk_index: HashMap::default(),
            ehk_table: Vec::new(),
            records: Vec::new(),
            first_ehk: None,
            body_len: 0,
        })
    }

    /// The configured maximum record size.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Number of user records added since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no user record is waiting.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Size (data + outer partition key) of the Kinesis record [`finish`](Self::finish) would
    /// return now; 0 when empty.
    pub fn size_bytes(&self) -> usize {
        match self.records.as_slice() {
            [] => 0,
            [only] => only.data_len + self.pk_table[0].len_bytes(),
            _ => self.aggregated_size(self.body_len),
        }
    }

    fn aggregated_size(&self, body_len: usize) -> usize {
        // The outer partition key is the first record's key, which is always table entry 0.
        MAGIC.len() + body_len + DIGEST_LEN + self.pk_table[0].len_bytes()
    }

    /// The exact size the Kinesis record would have with `record` added.
    pub fn size_with(&self, record: &UserRecord) -> usize {
        if self.records.is_empty() {
            return record.size_bytes();
        }
        let (body, _) = self.body_len_with(record, &self.lookup(record));
        self.aggregated_size(body)
    }

    /// Where `record`'s keys already are in the tables.
    fn lookup(&self, record: &UserRecord) -> Lookup {
        let key = &record.partition_key;
        let pk_hash = self.pk_hasher.hash_one(key);
        Lookup {
            pk_hash,
            pk: self
                .pk_index
                .find(pk_hash, |&i| self.pk_table.get(i as usize) == Some(key))
                .map(|&i| u64::from(i)),
            ehk: record
                .explicit_hash_key
                .and_then(|h| self.ehk_index.get(&h).copied()),
        }
    }

    /// Body length with `record` added, and the record message length.
    fn body_len_with(&self, record: &UserRecord, found: &Lookup) -> (usize, usize) {
        let mut body = self.body_len;
        let pk_idx = found.pk.unwrap_or_else(|| {
            body += field_len(record.partition_key.len_bytes());
            self.pk_table.len() as u64
        });
        let mut rec_len = 1 + varint_len(pk_idx) + field_len(record.data.len());
        if let Some(ehk) = record.explicit_hash_key {
            let ehk_idx = found.ehk.unwrap_or_else(|| {
                body += field_len(decimal_len(ehk.0));
                self.ehk_table.len() as u64
            });
            rec_len += 1 + varint_len(ehk_idx);
        }
        body += field_len(rec_len);
        (body, rec_len)
    }

    /// Adds `record` if the result still fits the maximum and returns `true`; `false` (nothing
    /// added) when it does not: finish, then add it to the empty layout. A record that could
    /// never fit, even alone, is an error.
    pub fn try_add(&mut self, record: &UserRecord) -> Result<bool, AggregateError> {
        let alone = record.size_bytes();
        if alone > self.max_bytes {
            return Err(AggregateError::RecordTooLarge {
                size: alone,
                limit: self.max_bytes,
            });
        }
        let found = self.lookup(record);
        let (body, rec_len) = self.body_len_with(record, &found);
        if !self.records.is_empty() && self.aggregated_size(body) > self.max_bytes {
            return Ok(false);
        }
        self.body_len = body;
        if self.records.is_empty() {
            self.first_ehk = record.explicit_hash_key;
        }
        let pk = found.pk.unwrap_or_else(|| {
            // Far fewer keys than 4 G: an aggregate is at most 10 MiB.
            let i = u32::try_from(self.pk_table.len()).unwrap_or(u32::MAX);
            let (table, hasher) = (&self.pk_table, &self.pk_hasher);
            self.pk_index.insert_unique(found.pk_hash, i, |&j| {
                table.get(j as usize).map_or(0, |k| hasher.hash_one(k))
            });
            self.pk_table.push(record.partition_key.clone());
            u64::from(i)
        });
        let ehk = record.explicit_hash_key.map(|h| {
            found.ehk.unwrap_or_else(|| {
                let i = self.ehk_table.len() as u64;
                self.ehk_index.insert(h, i);
                self.ehk_table.push(h.to_string());
                i
            })
        });
        self.records.push(Entry {
            pk,
            ehk,
            data_len: record.data.len(),
            len: rec_len,
        });
        Ok(true)
    }

    /// Writes what was added as one Kinesis record, from `data`: the data of the records added,
    /// in the order they were added. Empties the layout; `Ok(None)` if it was empty. Data that
    /// does not match what was added (count or lengths) is refused, and the layout emptied.
    pub fn finish<'a>(
        &mut self,
        data: impl IntoIterator<Item = &'a Bytes>,
    ) -> Result<Option<KinesisRecord>, LayoutMismatch> {
        let out = self.write(data);
        self.clear();
        out
    }

    /// As [`finish`](Self::finish), then points each record's data into the aggregate written
    /// (a slice of its one buffer). The records' own buffers are released now, while they are
    /// still in the cache, instead of one by one when the records are settled; the aggregate's
    /// buffer is released with the last slice. A record left alone (an aggregate of one) keeps
    /// its data. On a mismatch nothing is changed.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use kinesis_core::agg::AggregateLayout;
    /// use kinesis_core::{PartitionKey, UserRecord};
    ///
    /// let mut records: Vec<UserRecord> = ["a", "b"]
    ///     .iter()
    ///     .map(|k| UserRecord::new(PartitionKey::new(*k).unwrap(), None, Bytes::from(vec![7u8; 10])))
    ///     .collect();
    /// let mut layout = AggregateLayout::new(1024 * 1024).unwrap();
    /// for r in &records {
    ///     assert!(layout.try_add(r).unwrap());
    /// }
    /// let kr = layout.finish_sharing(records.iter_mut().map(|r| &mut r.data)).unwrap().unwrap();
    /// assert_eq!(kr.user_records, 2);
    /// assert_eq!(records[1].data, Bytes::from(vec![7u8; 10])); // the same bytes, inside kr.data
    /// ```
    pub fn finish_sharing<'a>(
        &mut self,
        data: impl IntoIterator<Item = &'a mut Bytes>,
    ) -> Result<Option<KinesisRecord>, LayoutMismatch> {
        let mut data: Vec<&'a mut Bytes> = data.into_iter().collect();
        match self.finish_unsealed(data.iter_mut().map(|d| &mut **d))? {
            None => Ok(None),
            Some(Finished::Whole(kr)) => Ok(Some(kr)),
            Some(Finished::Unsealed(u)) => u.seal(data).map(Some),
        }
    }

    /// As [`finish_sharing`](Self::finish_sharing), but the aggregate is left without its MD5
    /// trailer, and its records' data is taken out of them (each left empty) until
    /// [`Unsealed::seal`] gives each its slice of the sealed aggregate. Sealing many at once
    /// ([`digest_all`]) computes their MD5s side by side, about 3× faster than one at a time.
    /// An aggregate of one record is [`Finished::Whole`]: that record, its data kept. On a
    /// mismatch nothing is changed (and the layout is emptied).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use kinesis_core::agg::{AggregateLayout, Finished, digest_all};
    /// use kinesis_core::{PartitionKey, UserRecord};
    ///
    /// let mut records: Vec<UserRecord> = ["a", "b"]
    ///     .iter()
    ///     .map(|k| UserRecord::new(PartitionKey::new(*k).unwrap(), None, Bytes::from(vec![7u8; 10])))
    ///     .collect();
    /// let mut layout = AggregateLayout::new(1024 * 1024).unwrap();
    /// for r in &records {
    ///     assert!(layout.try_add(r).unwrap());
    /// }
    /// let Some(Finished::Unsealed(mut u)) =
    ///     layout.finish_unsealed(records.iter_mut().map(|r| &mut r.data)).unwrap()
    /// else {
    ///     unreachable!("two records make an aggregate")
    /// };
    /// assert!(records[0].data.is_empty()); // taken until sealed
    /// digest_all([&mut u]);
    /// let kr = u.seal(records.iter_mut().map(|r| &mut r.data)).unwrap();
    /// assert_eq!(kr.user_records, 2);
    /// assert_eq!(records[1].data, Bytes::from(vec![7u8; 10])); // inside kr.data
    /// ```
    pub fn finish_unsealed<'a>(
        &mut self,
        data: impl IntoIterator<Item = &'a mut Bytes>,
    ) -> Result<Option<Finished>, LayoutMismatch> {
        let mut data: Vec<&'a mut Bytes> = data.into_iter().collect();
        let n = self.records.len();
        let out = match n {
            0 => Ok(None),
            1 => self
                .write(data.iter().map(|d| &**d))
                .map(|kr| kr.map(Finished::Whole)),
            _ => self.write_body(&data).map(|u| {
                for d in &mut data {
                    **d = Bytes::new();
                }
                Some(Finished::Unsealed(u))
            }),
        };
        self.clear();
        out
    }

    /// Magic + `AggregatedRecord` of `data` (more than one record), without the MD5.
    fn write_body(&self, data: &[&mut Bytes]) -> Result<Unsealed, LayoutMismatch> {
        let mismatch = LayoutMismatch {
            expected: self.records.len(),
        };
        if data.len() != self.records.len() {
            return Err(mismatch);
        }
        let mut spans = Vec::with_capacity(data.len());
        let mut checked = self.records.iter().zip(data).map(|(e, d)| {
            if d.len() == e.data_len {
                Ok(&**d)
            } else {
                Err(mismatch)
            }
        });
        let buf = self.serialize_body(&mut checked, Some(&mut spans))?;
        Ok(Unsealed {
            buf,
            spans,
            partition_key: self.pk_table[0].clone(),
            explicit_hash_key: self.first_ehk,
            sealed: false,
        })
    }

    /// Writes the aggregate (MD5 included), or the one record alone.
    fn write<'a>(
        &self,
        data: impl IntoIterator<Item = &'a Bytes>,
    ) -> Result<Option<KinesisRecord>, LayoutMismatch> {
        let n = self.records.len();
        let mismatch = LayoutMismatch { expected: n };
        // The data of each record, checked against what was added, in order.
        let mut data = data.into_iter();
        let mut checked = self.records.iter().map(|e| match data.next() {
            Some(d) if d.len() == e.data_len => Ok(d),
            _ => Err(mismatch),
        });
        let bytes = match n {
            0 => return Ok(None),
            1 => checked.next().unwrap_or(Err(mismatch))?.clone(),
            _ => {
                let mut buf = self.serialize_body(&mut checked, None)?;
                let digest = md5_digest(&buf[MAGIC.len()..]);
                buf.extend_from_slice(&digest);
                Bytes::from(buf)
            }
        };
        drop(checked);
        if data.next().is_some() {
            return Err(mismatch);
        }
        Ok(Some(KinesisRecord {
            partition_key: self.pk_table[0].clone(),
            explicit_hash_key: self.first_ehk,
            data: bytes,
            user_records: n,
        }))
    }

    /// Empties the layout without writing anything (its records are going elsewhere).
    pub fn clear(&mut self) {
        self.pk_index.clear();
        self.pk_table.clear();
        self.ehk_index.clear();
        self.ehk_table.clear();
        self.records.clear();
        self.first_ehk = None;
        self.body_len = 0;
    }

    /// Writes magic + `AggregatedRecord`, with room left for its MD5. Fields go in field-number
    /// order, as C++ protobuf (the KPL) writes them, and required fields are always written.
    fn serialize_body<'a>(
        &self,
        data: &mut impl Iterator<Item = Result<&'a Bytes, LayoutMismatch>>,
        mut spans: Option<&mut Vec<Span>>,
    ) -> Result<Vec<u8>, LayoutMismatch> {
        let mut buf = Vec::with_capacity(MAGIC.len() + self.body_len + DIGEST_LEN);
        buf.extend_from_slice(&MAGIC);
        for pk in &self.pk_table {
            put_len_field(&mut buf, 0x0A, pk.as_str().as_bytes());
        }
        for ehk in &self.ehk_table {
            put_len_field(&mut buf, 0x12, ehk.as_bytes());
        }
        for e in &self.records {
            // As many items as records: the iterator is never short.
            let d = data.next().unwrap_or(Err(LayoutMismatch {
                expected: self.records.len(),
            }))?;
            let mut head = [0u8; 32];
            let mut n = 0;
            head[n] = 0x1A;
            n += 1;
            n += write_varint(&mut head[n..], e.len as u64);
            head[n] = 0x08;
            n += 1;
            n += write_varint(&mut head[n..], e.pk);
            if let Some(ehk) = e.ehk {
                head[n] = 0x10;
                n += 1;
                n += write_varint(&mut head[n..], ehk);
            }
            head[n] = 0x1A;
            n += 1;
            n += write_varint(&mut head[n..], d.len() as u64);
            buf.extend_from_slice(&head[..n]);
            if let Some(spans) = spans.as_mut() {
                spans.push(Span {
                    start: buf.len(),
                    len: d.len(),
                });
            }
            buf.extend_from_slice(d);
        }
        debug_assert_eq!(buf.len() + DIGEST_LEN, buf.capacity());
        Ok(buf)
    }
}

/// Where one record's data is in an aggregate.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    len: usize,
}

/// What [`AggregateLayout::finish_unsealed`] wrote.
#[derive(Debug)]
pub enum Finished {
    /// One record alone: a plain Kinesis record (its data shared with the record's).
    Whole(KinesisRecord),
    /// An aggregate waiting for its MD5; its records' data is in it.
    Unsealed(Unsealed),
}

/// An aggregate written but for its MD5 trailer. Its records' data was taken out of them:
/// [`seal`](Self::seal) gives it back, as slices of the sealed aggregate. Only the size and the
/// count can be read before.
pub struct Unsealed {
    /// Magic + `AggregatedRecord`, with room for the MD5 (written by [`digest_all`]).
    buf: Vec<u8>,
    spans: Vec<Span>,
    partition_key: PartitionKey,
    explicit_hash_key: Option<HashKey>,
    /// The MD5 is in `buf`.
    sealed: bool,
}

impl std::fmt::Debug for Unsealed {
    // Not its bytes: up to 10 MiB of them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealed")
            .field("size_bytes", &self.size_bytes())
            .field("user_records", &self.user_records())
            .field("partition_key", &self.partition_key)
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

impl Unsealed {
    /// Size as Kinesis counts it once sealed: data (MD5 included) + partition key.
    pub fn size_bytes(&self) -> usize {
        let digest = if self.sealed { 0 } else { DIGEST_LEN };
        self.buf.len() + digest + self.partition_key.len_bytes()
    }

    /// How many user records it carries.
    pub fn user_records(&self) -> usize {
        self.spans.len()
    }

    /// The Kinesis record, its MD5 written (computed now unless [`digest_all`] did), and each
    /// record's data (`data`, the slots emptied by
    /// [`finish_unsealed`](AggregateLayout::finish_unsealed), in the same order) pointed at
    /// its slice of it. More or fewer slots than records is a caller's bug: each slot there is
    /// still gets its data, and the count is an error.
    pub fn seal<'a>(
        self,
        data: impl IntoIterator<Item = &'a mut Bytes>,
    ) -> Result<KinesisRecord, LayoutMismatch> {
        let (kr, slices) = self.seal_apart();
        slices.give(&kr.data, data)?;
        Ok(kr)
    }

    /// As [`seal`](Self::seal), but the records' data stays in the aggregate only: [`Slices`]
    /// says where, to give it back on the paths that need it ([`Slices::give`]). A caller that
    /// reads its records' data only when the aggregate is not delivered saves a shared slice
    /// (a reference count up, later down) per record on the path where it is.
    pub fn seal_apart(mut self) -> (KinesisRecord, Slices) {
        if !self.sealed {
            let digest = md5_digest(&self.buf[MAGIC.len()..]);
            self.buf.extend_from_slice(&digest);
        }
        let data = Bytes::from(self.buf);
        let spans = self.spans;
        let n = spans.len();
        let kr = KinesisRecord {
            partition_key: self.partition_key,
            explicit_hash_key: self.explicit_hash_key,
            data,
            user_records: n,
        };
        (kr, Slices { spans })
    }
}

/// Where each record's data is in a sealed aggregate ([`Unsealed::seal_apart`]).
#[derive(Debug, Clone)]
pub struct Slices {
    /// From the aggregate's first byte (its magic).
    spans: Vec<Span>,
}

impl Slices {
    /// How many records.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The records' data, in bytes, all together.
    pub fn data_bytes(&self) -> usize {
        self.spans.iter().map(|s| s.len).sum()
    }

    /// Points each slot (one per record, in order) at its record's data in `aggregate` (the
    /// sealed record's `data`). More or fewer slots than records, or an aggregate too short
    /// for them (not the one sealed: a caller's bug), is an error; each slot that could be
    /// given its data still is.
    pub fn give<'a>(
        &self,
        aggregate: &Bytes,
        slots: impl IntoIterator<Item = &'a mut Bytes>,
    ) -> Result<(), LayoutMismatch> {
        let n = self.spans.len();
        let mut slots = slots.into_iter();
        let mut given = 0;
        let mut short = false;
        // Spans first: zip pulls from its first iterator first, and a slot past the last span
        // must stay in `slots` to be noticed.
        for (span, slot) in self.spans.iter().zip(slots.by_ref()) {
            let end = span.start + span.len;
            if end <= aggregate.len() {
                *slot = aggregate.slice(span.start..end);
                given += 1;
            } else {
                short = true;
            }
        }
        if short || given != n || slots.next().is_some() {
            return Err(LayoutMismatch { expected: n });
        }
        Ok(())
    }
}

/// Computes the MD5 of every aggregate given that has none yet, side by side (SIMD lanes: 8
/// messages at a time on AVX2), and writes it in. [`Unsealed::seal`] then only shares.
pub fn digest_all<'a>(items: impl IntoIterator<Item = &'a mut Unsealed>) {
    let mut open: Vec<&mut Unsealed> = items.into_iter().filter(|u| !u.sealed).collect();
    let digests = {
        let bodies: Vec<&[u8]> = open.iter().map(|u| &u.buf[MAGIC.len()..]).collect();
        md5_digests(&bodies)
    };
    for (u, d) in open.iter_mut().zip(digests) {
        u.buf.extend_from_slice(&d);
        u.sealed = true;
    }
}

/// Writes a varint into `out` (at least 10 bytes long); returns its length.
#[allow(clippy::cast_possible_truncation)] // keeping the low 7 bits is the encoding
fn write_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

fn put_len_field(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    let mut head = [0u8; 11];
    head[0] = tag;
    let n = 1 + write_varint(&mut head[1..], payload.len() as u64);
    buf.extend_from_slice(&head[..n]);
    buf.extend_from_slice(payload);
}

/// Number of decimal digits of `v`.
fn decimal_len(v: u128) -> usize {
    if v == 0 { 1 } else { v.ilog10() as usize + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0u64, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16383, 2),
            (16384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
            let mut b = [0u8; 10];
            assert_eq!(write_varint(&mut b, v), n);
        }
    }

    /// The key index holds positions in the key table: across its growth (rehashes), every
    /// key is found again, each is written once, and separately made equal keys (other text
    /// allocations) are the same key. Read back, every record has its own key.
    #[test]
    fn each_key_is_in_the_table_once_across_the_index_growing() {
        let keys: Vec<String> = (0..3000).map(|i| format!("key-{i}")).collect();
        let mut records = Vec::new();
        for round in 0..3 {
            for k in &keys {
                // Rounds 1 and 2 make each key anew: equal, not the same allocation.
                let key = PartitionKey::new(k.clone()).unwrap();
                records.push(UserRecord::new(key, None, Bytes::from(format!("{round}"))));
            }
        }
        let mut l = AggregateLayout::new(MAX_RECORD_BYTES_LIMIT).unwrap();
        for r in &records {
            assert!(l.try_add(r).unwrap());
        }
        assert_eq!(l.pk_table.len(), keys.len());
        let predicted = l.size_bytes();
        let kr = l.finish(records.iter().map(|r| &r.data)).unwrap().unwrap();
        assert_eq!(kr.size_bytes(), predicted);
        let back = crate::agg::parse_aggregate(&kr.data).unwrap();
        assert_eq!(back.len(), records.len());
        for (b, r) in back.iter().zip(&records) {
            assert_eq!(&*b.partition_key, r.partition_key.as_str());
            assert_eq!(b.data, r.data);
        }
    }

    #[test]
    fn layout_refuses_data_that_does_not_match() {
        let rec = |k: &str, d: &'static str| {
            UserRecord::new(PartitionKey::new(k).unwrap(), None, Bytes::from(d))
        };
        let (a, b) = (rec("a", "one"), rec("b", "two"));
        let mut l = AggregateLayout::new(1024).unwrap();
        for (added, given, ok) in [
            (vec![&a, &b], vec![&a.data, &b.data], true),
            (vec![&a, &b], vec![&a.data], false),
            (vec![&a, &b], vec![&a.data, &b.data, &b.data], false),
            (vec![&a, &b], vec![&a.data, &Bytes::from("four")], false),
            (vec![&a], vec![&a.data], true),
            (vec![&a], vec![], false),
            (vec![&a], vec![&a.data, &a.data], false),
            (vec![&a], vec![&Bytes::from("x")], false),
        ] {
            for r in &added {
                assert!(l.try_add(r).unwrap());
            }
            let out = l.finish(given.iter().copied());
            assert_eq!(
                out.is_ok(),
                ok,
                "{} added, {} given",
                added.len(),
                given.len()
            );
            assert!(l.is_empty(), "emptied either way");
        }
        assert_eq!(l.finish([]), Ok(None));
    }

    #[test]
    fn sharing_points_each_record_into_the_aggregate_and_changes_nothing_on_a_mismatch() {
        let rec = |k: &str, d: &str| {
            UserRecord::new(
                PartitionKey::new(k).unwrap(),
                None,
                Bytes::from(d.to_owned()),
            )
        };
        let originals = [rec("a", "one"), rec("b", "two"), rec("a", "three")];
        let mut records = originals.clone();
        let mut l = AggregateLayout::new(1024).unwrap();
        for r in &records {
            assert!(l.try_add(r).unwrap());
        }
        let kr = l
            .finish_sharing(records.iter_mut().map(|r| &mut r.data))
            .unwrap()
            .unwrap();
        let whole = kr.data.as_ptr_range();
        for (r, o) in records.iter().zip(&originals) {
            assert_eq!(r.data, o.data, "same bytes");
            assert!(whole.contains(&r.data.as_ptr()), "inside the aggregate");
        }
        // The same aggregate as finish() writes.
        let mut again = AggregateLayout::new(1024).unwrap();
        for r in &originals {
            assert!(again.try_add(r).unwrap());
        }
        assert_eq!(
            again.finish(originals.iter().map(|r| &r.data)).unwrap(),
            Some(kr)
        );

        // A lone record keeps its own data (the Kinesis record is that data).
        let mut one = [rec("a", "solo")];
        assert!(l.try_add(&one[0]).unwrap());
        let before = one[0].data.as_ptr();
        l.finish_sharing(one.iter_mut().map(|r| &mut r.data))
            .unwrap();
        assert_eq!(one[0].data.as_ptr(), before);

        // Data that does not match what was added: refused, and left as it was.
        let mut two = [rec("a", "x"), rec("b", "yy")];
        for r in &two {
            assert!(l.try_add(r).unwrap());
        }
        two[1].data = Bytes::from("zzz");
        let ptrs: Vec<_> = two.iter().map(|r| r.data.as_ptr()).collect();
        assert!(
            l.finish_sharing(two.iter_mut().map(|r| &mut r.data))
                .is_err()
        );
        assert_eq!(
            two.iter().map(|r| r.data.as_ptr()).collect::<Vec<_>>(),
            ptrs
        );
        assert!(l.is_empty());
    }

    /// Sealed side by side or one at a time, unsealed aggregates are byte for byte what
    /// `finish` writes; their size is known before; their records' data is gone until sealed,
    /// then back as slices of the aggregate; a short slot list is an error that still restores
    /// the slots given.
    #[test]
    #[allow(clippy::cast_possible_truncation)] // test data: any bytes
    fn unsealed_aggregates_seal_to_what_finish_writes() {
        let sets: Vec<Vec<UserRecord>> = (0..11)
            .map(|s| {
                (0..(2 + s * 7))
                    .map(|i| {
                        let ehk = (i % 3 == 0).then_some(HashKey(u128::from(i as u32) << 90));
                        let key = PartitionKey::new(format!("k{}", i % 5)).unwrap();
                        UserRecord::new(
                            key,
                            ehk,
                            Bytes::from(vec![(s * 31 + i) as u8; i * 13 % 300]),
                        )
                    })
                    .collect()
            })
            .collect();
        let expected: Vec<KinesisRecord> = sets
            .iter()
            .map(|rs| {
                let mut l = AggregateLayout::new(MAX_RECORD_BYTES_LIMIT).unwrap();
                for r in rs {
                    assert!(l.try_add(r).unwrap());
                }
                l.finish(rs.iter().map(|r| &r.data)).unwrap().unwrap()
            })
            .collect();
        for side_by_side in [true, false] {
            let mut records = sets.clone();
            let mut open: Vec<Unsealed> = records
                .iter_mut()
                .map(|rs| {
                    let mut l = AggregateLayout::new(MAX_RECORD_BYTES_LIMIT).unwrap();
                    for r in rs.iter() {
                        assert!(l.try_add(r).unwrap());
                    }
                    let size = l.size_bytes();
                    match l
                        .finish_unsealed(rs.iter_mut().map(|r| &mut r.data))
                        .unwrap()
                    {
                        Some(Finished::Unsealed(u)) => {
                            assert_eq!(u.size_bytes(), size);
                            assert_eq!(u.user_records(), rs.len());
                            assert!(rs.iter().all(|r| r.data.is_empty()), "taken");
                            u
                        }
                        other => panic!("{other:?}"),
                    }
                })
                .collect();
            if side_by_side {
                digest_all(open.iter_mut());
                digest_all(open.iter_mut()); // twice: no second digest
            }
            for ((u, rs), (want, orig)) in open
                .into_iter()
                .zip(records.iter_mut())
                .zip(expected.iter().zip(&sets))
            {
                let size = u.size_bytes();
                let kr = u.seal(rs.iter_mut().map(|r| &mut r.data)).unwrap();
                assert_eq!(&kr, want);
                assert_eq!(kr.size_bytes(), size);
                let whole = kr.data.as_ptr_range();
                for (r, o) in rs.iter().zip(orig) {
                    assert_eq!(r.data, o.data);
                    assert!(o.data.is_empty() || whole.contains(&r.data.as_ptr()));
                }
            }
        }
        // The records' aggregate, unsealed, their data taken.
        let unsealed = |rs: &mut [UserRecord]| {
            let mut l = AggregateLayout::new(1024).unwrap();
            for r in rs.iter() {
                assert!(l.try_add(r).unwrap());
            }
            match l.finish_unsealed(rs.iter_mut().map(|r| &mut r.data)) {
                Ok(Some(Finished::Unsealed(u))) => u,
                other => panic!("{other:?}"),
            }
        };
        // One slot short: the given slot gets its data back, and the count is an error.
        let mut rs = sets[0].clone();
        let u = unsealed(&mut rs);
        assert_eq!(
            u.seal(rs[..1].iter_mut().map(|r| &mut r.data)),
            Err(LayoutMismatch { expected: 2 })
        );
        assert_eq!(rs[0].data, sets[0][0].data);
        // One slot too many: the records' slots get their data, and the count is an error.
        let mut rs = sets[0].clone();
        let u = unsealed(&mut rs);
        let mut extra = Bytes::from("extra");
        let slots = rs.iter_mut().map(|r| &mut r.data).chain([&mut extra]);
        assert_eq!(u.seal(slots), Err(LayoutMismatch { expected: 2 }));
        assert_eq!(rs[0].data, sets[0][0].data);
        assert_eq!(rs[1].data, sets[0][1].data);
    }

    /// Sealed apart, an aggregate is the same record; its slices give each record its data,
    /// later, as `seal` does, and refuse another aggregate (too short) or a wrong slot count.
    #[test]
    fn sealed_apart_the_slices_give_each_record_its_data_later() {
        let orig: Vec<UserRecord> = (0u8..40)
            .map(|i| {
                let key = PartitionKey::new(format!("k{}", i % 7)).unwrap();
                let ehk = (i % 4 == 0).then_some(HashKey(u128::from(i) << 100));
                let len = usize::from(i) * 11 % 200;
                UserRecord::new(key, ehk, Bytes::from(vec![i; len]))
            })
            .collect();
        let mut l = AggregateLayout::new(MAX_RECORD_BYTES_LIMIT).unwrap();
        for r in &orig {
            assert!(l.try_add(r).unwrap());
        }
        let want = l.finish(orig.iter().map(|r| &r.data)).unwrap().unwrap();
        for side_by_side in [true, false] {
            let mut rs = orig.clone();
            for r in &rs {
                assert!(l.try_add(r).unwrap());
            }
            let Ok(Some(Finished::Unsealed(mut u))) =
                l.finish_unsealed(rs.iter_mut().map(|r| &mut r.data))
            else {
                panic!("an aggregate")
            };
            if side_by_side {
                digest_all([&mut u]);
            }
            let (kr, slices) = u.seal_apart();
            assert_eq!(kr, want);
            assert_eq!(slices.len(), rs.len());
            let total: usize = orig.iter().map(|r| r.data.len()).sum();
            assert_eq!(slices.data_bytes(), total);
            assert!(rs.iter().all(|r| r.data.is_empty()), "not given yet");
            // Another, shorter aggregate: refused; the slots that fit it still get a slice.
            let short = kr.data.slice(..kr.data.len() / 2);
            assert!(
                slices
                    .give(&short, rs.iter_mut().map(|r| &mut r.data))
                    .is_err()
            );
            // Wrong counts: refused.
            let mut fewer: Vec<Bytes> = vec![Bytes::new(); rs.len() - 1];
            assert!(slices.give(&kr.data, fewer.iter_mut()).is_err());
            let mut more: Vec<Bytes> = vec![Bytes::new(); rs.len() + 1];
            assert!(slices.give(&kr.data, more.iter_mut()).is_err());
            assert!(
                more[..rs.len()]
                    .iter()
                    .zip(&orig)
                    .all(|(d, o)| *d == o.data)
            );
            // The right aggregate: each record's data, inside it.
            slices
                .give(&kr.data, rs.iter_mut().map(|r| &mut r.data))
                .unwrap();
            let whole = kr.data.as_ptr_range();
            for (r, o) in rs.iter().zip(&orig) {
                assert_eq!(r.data, o.data);
                assert!(o.data.is_empty() || whole.contains(&r.data.as_ptr()));
            }
        }
    }

    #[test]
    fn decimal_lengths() {
        for v in [0u128, 9, 10, 99, 100, u128::MAX] {
            assert_eq!(decimal_len(v), v.to_string().len());
        }
    }
}
