//! Per-shard buffers: the aggregate being built and the queue of finished Kinesis records of
//! each predicted shard.
//!
//! ```text
//!   Pending ─► shard_key(hash) ─► ShardState.aggregator + members ──(full | deadline | flush)─┐
//!        └─(too large, or no aggregation)───────────────────────────────────────────────────┤
//!                                                                                            ▼
//!   retries, re-routed records ─► requeue_front_at (re-aggregated, in order) ─► ShardState.ready
//!                                                            (front)            │
//!                                                       `waiting`: shards with ready records
//! ```

use std::collections::VecDeque;

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use kinesis_core::HashKey;
use kinesis_core::ShardId;
use kinesis_core::agg::{AggregateLayout, Finished, LayoutMismatch};
use kinesis_core::shard_map::{Shard, ShardMap};
use tokio::time::{Duration, Instant};

use super::Driver;
use super::messages::Pending;
use super::ready::Ready;
use crate::config::ProducerConfig;
use crate::limiter::ShardLimiter;
use kinesis_core::clock::later;

/// Key of a shard's state. `None` holds records whose hash key no open shard covers (possible
/// while resharding): they go plain and unlimited until the map is refreshed.
pub(super) type ShardKey = Option<ShardId>;

pub(super) struct ShardState {
    /// Sizes and key tables of the aggregate being built; its records are `members` (the
    /// layout holds no second reference to their data).
    aggregator: Option<AggregateLayout>,
    pub(super) members: Vec<Pending>,
    pub(super) agg_deadline: Option<Instant>,
    pub(super) ready: VecDeque<Ready>,
    pub(super) limiter: Option<ShardLimiter>,
    /// Kinesis records of this shard in the collector or in flight.
    pub(super) in_flight: usize,
    /// `preserve_order`: nothing leaves this shard before this time (a retry is waiting).
    pub(super) blocked_until: Option<Instant>,
    /// Its rate limit held records back, and the backlog is not sent yet.
    pub(super) held_back: bool,
    /// `preserve_order` across a reshard: closed shards this one took keys from, whose calls
    /// were in flight when the map changed. Nothing leaves here before they are answered (a
    /// failed record of theirs comes back to the front of its new shard).
    pub(super) after: Vec<ShardKey>,
}

impl ShardState {
    fn new(cfg: &ProducerConfig, key: &ShardKey, now: Instant) -> Self {
        Self {
            aggregator: if cfg.aggregation && key.is_some() {
                AggregateLayout::new(cfg.aggregate_max_bytes()).ok()
            } else {
                None
            },
            members: Vec::new(),
            agg_deadline: None,
            ready: VecDeque::new(),
            limiter: key
                .as_ref()
                .map(|_| ShardLimiter::new(cfg.rate_limit_percent, now)),
            in_flight: 0,
            blocked_until: None,
            held_back: false,
            after: Vec::new(),
        }
    }

    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.ready.is_empty() && self.in_flight == 0
    }

    /// Turns the aggregate being built into a ready Kinesis record.
    pub(super) fn finish_aggregate(&mut self, key: &ShardKey) {
        let Some(agg) = self.aggregator.as_mut() else {
            return;
        };
        let written = write_aggregate(agg, &mut self.members);
        if self.members.is_empty() {
            return;
        }
        // The next aggregate will likely hold as many: sized once, no growth slack.
        let next = Vec::with_capacity(self.members.len());
        let members = std::mem::replace(&mut self.members, next);
        let deadline = self.agg_deadline.take().unwrap_or_else(Instant::now);
        push_finished(&mut self.ready, key, written, members, deadline);
    }

    /// Drops the aggregate being built and hands back every record held here (the shard
    /// closed: they go elsewhere).
    pub(super) fn drain(&mut self) -> Vec<Pending> {
        if let Some(agg) = self.aggregator.as_mut() {
            agg.clear();
        }
        let mut moved: Vec<Pending> = std::mem::take(&mut self.members);
        self.agg_deadline = None;
        for r in self.ready.drain(..) {
            moved.extend(r.into_members());
        }
        moved
    }
}

/// Every shard's buffers, and the shards with ready records waiting for tokens, a request slot
/// or the collector.
pub(super) struct Buffers {
    pub(super) shards: HashMap<ShardKey, ShardState>,
    pub(super) waiting: Vec<ShardKey>,
}

