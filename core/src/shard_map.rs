//! The shard map: which open shard owns a hash key, and how closed shards are related.
//!
//! ```text
//!   ListShards (paged) ─► Vec<Shard> ─► ShardMap ─┬─ shard_for(hash key) ─► open shard  (top 8 bits → table → search)
//!                                               ├─ children(id) / parents(id)       (lineage)
//!                                               └─ gaps()                            (resharding)
//! ```
//!
//! While a stream reshards, a listing can show two open shards covering the same keys (a parent
//! and its child) or keys covered by none. The map resolves an overlap in favour of the newer
//! shard (the one whose sequence numbers start later) and reports a gap as `None`, so a caller
//! can send without a prediction and refresh later.
//!
//! ```
//! use kinesis_core::{HashKey, HashKeyRange, SequenceNumber, ShardId};
//! use kinesis_core::shard_map::{Shard, ShardMap};
//! let shard = |id: &str, start: u128, end: u128| Shard {
//!     shard_id: ShardId::new(id).unwrap(),
//!     parent_shard_id: None,
//!     adjacent_parent_shard_id: None,
//!     hash_key_range: HashKeyRange::new(HashKey(start), HashKey(end)).unwrap(),
//!     starting_sequence_number: SequenceNumber::parse("1").unwrap(),
//!     ending_sequence_number: None,
//! };
//! let map = ShardMap::new(vec![shard("shardId-0", 0, 99), shard("shardId-1", 100, u128::MAX)]);
//! assert_eq!(map.shard_for(HashKey(100)).unwrap().shard_id.as_str(), "shardId-1");
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::classify::{AwsError, ErrorKind};
use crate::types::{HashKey, HashKeyRange, SequenceNumber, ShardId, StreamRef};

