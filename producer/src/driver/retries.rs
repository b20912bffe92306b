//! Retries: when a failed record goes again, and when it has run out of time.
//!
//! ```text
//!   failed entry ──────────────────► front of its shard at once (paced by its token buckets)
//!   whole-call failure ─► CallBackoff (one pause for all calls) ─► Retries heap ─► (due) front
//!   preserve_order ─────────────────► front of its shard, held there for the pause
//!   the next attempt would come after record_ttl ─► fails now: Expired { last_error }
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use foldhash::HashMap;
use kinesis_core::{Backoff, BackoffConfig, ErrorKind};
use tokio::time::{Duration, Instant};

use super::Driver;
use super::buffers::ShardKey;
use super::messages::{Ended, Pending};
use super::ready::Ready;
use crate::config::ProducerConfig;
use crate::error::FailureReason;
use kinesis_core::clock::later;

struct RetryItem {
    at: Instant,
    seq: u64,
    pending: Pending,
}

impl PartialEq for RetryItem {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for RetryItem {}
impl PartialOrd for RetryItem {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for RetryItem {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The pause after whole-call failures: one backoff for every call, since they all go to the
/// same endpoint. Calls fail together (a load balancer drops its connections, an outage): only
/// a failure of a call sent after the pause last grew grows it again, the others wait as long,
/// and only a prompt answer to such a call (within half the request timeout) resets it: a
/// slow answer says the endpoint is still struggling.
pub(super) struct CallBackoff {
    backoff: Backoff,
    pause: Duration,
    /// Calls with an id from this one on were sent after the pause last changed.
    since: u64,
}

impl CallBackoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self {
            backoff: BackoffConfig::new(min, max).build(),
            pause: Duration::ZERO,
            since: 0,
        }
    }

    /// The pause before retrying the records of call `id`, which failed with `kind`.
    pub(super) fn failed(&mut self, id: u64, kind: ErrorKind, next_call: u64) -> Duration {
        if id >= self.since || self.pause.is_zero() {
            let max = self.backoff.config().max;
            self.pause = self.backoff.next_delay_for(kind).unwrap_or(max);
            self.since = next_call;
        }
        self.pause
    }

    /// Call `id` was answered.
    pub(super) fn answered(&mut self, id: u64, next_call: u64) {
        if id >= self.since && !self.pause.is_zero() {
            self.backoff.reset();
            self.pause = Duration::ZERO;
            self.since = next_call;
        }
    }
}

/// Records waiting out a pause, earliest first, and the pause.
pub(super) struct Retries {
    heap: BinaryHeap<Reverse<RetryItem>>,
    seq: u64,
    pub(super) call_backoff: CallBackoff,
}

impl Retries {
    pub(super) fn new(cfg: &ProducerConfig) -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
            call_backoff: CallBackoff::new(cfg.retry_min_delay, cfg.retry_max_delay),
        }
    }

    /// At `at`, `m` goes to the front of its shard.
    pub(super) fn push(&mut self, m: Pending, at: Instant) {
        self.seq += 1;
        self.heap.push(Reverse(RetryItem {
            at,
            seq: self.seq,
            pending: m,
        }));
    }

    /// The records due at `now`, earliest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Pending> {
        let mut due = Vec::new();
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.at > now {
                break;
            }
            let Some(Reverse(item)) = self.heap.pop() else {
                break;
            };
            due.push(item.pending);
        }
        due
    }

    /// Every record waiting, unsent.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.heap.drain().map(|Reverse(item)| item.pending)
    }
}

impl Driver {
    /// Due retries are the oldest records: they go to the front of their shard's queue, not
    /// behind a backlog that may be throttled again before they get their turn.
    pub(super) fn requeue_due(&mut self, now: Instant) {
        let mut due: HashMap<ShardKey, Vec<Pending>> = HashMap::default();
        for p in self.retries.take_due(now) {
            let key = self.shard_key(p.hash());
            due.entry(key).or_default().push(p);
        }
        for (key, members) in due {
            self.requeue_front(key, members, now, Duration::ZERO);
        }
    }

    /// Sends the members of a failed Kinesis record again after `delay` (zero: at once, at the
    /// front of their shard, as far as its token buckets allow), or fails those whose TTL would
    /// pass first.
    pub(super) fn retry_all(
        &mut self,
        key: ShardKey,
        members: Vec<Pending>,
        ended: &Ended,
        delay: Duration,
        now: Instant,
    ) {
        let ttl = self.cfg.record_ttl;
        let mut live = Vec::with_capacity(members.len());
        for mut m in members {
            m.attempt_failed(ended);
            if later(now, delay) >= later(m.arrived, ttl) {
                // The next attempt would come after the TTL: fail now rather than wait for nothing.
                self.expire(m, now);
            } else {
                live.push(m);
            }
        }
        if live.is_empty() {
            return;
        }
        self.stats
            .retries
            .fetch_add(live.len() as u64, Ordering::Relaxed);
        if delay.is_zero() || self.cfg.preserve_order {
            // preserve_order: the shard waits out the delay with them at its front.
            self.requeue_front(key, live, now, delay);
        } else {
            for m in live {
                self.retries.push(m, later(now, delay));
            }
        }
    }

