//! PutRecords calls in flight, and what their answers do.
//!
//! ```text
//!   answered ─► per entry: stored ─► succeeded (predicted shard? else refresh.rs)
//!            │             failed ─► throttled? the shard's limiter slows ─► retry at once
//!            │                                  (fail_if_throttled: fail Throttled)
//!            └► the window grows (prompt answers) and the call backoff resets
//!   failed   ─► retryable: one backoff for all calls, the window cut on a timeout or throttle
//!            └► not retryable: every record fails Rejected
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use kinesis_core::classify::classify_code;
use kinesis_core::{AwsError, ErrorKind};
use tokio::time::{Duration, Instant};
use tracing::{debug, warn};

use super::Driver;
use super::buffers::ShardKey;
use super::messages::{Ended, Pending};
use super::ready::Flying;
use super::refresh::Stored;
use crate::api::{EntryResult, INVALID_RESPONSE};
use crate::config::ProducerConfig;
use crate::error::{AttemptOutcome, FailureReason};
use crate::window::{Sent, Window};

/// The user records of one PutRecords call, per entry (with the entry's predicted shard and its
/// Kinesis record's size), kept here (not in the call's future) so that a shutdown can hand
/// them back.
pub(super) type Batch = Vec<(ShardKey, usize, Flying)>;

pub(super) type Response = (u64, Result<Vec<EntryResult>, AwsError>);

/// A PutRecords call in flight: its records, and what it meant for the window.
pub(super) struct Call {
    pub(super) batch: Batch,
    pub(super) sent_at: Instant,
    pub(super) sent: Sent,
}

/// The calls in flight and the window they stay within.
pub(super) struct Calls {
    pub(super) futures: FuturesUnordered<BoxFuture<'static, Response>>,
    /// Their records, by call id.
    pub(super) open: HashMap<u64, Call>,
    /// Bytes of the calls in flight.
    pub(super) bytes: usize,
    pub(super) window: Window,
    pub(super) next_id: u64,
}

impl Calls {
    pub(super) fn new(cfg: &ProducerConfig) -> Self {
        // At the least one full aggregate per call (a larger record still goes, alone).
        let window = Window::new(
            cfg.max_in_flight_requests,
            cfg.max_in_flight_requests
                .saturating_mul(cfg.collection_max_bytes),
            cfg.aggregate_max_bytes().min(cfg.collection_max_bytes),
        );
        Self {
            futures: FuturesUnordered::new(),
            open: HashMap::new(),
            bytes: 0,
            window,
            next_id: 0,
        }
    }

    /// Drops every running call (their outcome stays unknown); returns their records, the
    /// attempt logged as not answered.
    pub(super) fn abandon(&mut self, now: Instant) -> Vec<Pending> {
        self.futures = FuturesUnordered::new();
        self.bytes = 0;
        let mut flying = Vec::new();
        for (_, call) in self.open.drain() {
            let ended = Ended {
                sent_at: call.sent_at,
                took: now.saturating_duration_since(call.sent_at),
                outcome: AttemptOutcome::NoAnswer,
                text: "no answer before the producer stopped".into(),
            };
            for (_, _, members) in call.batch {
                for mut m in members.into_members() {
                    m.attempt_failed(&ended);
                    flying.push(m);
                }
            }
        }
        flying
    }
}

impl Driver {
    /// Call `id` was answered (or failed as a whole).
    pub(super) fn response(&mut self, id: u64, result: Result<Vec<EntryResult>, AwsError>) {
        let Some(call) = self.calls.open.remove(&id) else {
            return;
        };
        let now = Instant::now();
        let Call {
            batch,
            sent_at,
            sent,
        } = call;
        self.calls.bytes = self.calls.bytes.saturating_sub(sent.bytes);
        self.stats
            .calls_in_flight
            .store(self.calls.futures.len() as u64, Ordering::Relaxed);
        let took = now.saturating_duration_since(sent_at);
        match result {
            Ok(results) if results.len() == batch.len() => {
                self.answered(id, batch, results, (sent_at, sent), took, now);
            }
            Ok(results) => {
                // Not one result per record (a malformed answer): some or all may be stored.
                let e = AwsError::other(
                    "PutRecords",
                    ErrorKind::Transient,
                    format!(
                        "response has {} entries for {} records",
                        results.len(),
                        batch.len()
                    ),
                )
                .with_outcome_unknown();
                self.call_failed(id, batch, e, (sent_at, sent), took, now);
            }
            Err(e) => self.call_failed(id, batch, e, (sent_at, sent), took, now),
        }
    }

