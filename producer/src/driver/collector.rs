//! The collector: the ready Kinesis records that go in the next PutRecords calls, and how they
//! get there.
//!
//! ```text
//!   ShardState.ready ─(preserve_order hold? TTL? token buckets)─► Collector.ready (bytes, deadline)
//!                                                                      │ full, due, or urgent
//!                                                                      ▼
//!                 front up to min(collection_max_bytes, window bytes) ─► one PutRecords call
//!                 (as many calls as the window lets fly)                 (Calls, calls.rs)
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Driver;
use super::calls::{Batch, Call};
use super::ready::{Ready, seal_call};
use crate::window::Sent;
use kinesis_core::clock::later;

/// Ready records waiting for the next call.
pub(super) struct Collector {
    pub(super) ready: Vec<Ready>,
    /// Bytes of `ready`.
    pub(super) bytes: usize,
    /// When the earliest of them is due.
    pub(super) deadline: Option<Instant>,
}

impl Collector {
    pub(super) fn new() -> Self {
        Self {
            ready: Vec::new(),
            bytes: 0,
            deadline: None,
        }
    }

    pub(super) fn push(&mut self, r: Ready, size: usize, due: Instant) {
        self.bytes += size;
        self.deadline = Some(self.deadline.map_or(due, |d| d.min(due)));
        self.ready.push(r);
    }

    /// Takes the first `take` records, of `bytes` bytes.
    fn take_front(&mut self, take: usize, bytes: usize) -> Vec<Ready> {
        let rest = self.ready.split_off(take);
        let front = std::mem::replace(&mut self.ready, rest);
        self.bytes -= bytes;
        if self.ready.is_empty() {
            self.deadline = None;
        }
        front
    }
}

/// How many of the front records (of these sizes) one call of at most `max` bytes takes, and
/// their bytes: at least one, however large.
pub(super) fn front_fitting(sizes: impl IntoIterator<Item = usize>, max: usize) -> (usize, usize) {
    let (mut take, mut bytes) = (0, 0);
    for size in sizes {
        if take > 0 && bytes + size > max {
            break;
        }
        take += 1;
        bytes += size;
    }
    (take, bytes)
}

impl Driver {
    /// Moves ready records through the rate limiters into the collector, sending full batches.
    pub(super) fn pump(&mut self) {
        if self.buffers.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut keys = std::mem::take(&mut self.buffers.waiting);
        keys.sort_unstable();
        keys.dedup();
        let mut still = Vec::new();
        let ttl = self.cfg.record_ttl;
        let preserve = self.cfg.preserve_order;
        for key in keys {
            if preserve && self.buffers.waits_for_parents(&key) {
                still.push(key.clone());
                continue;
            }
            while let Some(st) = self.buffers.shards.get_mut(&key) {
                let Some(front) = st.ready.front() else { break };
                if preserve && (st.in_flight > 0 || st.blocked_until.is_some_and(|t| t > now)) {
                    still.push(key.clone());
                    break;
                }
                if now.duration_since(front.oldest) >= ttl {
                    // Past the TTL: fail those here rather than send them.
                    let Some(r) = st.ready.pop_front() else { break };
                    self.expire_members(r, now);
                    continue;
                }
                let size = front.size_bytes();
                if self.collector_full_for(size) {
                    self.dispatch();
                    if self.collector_full_for(size) {
                        // No request slot free: wait for a response.
                        still.push(key.clone());
                        break;
                    }
                }
                let Some(st) = self.buffers.shards.get_mut(&key) else {
                    break;
                };
                if let Some(l) = st.limiter.as_mut()
                    && !l.try_take(size, now)
                {
                    st.held_back = true;
                    still.push(key.clone());
                    break;
                }
                let Some(r) = st.ready.pop_front() else { break };
                st.in_flight += 1;
                // Records of a shard the rate limit holds back are late already, and the stream
                // takes no more than the limit: sending each refill at once would only make many
                // small calls. They wait up to another record_max_buffered_time for company in
                // the collector, until the shard's backlog is gone.
                let held = st.held_back;
                if st.ready.is_empty() {
                    st.held_back = false;
                }
                let due = if held {
                    r.deadline
                        .max(later(now, self.cfg.record_max_buffered_time))
                } else {
                    r.deadline
                };
                self.collector.push(r, size, due);
                if self.collector.ready.len() >= self.cfg.collection_max_count {
                    self.dispatch();
                }
            }
        }
        self.buffers.waiting.extend(still);
    }