    /// A ready record with a member past its TTL: fail the expired, re-buffer the rest.
    pub(super) fn expire_members(&mut self, r: Ready, now: Instant) {
        let ttl = self.cfg.record_ttl;
        let mut live = Vec::new();
        let key = r.key.clone();
        for m in r.into_members() {
            if now.duration_since(m.arrived) >= ttl {
                self.expire(m, now);
            } else {
                live.push(m);
            }
        }
        if live.is_empty() {
            return;
        }
        if self.cfg.preserve_order {
            self.requeue_front(key, live, now, Duration::ZERO);
        } else {
            for m in live {
                self.enqueue(m, now);
            }
        }
    }

    pub(super) fn expire(&mut self, m: Pending, now: Instant) {
        let key = self.shard_key(m.hash());
        self.telemetry.expired(&key);
        let elapsed = now.duration_since(m.arrived);
        let last_error = m.last_error();
        self.settlement.fail(
            &self.stats,
            m,
            FailureReason::Expired {
                elapsed,
                last_error,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{CallBackoff, Retries};
    use crate::driver::messages::{Pending, Reply};
    use kinesis_core::{ErrorKind, PartitionKey, UserRecord};
    use tokio::time::{Duration, Instant};

    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// Call `id` failed; calls up to `next` were sent.
        Failed { id: u64, next: u64 },
        /// Call `id` was answered promptly.
        Answered { id: u64, next: u64 },
    }
    use Event::{Answered, Failed};

    #[test]
    fn only_calls_sent_since_the_pause_changed_grow_or_reset_it() {
        let ms = Duration::from_millis;
        // (events, the pause after them lies in [lo, hi))
        let table: &[(&[Event], (Duration, Duration))] = &[
            (&[Failed { id: 0, next: 3 }], (ms(50), ms(100))),
            // Calls 1 and 2 were sent before the pause grew: they wait as long, no growth.
            (
                &[
                    Failed { id: 0, next: 3 },
                    Failed { id: 1, next: 3 },
                    Failed { id: 2, next: 3 },
                ],
                (ms(50), ms(100)),
            ),
            // Call 3 was sent after: it grows the pause.
            (
                &[Failed { id: 0, next: 3 }, Failed { id: 3, next: 4 }],
                (ms(100), ms(200)),
            ),
            (
                &[
                    Failed { id: 0, next: 1 },
                    Failed { id: 1, next: 2 },
                    Failed { id: 2, next: 3 },
                ],
                (ms(200), ms(400)),
            ),
            // Capped at max.
            (
                &[
                    Failed { id: 0, next: 1 },
                    Failed { id: 1, next: 2 },
                    Failed { id: 2, next: 3 },
                    Failed { id: 3, next: 4 },
                    Failed { id: 4, next: 5 },
                ],
                (ms(400), ms(800)),
            ),
            // An answer to a call sent before the pause grew does not reset it ...
            (
                &[
                    Failed { id: 0, next: 2 },
                    Answered { id: 1, next: 2 },
                    Failed { id: 2, next: 3 },
                ],
                (ms(100), ms(200)),
            ),
            // ... an answer to one sent after does: the next failure starts over.
            (
                &[
                    Failed { id: 0, next: 1 },
                    Failed { id: 1, next: 2 },
                    Answered { id: 2, next: 3 },
                    Failed { id: 3, next: 4 },
                ],
                (ms(50), ms(100)),
            ),
        ];
        for (events, (lo, hi)) in table {
            let mut b = CallBackoff::new(ms(100), ms(800));
            let mut pause = Duration::ZERO;
            for e in *events {
                match *e {
                    Failed { id, next } => pause = b.failed(id, ErrorKind::Transient, next),
                    Answered { id, next } => b.answered(id, next),
                }
            }
            assert!(pause >= *lo && pause < *hi, "{events:?}: {pause:?}");
        }
    }

    fn pending(i: u32) -> Pending {
        let record = UserRecord::new(PartitionKey::new("k").unwrap(), None, "x".into());
        Pending::new(record, Reply::Batch { id: 0, index: i })
    }

    #[tokio::test(start_paused = true)]
    async fn retries_come_due_earliest_first_and_not_before_their_time() {
        let mut r = Retries::new(&crate::ProducerConfig::default());
        let now = Instant::now();
        let ms = Duration::from_millis;
        for (i, at) in [(0, 30), (1, 10), (2, 20), (3, 10)] {
            r.push(pending(i), now + ms(at));
        }
        let index = |ps: Vec<Pending>| -> Vec<u32> {
            ps.into_iter()
                .map(|p| match p.reply {
                    Reply::Batch { index, .. } => index,
                    Reply::One(..) => unreachable!(),
                })
                .collect()
        };
        assert_eq!(index(r.take_due(now + ms(9))), Vec::<u32>::new());
        // Same time: in the order they were pushed.
        assert_eq!(index(r.take_due(now + ms(20))), [1, 3, 2]);
        assert_eq!(index(r.take_due(now + ms(100))), [0]);
    }
}
