//! The shard map: refreshing it, re-routing the buffers of shards that closed, and checking
//! aggregates stored on a shard the producer did not predict.
//!
//! ```text
//!   stored on the predicted shard ───────────────────────────► delivered
//!   stored elsewhere ─► refresh wanted ─► the map knows the shard?
//!        ├─ yes: every key in its range? ─ yes ─► delivered
//!        │                               └ no ──► sent again (possible_duplicate), WrongShard
//!        └─ no: unverified ─► checked the same way by the next refresh that started after the
//!                             answer (one already running may hold the map from before the
//!                             split); a shard that refresh does not list either: sent again;
//!                             past the record's TTL before any refresh succeeds: expired
//!   refreshed ─► buffers of closed (and unmapped) shards re-routed under the new map
//!   refresh failed ─► again after 1 s, doubling, at most 30 s
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::BoxFuture;
use kinesis_core::shard_map::{Shard, ShardMap};
use kinesis_core::{AwsError, Backoff, BackoffConfig, HashKeyRange, SequenceNumber, ShardId};
use tokio::time::{Duration, Instant};
use tracing::warn;

use crate::error::AttemptOutcome;

use super::Driver;
use super::buffers::ShardKey;
use super::messages::{Ended, Pending, data_bytes};
use super::ready::Flying;
use kinesis_core::clock::later;

const WRONG_SHARD: &str =
    "WrongShard: the aggregate was stored on a shard that does not own this key";
const UNVERIFIED: &str = "Unverified: the aggregate was stored on a shard the producer's map did \
     not list, and no refresh of the map succeeded before the record's TTL to check that the \
     shard owns this key";
/// Waits between shard-map refreshes that failed: 1 s, doubling, at most 30 s (the KPL: 1 s,
/// ×1.5, at most 30 s).
const REFRESH_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(30));

/// The shard-map refresh: running, wanted, or due at `next_at`.
pub(super) struct Refresh {
    pub(super) running: Option<BoxFuture<'static, Result<Vec<Shard>, AwsError>>>,
    pub(super) wanted: bool,
    failures: u32,
    backoff: Backoff,
    pause: Duration,
    pub(super) next_at: Instant,
    /// Refreshes started so far: the one running (if any) is number `started`.
    started: u64,
    /// Aggregates stored on a shard the map does not know yet: checked by the next refresh
    /// started after their answer.
    pub(super) unverified: Vec<Unverified>,
}

/// An aggregate stored on a shard the map did not know.
#[derive(Debug)]
pub(super) struct Unverified {
    pub(super) stored: Stored,
    /// The shard it was predicted for: under `preserve_order` that shard counts it in flight
    /// until it is checked, so that nothing of it overtakes a member sent again.
    pub(super) predicted: ShardKey,
    pub(super) members: Vec<Pending>,
    /// Refreshes started before its answer came: only a later one can have listed its shard.
    after: u64,
}

/// Where a Kinesis record was stored, by a call sent at `sent_at` that took `took`.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) shard_id: ShardId,
    pub(super) sequence_number: SequenceNumber,
    pub(super) sent_at: Instant,
    pub(super) took: Duration,
}

impl Refresh {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            running: None,
            wanted: false,
            failures: 0,
            backoff: REFRESH_BACKOFF.build(),
            pause: Duration::ZERO,
            next_at: later(Instant::now(), interval),
            started: 0,
            unverified: Vec::new(),
        }
    }

    /// Whether a refresh should start now.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.running.is_none() && (self.wanted || now >= self.next_at)
    }
}

impl Driver {
    pub(super) fn start_refresh(&mut self) {
        let api = Arc::clone(&self.api);
        let stream = self.stream.clone();
        // After failures, wait (REFRESH_BACKOFF); at once otherwise.
        let wait = self.refresh.pause;
        self.refresh.wanted = false;
        self.refresh.started += 1;
        self.refresh.running = Some(Box::pin(async move {
            tokio::time::sleep(wait).await;
            api.list_shards(stream).await
        }));
    }