    fn answered(
        &mut self,
        id: u64,
        batch: Batch,
        results: Vec<EntryResult>,
        (sent_at, sent): (Instant, Sent),
        took: Duration,
        now: Instant,
    ) {
        // A slow answer neither grows the window nor ends the pause: the endpoint is near what
        // it can take.
        let promptly = took < self.cfg.request_timeout / 2;
        self.calls.window.answered(id, sent, promptly);
        if promptly {
            self.retries.call_backoff.answered(id, self.calls.next_id);
        }
        for ((key, bytes, mut members), res) in batch.into_iter().zip(results) {
            self.release_in_flight(&key);
            match res {
                EntryResult::Ok {
                    shard_id,
                    sequence_number,
                } => {
                    self.stats
                        .kinesis_records_put
                        .fetch_add(1, Ordering::Relaxed);
                    self.telemetry.stored(&key, bytes);
                    let stored = Stored {
                        shard_id,
                        sequence_number,
                        sent_at,
                        took,
                    };
                    self.succeeded(&key, stored, members, now);
                }
                EntryResult::Failed { code, message } => {
                    let kind = classify_code(&code).unwrap_or(ErrorKind::Transient);
                    self.telemetry.entry_failed(&key, &code);
                    let text: Arc<str> = format!("{code}: {message}").into();
                    let throttled = kind == ErrorKind::Throttled;
                    let invalid = &*code == INVALID_RESPONSE;
                    let ended = Ended {
                        sent_at,
                        took,
                        outcome: AttemptOutcome::EntryFailed { code, message },
                        text: Arc::clone(&text),
                    };
                    if throttled
                        && let Some(l) = self
                            .buffers
                            .shards
                            .get_mut(&key)
                            .and_then(|s| s.limiter.as_mut())
                    {
                        l.throttled(now);
                    }
                    if throttled && self.cfg.fail_if_throttled {
                        for mut m in members.into_members() {
                            m.attempt_failed(&ended);
                            self.settlement.fail(
                                &self.stats,
                                m,
                                FailureReason::Throttled(Arc::clone(&text)),
                            );
                        }
                    } else {
                        if invalid {
                            // Answered, but not readably: it may be stored.
                            members.possibly_stored();
                        }
                        // Not stored: send again at once, paced by the shard's buckets
                        // (emptied above if it was a throttle), not by a backoff.
                        let members = members.into_members();
                        self.retry_all(key, members, &ended, Duration::ZERO, now);
                    }
                }
            }
        }
    }

    fn call_failed(
        &mut self,
        id: u64,
        batch: Batch,
        e: AwsError,
        (sent_at, sent): (Instant, Sent),
        took: Duration,
        now: Instant,
    ) {
        self.telemetry.call_failed(e.code().unwrap_or("Request"));
        let retryable = e.is_retryable();
        let unknown = e.outcome_unknown();
        // No answer in time (whatever error the timeout surfaced as), or a throttled call: the
        // endpoint could not take what was in flight. Both shrink the window and pause as a
        // throttle does (at least 500 ms). A timeout shrinks it most: the call may still be
        // running there, and its records sent again at once, with as much beside them, would
        // only time out again.
        let timed_out = retryable && took >= self.cfg.request_timeout;
        let throttled = retryable && e.kind().is_throttling();
        let next_call = self.calls.next_id;
        let delay = if retryable {
            let kind = if timed_out {
                ErrorKind::Throttled
            } else {
                e.kind()
            };
            self.retries.call_backoff.failed(id, kind, next_call)
        } else {
            Duration::ZERO
        };
        let cut = if timed_out {
            self.calls.window.timed_out(id, sent, next_call)
        } else {
            throttled && self.calls.window.throttled(id, sent, next_call)
        };
        if cut {
            metrics::counter!("PutRecordsWindowCuts").increment(1);
            warn!(
                message = "PutRecords not answered in time or throttled; sending less at once.",
                stream = %self.stream,
                error = %e,
                took = ?took,
                calls_in_flight = self.calls.window.calls(),
                bytes_in_flight = self.calls.window.bytes(),
            );
        }
        if retryable {
            debug!(message = "PutRecords failed; retrying.", error = %e, outcome_unknown = unknown, pause = ?delay);
        } else {
            warn!(message = "PutRecords rejected; failing its records.", stream = %self.stream, error = %e);
        }
        let e = Arc::new(e);
        let ended = Ended {
            sent_at,
            took,
            outcome: AttemptOutcome::CallFailed(Arc::clone(&e)),
            text: e.to_string().into(),
        };
        for (key, _, mut members) in batch {
            self.release_in_flight(&key);
            if retryable {
                if unknown {
                    members.possibly_stored();
                }
                self.retry_all(key, members.into_members(), &ended, delay, now);
            } else {
                for mut m in members.into_members() {
                    m.attempt_failed(&ended);
                    self.settlement
                        .fail(&self.stats, m, FailureReason::Rejected(Arc::clone(&e)));
                }
            }
        }
    }

    fn release_in_flight(&mut self, key: &ShardKey) {
        if let Some(st) = self.buffers.shards.get_mut(key) {
            st.in_flight = st.in_flight.saturating_sub(1);
            if !st.ready.is_empty() {
                self.buffers.waiting.push(key.clone());
            }
        }
    }
}