impl Buffers {
    pub(super) fn new() -> Self {
        Self {
            shards: HashMap::new(),
            waiting: Vec::new(),
        }
    }

    pub(super) fn state(
        &mut self,
        cfg: &ProducerConfig,
        key: &ShardKey,
        now: Instant,
    ) -> &mut ShardState {
        // One lookup per record (the key clone is a reference count).
        self.shards
            .entry(key.clone())
            .or_insert_with(|| ShardState::new(cfg, key, now))
    }

    /// Puts a record in `key`'s buffer: into its aggregate, or alone after what is buffered.
    pub(super) fn enqueue(
        &mut self,
        cfg: &ProducerConfig,
        key: &ShardKey,
        p: Pending,
        now: Instant,
    ) {
        let deadline = later(now.max(p.arrived), cfg.record_max_buffered_time);
        let max_count = cfg.aggregation_max_count;
        // The key is cloned only for a new shard: a clone is an atomic reference count, and its
        // drop a locked instruction that waits for the record's copy to be written.
        let st = match self.shards.get_mut(key) {
            Some(st) => st,
            None => self
                .shards
                .entry(key.clone())
                .or_insert_with(|| ShardState::new(cfg, key, now)),
        };
        let ready_before = st.ready.len();
        let fits = st
            .aggregator
            .as_ref()
            .is_some_and(|a| p.record.size_bytes() <= a.max_bytes());
        match st.aggregator.as_mut() {
            Some(agg) if fits => {
                // Full: finish and start a new aggregate; the record fits an empty one.
                if let Ok(false) = agg.try_add(&p.record) {
                    st.finish_aggregate(key);
                    if let Some(agg) = st.aggregator.as_mut() {
                        let _ = agg.try_add(&p.record);
                    }
                }
                st.members.push(p);
                st.agg_deadline = Some(st.agg_deadline.map_or(deadline, |d| d.min(deadline)));
                if st.members.len() >= max_count {
                    st.finish_aggregate(key);
                }
            }
            _ => {
                // No aggregation here, or too large for an aggregate: alone, after what is
                // buffered (order).
                st.finish_aggregate(key);
                st.ready.push_back(Ready::plain(key.clone(), p, deadline));
            }
        }
        // Once per new ready record, not per user record: pump() sorts this list.
        if st.ready.len() > ready_before {
            self.waiting.push(key.clone());
        }
    }

    /// Puts records back at the front of `key` (every one belongs to it), re-aggregated, in
    /// order, and holds the shard for `delay`.
    pub(super) fn requeue_front_at(
        &mut self,
        cfg: &ProducerConfig,
        key: ShardKey,
        members: Vec<Pending>,
        now: Instant,
        delay: Duration,
    ) {
        let deadline = later(now, delay);
        let front = reaggregate(cfg, &key, members, deadline);
        let st = self.state(cfg, &key, now);
        for r in front.into_iter().rev() {
            st.ready.push_front(r);
        }
        st.blocked_until = Some(deadline);
        self.waiting.push(key);
    }

    /// Whether `key` still waits for a closed shard it took keys from (see
    /// [`ShardState::after`]); forgets those that were answered.
    pub(super) fn waits_for_parents(&mut self, key: &ShardKey) -> bool {
        let Some(after) = self.shards.get(key).map(|s| &s.after) else {
            return false;
        };
        if after.is_empty() {
            return false;
        }
        let still: Vec<ShardKey> = after
            .iter()
            .filter(|k| self.shards.get(*k).is_some_and(|s| s.in_flight > 0))
            .cloned()
            .collect();
        let waits = !still.is_empty();
        if let Some(st) = self.shards.get_mut(key) {
            st.after = still;
        }
        waits
    }

    /// Finishes every aggregate (a flush): everything buffered is ready to go.
    pub(super) fn flush_all(&mut self) {
        self.finish_due(None);
    }

    /// Finishes the aggregates whose deadline is past (every one when `now` is `None`), and
    /// marks every shard with ready records as waiting.
    pub(super) fn finish_due(&mut self, now: Option<Instant>) {
        for (k, st) in &mut self.shards {
            if !st.members.is_empty() && now.is_none_or(|t| st.agg_deadline.is_some_and(|d| d <= t))
            {
                st.finish_aggregate(k);
            }
            if !st.ready.is_empty() {
                self.waiting.push(k.clone());
            }
        }
    }