    pub(super) fn refreshed(&mut self, result: Result<Vec<Shard>, AwsError>) {
        let now = Instant::now();
        let r = &mut self.refresh;
        let shards = match result {
            Ok(s) => s,
            Err(e) => {
                r.failures += 1;
                r.pause = r
                    .backoff
                    .next_delay_for(e.kind())
                    .unwrap_or(REFRESH_BACKOFF.max);
                r.wanted = true;
                warn!(message = "Shard map refresh failed.", stream = %self.stream, error = %e, failures = r.failures);
                return;
            }
        };
        r.failures = 0;
        r.backoff.reset();
        r.pause = Duration::ZERO;
        r.next_at = later(now, self.cfg.shard_map_refresh_interval);
        self.map = ShardMap::new(shards);
        self.route_keys = super::buffers::route_keys(&self.map);
        metrics::counter!("ShardMapRefreshes").increment(1);
        // Buffers of shards that are no longer open (and the unmapped one): re-route what they
        // hold under the new map.
        for k in self.buffers.stale(&self.map) {
            let Some(st) = self.buffers.shards.get_mut(&k) else {
                continue;
            };
            let flying = st.in_flight > 0;
            let moved = st.drain();
            // `preserve_order`: the shards that own its keys now wait for its calls in flight,
            // so that a later record of a key does not overtake one still in them.
            if self.cfg.preserve_order && flying {
                for heir in self.heirs(&k) {
                    self.buffers
                        .state(&self.cfg, &heir, now)
                        .after
                        .push(k.clone());
                }
            }
            for m in moved {
                self.enqueue(m, now);
            }
        }
        let this = self.refresh.started;
        for u in std::mem::take(&mut self.refresh.unverified) {
            if u.after >= this {
                // Answered while this refresh ran: its map may be from before the split.
                self.refresh.wanted = true;
                self.refresh.unverified.push(u);
                continue;
            }
            self.unverified_done(&u.predicted);
            match self.map.get(&u.stored.shard_id).map(|s| s.hash_key_range) {
                Some(range) => self.settle_by_range(None, u.stored, range, u.members, now),
                None => {
                    // Not even a map listed after the answer has it: whether it owns every key
                    // cannot be told, and a KCL consumer may drop the aggregate. Sent again.
                    warn!(message = "Records stored on a shard the stream does not list; sending them again.", shard_id = %u.stored.shard_id);
                    self.send_again(None, u.stored, u.members, now);
                }
            }
        }
    }

    /// Under `preserve_order`, an unverified aggregate of `predicted` is no longer in flight.
    fn unverified_done(&mut self, predicted: &ShardKey) {
        if self.cfg.preserve_order
            && let Some(st) = self.buffers.shards.get_mut(predicted)
        {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
    }

    /// Expires the members of unverified aggregates whose TTL passed (the map could not be
    /// refreshed to check them in time): stored, but maybe on a shard that does not own them.
    pub(super) fn expire_unverified(&mut self, now: Instant) {
        if self.refresh.unverified.is_empty() {
            return;
        }
        let ttl = self.cfg.record_ttl;
        for mut u in std::mem::take(&mut self.refresh.unverified) {
            // Checked every tick: nothing moved unless a member's TTL passed.
            if !u.members.iter().any(|m| now >= later(m.arrived, ttl)) {
                self.refresh.unverified.push(u);
                continue;
            }
            let (old, live): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut u.members)
                .into_iter()
                .partition(|m| now >= later(m.arrived, ttl));
            let ended = Ended {
                sent_at: u.stored.sent_at,
                took: u.stored.took,
                outcome: AttemptOutcome::Unverified {
                    shard_id: u.stored.shard_id.clone(),
                },
                text: UNVERIFIED.into(),
            };
            for mut m in old {
                m.attempt_failed(&ended);
                m.possible_duplicate = true;
                self.expire(m, now);
            }
            if live.is_empty() {
                self.unverified_done(&u.predicted);
            } else {
                u.members = live;
                self.refresh.unverified.push(u);
            }
        }
    }