/// One shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The shard's id.
    pub shard_id: ShardId,
    /// The shard it was split from, or one of the two it was merged from.
    pub parent_shard_id: Option<ShardId>,
    /// The other parent of a merge.
    pub adjacent_parent_shard_id: Option<ShardId>,
    /// The hash keys it owns (inclusive).
    pub hash_key_range: HashKeyRange,
    /// First sequence number in the shard.
    pub starting_sequence_number: SequenceNumber,
    /// Last sequence number, once the shard is closed.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl Shard {
    /// Whether the shard still takes writes.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }

    /// Its parents (none, one for a split, two for a merge).
    pub fn parents(&self) -> impl Iterator<Item = &ShardId> {
        self.parent_shard_id
            .iter()
            .chain(self.adjacent_parent_shard_id.iter())
    }

    /// Converts an SDK shard description.
    pub fn from_sdk(s: &aws_sdk_kinesis::types::Shard) -> Result<Self, crate::InvalidInput> {
        let range = s.hash_key_range();
        let seq = s.sequence_number_range();
        Ok(Self {
            shard_id: ShardId::new(s.shard_id())?,
            parent_shard_id: s.parent_shard_id().map(ShardId::new).transpose()?,
            adjacent_parent_shard_id: s.adjacent_parent_shard_id().map(ShardId::new).transpose()?,
            hash_key_range: match range {
                Some(r) => HashKeyRange::parse(r.starting_hash_key(), r.ending_hash_key())?,
                None => HashKeyRange::FULL,
            },
            starting_sequence_number: match seq {
                Some(r) => SequenceNumber::parse(r.starting_sequence_number())?,
                None => SequenceNumber::parse("0")?,
            },
            ending_sequence_number: seq
                .and_then(|r| r.ending_sequence_number())
                .map(SequenceNumber::parse)
                .transpose()?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    start: HashKey,
    end: HashKey,
    shard: usize,
}

/// Open shards by hash key, and lineage of every listed shard.
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    shards: Vec<Shard>,
    by_id: HashMap<ShardId, usize>,
    children: HashMap<ShardId, Vec<usize>>,
    /// Disjoint, sorted by `end`: where each hash key goes.
    segments: Vec<Segment>,
    /// For each of the [`BUCKETS`] equal slices of the hash-key space (its top bits), the first
    /// segment that can hold a key of it; one more entry at the end (`segments.len()`). A key's
    /// segment lies between its slice's entry and the next: with shards of about equal ranges,
    /// the same one, found with no search.
    buckets: Vec<u32>,
}

/// Slices of the hash-key space in [`ShardMap`]'s lookup table: its top 8 bits.
const BUCKET_BITS: u32 = 8;
const BUCKETS: usize = 1 << BUCKET_BITS;

impl ShardMap {
    /// Builds the map from a listing (open and closed shards, any order).
    pub fn new(mut shards: Vec<Shard>) -> Self {
        shards.sort_by(|a, b| {
            a.hash_key_range
                .start()
                .cmp(&b.hash_key_range.start())
                .then(a.shard_id.cmp(&b.shard_id))
        });
        shards.dedup_by(|a, b| a.shard_id == b.shard_id);
        let by_id = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.shard_id.clone(), i))
            .collect();
        let mut children: HashMap<ShardId, Vec<usize>> = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            for p in s.parents() {
                children.entry(p.clone()).or_default().push(i);
            }
        }
        let segments = paint(&shards);
        let buckets = buckets(&segments);
        Self {
            shards,
            by_id,
            children,
            segments,
            buckets,
        }
    }

    /// Lists the stream's shards (all pages) and builds the map.
    pub async fn load(
        client: &aws_sdk_kinesis::Client,
        stream: &StreamRef,
    ) -> Result<Self, AwsError> {
        Ok(Self::new(list_shards(client, stream).await?))
    }

    /// The open shard that owns `hash`; `None` in a gap (possible while resharding).
    pub fn shard_for(&self, hash: HashKey) -> Option<&Shard> {
        self.index_for(hash).map(|i| &self.shards[i])
    }

    /// Where in [`shards`](Self::shards) the open shard that owns `hash` is; `None` in a gap.
    /// (A caller can keep its own state per shard in a vector in the same order.)
    pub fn index_for(&self, hash: HashKey) -> Option<usize> {
        // Searched only between the bounds of the key's slice (usually one segment: no search).
        let b = (hash.0 >> (128 - BUCKET_BITS)) as usize;
        let (lo, hi) = match (self.buckets.get(b), self.buckets.get(b + 1)) {
            (Some(&lo), Some(&hi)) => (lo as usize, hi as usize),
            _ => (0, self.segments.len()),
        };
        let i = lo + self.segments.get(lo..hi)?.partition_point(|s| s.end < hash);
        let seg = self.segments.get(i)?;
        (seg.start <= hash).then_some(seg.shard)
    }

    /// A shard by id (open or closed).
    pub fn get(&self, id: &ShardId) -> Option<&Shard> {
        self.by_id.get(id).map(|&i| &self.shards[i])
    }

    /// Every listed shard, ordered by starting hash key.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The open shards, ordered by starting hash key.
    pub fn open_shards(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter().filter(|s| s.is_open())
    }

    /// Shards whose parent (or adjacent parent) is `id`.
    pub fn children(&self, id: &ShardId) -> impl Iterator<Item = &Shard> {
        self.children
            .get(id)
            .into_iter()
            .flatten()
            .map(|&i| &self.shards[i])
    }

    /// Hash-key ranges that no open shard covers; empty for a stable stream.
    pub fn gaps(&self) -> Vec<HashKeyRange> {
        let mut gaps = Vec::new();
        let mut next = Some(HashKey::MIN);
        for seg in &self.segments {
            if let Some(n) = next
                && seg.start > n
                && let Ok(r) = HashKeyRange::new(n, HashKey(seg.start.0 - 1))
            {
                gaps.push(r);
            }
            next = seg.end.0.checked_add(1).map(HashKey);
        }
        if let Some(n) = next {
            gaps.push(HashKeyRange::new(n, HashKey::MAX).unwrap_or(HashKeyRange::FULL));
        }
        gaps
    }

    /// Number of listed shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether no shard was listed.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

/// Gives each hash key to the newest open shard covering it: disjoint segments sorted by end.
/// [`ShardMap::buckets`] for `segments` (disjoint, sorted): entry `b` is the number of segments
/// ending before slice `b` starts, which is where the search for a key of the slice begins; a key
/// of slice `b` is below slice `b + 1`'s start, so its segment is at most entry `b + 1`.
fn buckets(segments: &[Segment]) -> Vec<u32> {
    let mut out: Vec<u32> = (0..BUCKETS)
        .map(|b| {
            let start = HashKey((b as u128) << (128 - BUCKET_BITS));
            // A map has far fewer than 4 G segments (ListShards and the account limits).
            u32::try_from(segments.partition_point(|s| s.end < start)).unwrap_or(u32::MAX)
        })
        .collect();
    out.push(u32::try_from(segments.len()).unwrap_or(u32::MAX));
    out
}