    /// Forgets idle buffers of shards no longer open.
    pub(super) fn retain_open(&mut self, map: &ShardMap) {
        self.shards.retain(|k, st| {
            let open = k
                .as_ref()
                .is_none_or(|id| map.get(id).is_some_and(Shard::is_open));
            open || !st.is_idle()
        });
    }

    /// Keys of the shards that are no longer open under `map` (and the unmapped one).
    pub(super) fn stale(&self, map: &ShardMap) -> Vec<ShardKey> {
        self.shards
            .keys()
            .filter(|k| {
                k.as_ref()
                    .is_none_or(|id| !map.get(id).is_some_and(Shard::is_open))
            })
            .cloned()
            .collect()
    }

    /// Takes every record held, unsent.
    pub(super) fn take_all(&mut self) -> Vec<Pending> {
        let mut unsent = Vec::new();
        for st in self.shards.values_mut() {
            unsent.append(&mut st.members);
            for r in st.ready.drain(..) {
                unsent.extend(r.into_members());
            }
        }
        unsent
    }
}

/// `members`, all of `key`, as ready Kinesis records in order: aggregated as far as they fit
/// (when `key` aggregates), a record too large for an aggregate alone.
fn reaggregate(
    cfg: &ProducerConfig,
    key: &ShardKey,
    members: Vec<Pending>,
    deadline: Instant,
) -> Vec<Ready> {
    let mut front: Vec<Ready> = Vec::new();
    let mut agg = if cfg.aggregation && key.is_some() {
        AggregateLayout::new(cfg.aggregate_max_bytes()).ok()
    } else {
        None
    };
    let mut group: Vec<Pending> = Vec::new();
    let close =
        |agg: &mut Option<AggregateLayout>, group: &mut Vec<Pending>, front: &mut Vec<Ready>| {
            if let Some(a) = agg.as_mut()
                && !group.is_empty()
            {
                let written = write_aggregate(a, group);
                let mut ready = VecDeque::new();
                push_finished(&mut ready, key, written, std::mem::take(group), deadline);
                front.extend(ready);
            }
        };
    for m in members {
        let fits = agg
            .as_ref()
            .is_some_and(|a| m.record.size_bytes() <= a.max_bytes());
        if fits {
            // At most `aggregation_max_count` per aggregate, as when they were first buffered.
            if group.len() >= cfg.aggregation_max_count {
                close(&mut agg, &mut group, &mut front);
            }
            if let Some(Ok(false)) = agg.as_mut().map(|a| a.try_add(&m.record)) {
                close(&mut agg, &mut group, &mut front);
                if let Some(a) = agg.as_mut() {
                    let _ = a.try_add(&m.record);
                }
            }
            group.push(m);
        } else {
            close(&mut agg, &mut group, &mut front);
            front.push(Ready::plain(key.clone(), m, deadline));
        }
    }
    close(&mut agg, &mut group, &mut front);
    front
}

impl Driver {
    pub(super) fn shard_key(&self, hash: HashKey) -> ShardKey {
        self.map.shard_for(hash).map(|s| s.shard_id.clone())
    }

    /// Routes a record to its predicted shard's buffer.
    pub(super) fn enqueue(&mut self, p: Pending, now: Instant) {
        // The shard's key by reference, not a clone per record.
        let unmapped: ShardKey = None;
        let key = self
            .map
            .index_for(p.hash())
            .and_then(|i| self.route_keys.get(i))
            .unwrap_or(&unmapped);
        self.buffers.enqueue(&self.cfg, key, p, now);
    }