    fn collector_full_for(&self, size: usize) -> bool {
        let c = &self.collector;
        c.ready.len() >= self.cfg.collection_max_count
            || (!c.ready.is_empty() && c.bytes + size > self.call_max_bytes())
    }

    /// The largest call: `collection_max_bytes`, or less while the window is cut.
    fn call_max_bytes(&self) -> usize {
        self.cfg.collection_max_bytes.min(self.calls.window.bytes())
    }

    /// Whether the collector should go now: a flush or shutdown waits, it is full, or due.
    pub(super) fn collector_due(&self, now: Instant) -> bool {
        self.urgent()
            || self.collector.ready.len() >= self.cfg.collection_max_count
            || self.collector.deadline.is_some_and(|d| d <= now)
    }

    /// Sends the collector as PutRecords calls, as far as the window has room.
    pub(super) fn dispatch(&mut self) {
        while self.dispatch_one() {}
    }

    /// Sends the front of the collector (as much as one call may hold) as one PutRecords call,
    /// if the window has room: fewer calls than it allows in flight, and their bytes with this
    /// call's within it. A call always goes when none is in flight. Returns whether one went.
    fn dispatch_one(&mut self) -> bool {
        if self.collector.ready.is_empty() {
            return false;
        }
        let flying = self.calls.futures.len();
        if flying
            >= self
                .cfg
                .max_in_flight_requests
                .min(self.calls.window.calls())
        {
            return false;
        }
        // The front of the collector, up to the largest call (at least one record): the window
        // may have shrunk since it filled.
        let (take, bytes) = front_fitting(
            self.collector.ready.iter().map(Ready::size_bytes),
            self.call_max_bytes(),
        );
        if flying > 0 && self.calls.bytes + bytes > self.calls.window.bytes() {
            return false;
        }
        let mut ready = self.collector.take_front(take, bytes);
        // The MD5s of all of the call's aggregates, side by side.
        seal_call(&mut ready);
        let mut records = Vec::with_capacity(ready.len());
        let mut batch: Batch = Vec::with_capacity(ready.len());
        let mut users = 0;
        let now = Instant::now();
        for r in ready {
            let (key, oldest, size) = (r.key.clone(), r.oldest, r.size_bytes());
            let (kr, mut members) = r.into_flying();
            members.attempted();
            users += members.len();
            self.telemetry
                .kinesis_record_sent(&key, members.len(), oldest, now);
            batch.push((key, size, members));
            records.push(kr);
        }
        let n = records.len();
        let id = self.calls.next_id;
        self.calls.next_id += 1;
        self.calls.bytes += bytes;
        let sent = Sent {
            bytes,
            calls_in_flight: flying + 1,
            bytes_in_flight: self.calls.bytes,
        };
        self.calls.open.insert(
            id,
            Call {
                batch,
                sent_at: now,
                sent,
            },
        );
        self.stats
            .calls_in_flight
            .store(flying as u64 + 1, Ordering::Relaxed);
        self.stats.put_calls.fetch_add(1, Ordering::Relaxed);
        self.telemetry.call_sent(n, users);
        let request_time = self.telemetry.request_time.clone();
        let api = Arc::clone(&self.api);
        let stream = self.stream.clone();
        let timeout = self.cfg.request_timeout;
        let span = tracing::debug_span!("put_records", stream = %self.stream, records = n, user_records = users, bytes);
        self.calls
            .futures
            .push(Box::pin(tracing::Instrument::instrument(
                async move {
                    let started = Instant::now();
                    let result = api.put_records(stream, records, timeout).await;
                    request_time.record(started.elapsed().as_secs_f64() * 1000.0);
                    (id, result)
                },
                span,
            )));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::front_fitting;

    #[test]
    fn a_call_takes_the_front_up_to_its_bytes_and_at_least_one_record() {
        // (sizes, max) → (records taken, bytes)
        let table: &[(&[usize], usize, (usize, usize))] = &[
            (&[], 100, (0, 0)),
            (&[10, 20, 30], 100, (3, 60)),
            (&[10, 20, 30], 30, (2, 30)),
            (&[10, 20, 30], 29, (1, 10)),
            // Larger than a call: still goes, alone.
            (&[500, 1], 100, (1, 500)),
            (&[50, 50, 1], 100, (2, 100)),
        ];
        for (sizes, max, want) in table {
            assert_eq!(
                front_fitting(sizes.iter().copied(), *max),
                *want,
                "{sizes:?} max {max}"
            );
        }
    }
}