fn paint(shards: &[Shard]) -> Vec<Segment> {
    let mut open: Vec<usize> = (0..shards.len()).filter(|&i| shards[i].is_open()).collect();
    // Newest first: later starting sequence number, then higher shard id.
    open.sort_by(|&a, &b| {
        let (a, b) = (&shards[a], &shards[b]);
        b.starting_sequence_number
            .cmp(&a.starting_sequence_number)
            .then(b.shard_id.index().cmp(&a.shard_id.index()))
            .then(b.shard_id.cmp(&a.shard_id))
    });
    // covered: start -> (end, shard), disjoint.
    let mut covered: BTreeMap<u128, (u128, usize)> = BTreeMap::new();
    for i in open {
        let (s, e) = (
            shards[i].hash_key_range.start().0,
            shards[i].hash_key_range.end().0,
        );
        // Covered pieces overlapping [s, e], in order. Disjoint and sorted, so walking back from
        // the last one starting at or before e, the ends decrease too.
        let mut taken: Vec<(u128, u128)> = covered
            .range(..=e)
            .rev()
            .map(|(&a, &(b, _))| (a, b))
            .take_while(|&(_, b)| b >= s)
            .collect();
        taken.reverse();
        let mut cursor = Some(s);
        for (a, b) in taken {
            if let Some(c) = cursor
                && a > c
            {
                covered.insert(c, (a - 1, i));
            }
            cursor = b.checked_add(1);
        }
        if let Some(c) = cursor
            && c <= e
        {
            covered.insert(c, (e, i));
        }
    }
    covered
        .into_iter()
        .map(|(start, (end, shard))| Segment {
            start: HashKey(start),
            end: HashKey(end),
            shard,
        })
        .collect()
}