    /// Puts records back at the front of their shard, re-aggregated, in order, and holds the
    /// shard for `delay` (`preserve_order`; retries that are due).
    pub(super) fn requeue_front(
        &mut self,
        key: ShardKey,
        members: Vec<Pending>,
        now: Instant,
        delay: Duration,
    ) {
        if key
            .as_ref()
            .is_some_and(|k| self.map.get(k).is_some_and(Shard::is_open))
        {
            self.buffers
                .requeue_front_at(&self.cfg, key, members, now, delay);
            return;
        }
        // The shard closed (the stream resharded) or was never mapped: each member goes to the
        // shard that owns its key now, in order. Routing them all by one member would build an
        // aggregate with keys outside the shard it lands on, which a KCL consumer drops whole
        // while the producer counts it delivered (found by the chaos test).
        let mut groups: Vec<(ShardKey, Vec<Pending>)> = Vec::new();
        for m in members {
            let k = self.shard_key(m.hash());
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, v)) => v.push(m),
                None => groups.push((k, vec![m])),
            }
        }
        for (k, ms) in groups {
            self.buffers.requeue_front_at(&self.cfg, k, ms, now, delay);
        }
    }
}

/// The key of each shard of `map`, in its order (`ShardMap::index_for`).
pub(super) fn route_keys(map: &ShardMap) -> Vec<ShardKey> {
    map.shards()
        .iter()
        .map(|s| Some(s.shard_id.clone()))
        .collect()
}

/// Writes the aggregate of `members` (the records added to `layout`, in order), all but its
/// MD5 (computed for a whole call at once, `ready.rs`). Their data is then in it: their own
/// buffers are freed now, while still in the cache, rather than one by one, cold, when they are
/// settled.
fn write_aggregate(
    layout: &mut AggregateLayout,
    members: &mut [Pending],
) -> Result<Option<Finished>, LayoutMismatch> {
    layout.finish_unsealed(members.iter_mut().map(|m| &mut m.record.data))
}

/// Queues what a layout wrote for `members`. Should it refuse them (they are not the records
/// it was given: a bug), each member goes alone instead, so that none is lost over it.
fn push_finished(
    ready: &mut VecDeque<Ready>,
    key: &ShardKey,
    written: Result<Option<Finished>, LayoutMismatch>,
    members: Vec<Pending>,
    deadline: Instant,
) {
    let members = match written {
        Ok(Some(Finished::Whole(kr))) => {
            ready.push_back(Ready::new(key.clone(), kr, members, deadline));
            return;
        }
        Ok(Some(Finished::Unsealed(agg))) => {
            match Ready::open(key.clone(), agg, members, deadline) {
                Ok(r) => {
                    ready.push_back(r);
                    return;
                }
                Err(members) => members,
            }
        }
        Ok(None) => members,
        Err(e) => {
            tracing::error!(message = "Aggregate layout did not match its records; sending them one by one.", error = %e);
            members
        }
    };
    for m in members {
        ready.push_back(Ready::plain(key.clone(), m, deadline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::messages::Reply;
    use kinesis_core::{PartitionKey, UserRecord};

    /// Records sent again are re-aggregated within the same limits as when first buffered:
    /// `aggregation_max_count` included (it was ignored on retries), in order.
    #[test]
    fn a_retry_re_aggregates_within_the_count_limit_in_order() {
        let cfg = ProducerConfig {
            aggregation_max_count: 3,
            ..ProducerConfig::default()
        };
        let members: Vec<Pending> = (0..10)
            .map(|i| {
                let r = UserRecord::new(
                    PartitionKey::new(format!("k{i}")).unwrap(),
                    None,
                    bytes::Bytes::from(vec![b'x'; 10]),
                );
                Pending::new(r, Reply::Batch { id: 0, index: i })
            })
            .collect();
        let key: ShardKey = Some(ShardId::new("shardId-000000000000").unwrap());
        let ready = reaggregate(&cfg, &key, members, Instant::now());
        let sizes: Vec<usize> = ready.iter().map(|r| r.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let parts: Vec<_> = ready
            .into_iter()
            .map(|r| r.into_parts().ok().unwrap())
            .collect();
        for (kr, members) in &parts {
            assert_eq!(kr.user_records, members.len());
            assert_eq!(
                kinesis_core::agg::deaggregate(kr.partition_key.as_str(), kr.data.clone()).len(),
                members.len()
            );
        }
        let order: Vec<u32> = parts
            .iter()
            .flat_map(|(_, members)| members)
            .map(|m| match m.reply {
                Reply::Batch { index, .. } => index,
                Reply::One(..) => u32::MAX,
            })
            .collect();
        assert_eq!(order, (0..10).collect::<Vec<u32>>());
    }
}