    /// A Kinesis record predicted for `predicted` was stored.
    pub(super) fn succeeded(
        &mut self,
        predicted: &ShardKey,
        stored: Stored,
        members: Flying,
        now: Instant,
    ) {
        let actual = &stored.shard_id;
        if predicted.as_ref() == Some(actual) || members.len() == 1 {
            if predicted.as_ref() != Some(actual) {
                self.refresh.wanted = true;
            }
            let (members, bytes) = members.into_delivered();
            self.settlement.deliver(
                &self.stats,
                &mut self.telemetry,
                actual,
                &stored.sequence_number,
                members,
                bytes,
            );
            return;
        }
        // Checked key by key below, and maybe sent again: with their data.
        let members = members.into_members();
        // An aggregate on a shard we did not predict (the stream resharded). KCL consumers drop
        // a whole aggregate holding a key outside the shard's range, so those members are sent
        // again (as the KPL does).
        self.refresh.wanted = true;
        match self.map.get(actual).map(|s| s.hash_key_range) {
            Some(range) => self.settle_by_range(Some(predicted), stored, range, members, now),
            None => {
                if self.cfg.preserve_order
                    && let Some(st) = self.buffers.shards.get_mut(predicted)
                {
                    st.in_flight += 1;
                }
                let after = self.refresh.started;
                self.refresh.unverified.push(Unverified {
                    stored,
                    predicted: predicted.clone(),
                    members,
                    after,
                });
            }
        }
    }

    /// The open shards that took over `key`'s hash keys (none for the unmapped key).
    fn heirs(&self, key: &ShardKey) -> Vec<ShardKey> {
        let Some(range) = key
            .as_ref()
            .and_then(|id| self.map.get(id))
            .map(|s| s.hash_key_range)
        else {
            return Vec::new();
        };
        self.map
            .open_shards()
            .filter(|s| {
                let r = s.hash_key_range;
                r.start() <= range.end() && range.start() <= r.end()
            })
            .map(|s| Some(s.shard_id.clone()))
            .collect()
    }

    /// An aggregate stored on `stored.shard_id`, whose range is `range`, predicted for
    /// `predicted` (`None`: not known any more).
    fn settle_by_range(
        &mut self,
        predicted: Option<&ShardKey>,
        stored: Stored,
        range: HashKeyRange,
        members: Vec<Pending>,
        now: Instant,
    ) {
        if members.iter().all(|m| range.contains(m.hash())) {
            let (shard, seq) = (&stored.shard_id, &stored.sequence_number);
            let bytes = data_bytes(&members);
            self.settlement
                .deliver(&self.stats, &mut self.telemetry, shard, seq, members, bytes);
            return;
        }
        self.send_again(predicted, stored, members, now);
    }

    /// An aggregate stored on a shard that does not own every key in it (or may not): the
    /// members are sent again.
    fn send_again(
        &mut self,
        predicted: Option<&ShardKey>,
        stored: Stored,
        members: Vec<Pending>,
        now: Instant,
    ) {
        // The consumer will drop this aggregate: nothing in it counts as delivered. Each member
        // goes to the front of the shard that owns its key under the current map; a reader
        // that does not apply the KCL's rule sees it twice.
        let ended = Ended {
            sent_at: stored.sent_at,
            took: stored.took,
            outcome: AttemptOutcome::WrongShard {
                shard_id: stored.shard_id,
            },
            text: WRONG_SHARD.into(),
        };
        let ttl = self.cfg.record_ttl;
        let mut again = Vec::with_capacity(members.len());
        for mut m in members {
            m.attempt_failed(&ended);
            m.possible_duplicate = true;
            if now >= later(m.arrived, ttl) {
                self.expire(m, now);
            } else {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                again.push(m);
            }
        }
        if self.cfg.preserve_order {
            // In order, ahead of what their shard holds (the records after them): at the front
            // of the predicted shard while the map still has it open, else of the shards that
            // own their keys now, after a pause for the refresh asked for above.
            let key = predicted.cloned().flatten();
            self.requeue_front(key, again, now, self.cfg.retry_min_delay);
        } else {
            for m in again {
                self.retries.push(m, now);
            }
        }
    }
}