/// Lists every shard of a stream, open and closed, following pages.
///
/// Pages are requested with `ExclusiveStartShardId` (plus the stream) rather than `NextToken`:
/// both work on AWS, and only the former works on every emulator we test against.
pub async fn list_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
) -> Result<Vec<Shard>, AwsError> {
    let mut out: Vec<Shard> = Vec::new();
    loop {
        // No ShardFilter: the default lists every shard in the retention period, closed ones
        // included, which lineage needs (and one emulator ignores filters anyway).
        let mut req = client.list_shards().max_results(1000);
        req = crate::with_stream!(req, stream);
        if let Some(last) = out.last() {
            req = req.exclusive_start_shard_id(last.shard_id.as_str());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AwsError::new("ListShards", e))?;
        let before = out.len();
        for s in resp.shards() {
            let shard = Shard::from_sdk(s)
                .map_err(|e| AwsError::other("ListShards", ErrorKind::Other, e))?;
            out.push(shard);
        }
        if resp.next_token().is_none() || out.len() == before {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: u64, start: u128, end: u128, seq: &str, closed: bool) -> Shard {
        Shard {
            shard_id: ShardId::new(format!("shardId-{id:012}")).unwrap(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            hash_key_range: HashKeyRange::new(HashKey(start), HashKey(end)).unwrap(),
            starting_sequence_number: SequenceNumber::parse(seq).unwrap(),
            ending_sequence_number: closed.then(|| SequenceNumber::parse("999").unwrap()),
        }
    }

    fn owner(map: &ShardMap, h: u128) -> Option<u64> {
        map.shard_for(HashKey(h)).and_then(|s| s.shard_id.index())
    }

    #[test]
    fn lookup_in_a_stable_stream() {
        let m = ShardMap::new(vec![
            shard(2, 200, u128::MAX, "1", false),
            shard(0, 0, 99, "1", false),
            shard(1, 100, 199, "1", false),
        ]);
        let table = [
            (0, 0),
            (99, 0),
            (100, 1),
            (199, 1),
            (200, 2),
            (u128::MAX, 2),
        ];
        for (h, want) in table {
            assert_eq!(owner(&m, h), Some(want), "hash {h}");
        }
        assert!(m.gaps().is_empty());
        assert_eq!(m.open_shards().count(), 3);
    }

    #[test]
    fn closed_shards_are_not_targets_but_keep_lineage() {
        let mut a = shard(1, 0, 99, "10", false);
        a.parent_shard_id = Some(ShardId::new("shardId-000000000000").unwrap());
        let mut b = shard(2, 100, u128::MAX, "10", false);
        b.parent_shard_id = a.parent_shard_id.clone();
        let m = ShardMap::new(vec![shard(0, 0, u128::MAX, "1", true), a, b]);
        assert_eq!(owner(&m, 50), Some(1));
        assert_eq!(owner(&m, 150), Some(2));
        let parent = ShardId::new("shardId-000000000000").unwrap();
        let kids: Vec<_> = m
            .children(&parent)
            .filter_map(|s| s.shard_id.index())
            .collect();
        assert_eq!(kids, vec![1, 2]);
        assert!(!m.get(&parent).unwrap().is_open());
    }

    #[test]
    fn overlap_goes_to_the_newer_shard() {
        // Parent still listed open while its children already exist.
        let m = ShardMap::new(vec![
            shard(0, 0, u128::MAX, "1", false),
            shard(1, 0, 99, "50", false),
            shard(2, 100, 199, "50", false),
        ]);
        let table = [
            (0, 1),
            (99, 1),
            (100, 2),
            (199, 2),
            (200, 0),
            (u128::MAX, 0),
        ];
        for (h, want) in table {
            assert_eq!(owner(&m, h), Some(want), "hash {h}");
        }
        assert!(m.gaps().is_empty());
    }

    #[test]
    fn gaps_are_reported_as_none() {
        let m = ShardMap::new(vec![
            shard(0, 0, 99, "1", false),
            shard(3, 300, 399, "1", false),
        ]);
        assert_eq!(owner(&m, 150), None);
        assert_eq!(owner(&m, 1000), None);
        let gaps = m.gaps();
        assert_eq!(gaps.len(), 2);
        assert_eq!(
            (gaps[0].start(), gaps[0].end()),
            (HashKey(100), HashKey(299))
        );
        assert_eq!(
            (gaps[1].start(), gaps[1].end()),
            (HashKey(400), HashKey::MAX)
        );
        assert_eq!(ShardMap::new(vec![]).gaps(), vec![HashKeyRange::FULL]);
    }

    #[test]
    fn newer_shard_inside_an_older_one_splits_it() {
        let m = ShardMap::new(vec![
            shard(0, 0, 1000, "1", false),
            shard(5, 400, 600, "9", false),
        ]);
        let table = [(0, 0), (399, 0), (400, 5), (600, 5), (601, 0), (1000, 0)];
        for (h, want) in table {
            assert_eq!(owner(&m, h), Some(want), "hash {h}");
        }
    }

    /// The lookup table only narrows the search: for any map (many shards, tiny ones, gaps,
    /// overlaps, closed ones) and any key, the owner is the one a search of every segment finds.
    mod table_agrees_with_a_full_search {
        use super::*;
        use proptest::prelude::*;

        fn full_search(m: &ShardMap, hash: HashKey) -> Option<usize> {
            let i = m.segments.partition_point(|s| s.end < hash);
            let seg = m.segments.get(i)?;
            (seg.start <= hash).then_some(seg.shard)
        }

        /// Boundaries clustered near the slices' edges and near 0, where off-by-ones live.
        fn key() -> impl Strategy<Value = u128> {
            prop_oneof![
                any::<u128>(),
                (0u128..256, -3i64..=3).prop_map(|(b, d)| (b << 120).wrapping_add_signed(d.into())),
                0u128..1000,
                Just(u128::MAX),
            ]
        }

        proptest! {
            #[test]
            fn for_any_map_and_key(
                ranges in proptest::collection::vec((key(), key(), 1u32..9, any::<bool>()), 0..40),
                probes in proptest::collection::vec(key(), 1..64),
            ) {
                let shards: Vec<Shard> = ranges
                    .iter()
                    .enumerate()
                    .map(|(i, &(a, b, seq, closed))| {
                        shard(i as u64, a.min(b), a.max(b), &seq.to_string(), closed)
                    })
                    .collect();
                let m = ShardMap::new(shards);
                for h in probes.iter().copied().chain(m.segments.iter().flat_map(|s| {
                    [s.start.0, s.end.0, s.start.0.wrapping_sub(1), s.end.0.wrapping_add(1)]
                })) {
                    prop_assert_eq!(m.index_for(HashKey(h)), full_search(&m, HashKey(h)), "hash {}", h);
                }
            }
        }

        #[test]
        fn even_shards_and_the_default_map() {
            let n = 16u128;
            let width = u128::MAX / n + 1;
            let shards: Vec<Shard> = (0..n)
                .map(|i| {
                    let end = if i == n - 1 {
                        u128::MAX
                    } else {
                        (i + 1) * width - 1
                    };
                    shard(u64::try_from(i).unwrap(), i * width, end, "1", false)
                })
                .collect();
            let m = ShardMap::new(shards);
            for i in 0..n {
                for h in [
                    i * width,
                    i * width + 1,
                    i * width + width / 2,
                    i * width + (width - 1),
                ] {
                    assert_eq!(owner(&m, h), Some(u64::try_from(i).unwrap()), "hash {h}");
                }
            }
            assert_eq!(ShardMap::default().index_for(HashKey(5)), None);
        }
    }
}
