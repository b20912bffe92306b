//! Enhanced fan-out: a registered stream consumer and one SubscribeToShard session at a time per
//! leased shard, with bounded buffering.
//!
//! ```text
//!   register (describe → register if missing → wait ACTIVE) ─► consumer ARN
//!   subscription task ─ SubscribeToShard(from) ─► event ─► bounded channel (N events) ─► ShardWorker
//!        ▲        │ session ends (5 min) / error / ResourceInUse: back off, resubscribe
//!        └────────┘ AFTER_SEQUENCE_NUMBER of the last record delivered (never a gap, never a repeat);
//!                   before any record: AT the last ContinuationSequenceNumber the service gave,
//!                   or, before any event, AT_TIMESTAMP of when reading from LATEST began
//! ```
//!
//! Re-subscribing at LATEST would skip whatever arrived between two sessions: a shard that starts
//! at LATEST keeps the position the service last reported (the continuation, read AT, so it
//! means the same whether a service gives the last record read or the next one to read), and
//! before the first event the time its reading began (less a margin for clock skew: a few
//! records from before the start may come, none after it is skipped).
//!
//! Flow control: the task reads the next event only when the channel has room, so when the
//! processor is slower than the stream, reading stops and memory stays at N events (the KCL's
//! open issue #1699 is unbounded growth here). The event stream is not read meanwhile, so the
//! transport's own flow control holds the service back.
//!
//! A closed shard's subscription should end with its child shards. An endpoint that keeps it
//! open with empty events instead (kinesis-mock does) would hold the children back forever, so
//! while events come without records the task looks at the shard with ListShards now and then
//! (after 10 s, then 20 s, ... at most every 5 min); once the shard is closed it reads what is
//! left with GetRecords, which ends with the child shards.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use kinesis_core::backoff::BackoffConfig;
use kinesis_core::classify::{classify, classify_code};
use kinesis_core::shard_map::list_shards;
use kinesis_core::{
    AwsError, Checkpoint, ErrorKind, HashKeyRange, SequenceNumber, ShardId, StreamRef,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::processor::ConsumerRecord;
use crate::shard_worker::convert;

/// One delivery from a subscription.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) records: Vec<ConsumerRecord>,
    pub(crate) millis_behind_latest: Option<i64>,
    /// Set when the shard has ended: its children (possibly empty if the service did not say).
    pub(crate) end: Option<Vec<String>>,
}

/// Finds or registers the stream consumer and waits until it is ACTIVE; returns its ARN.
pub(crate) async fn register(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    name: &str,
    wait: Duration,
) -> Result<String, AwsError> {
    let stream_arn = match stream {
        StreamRef::Arn(a) => a.to_string(),
        StreamRef::Name(n) => {
            let out = kinesis
                .describe_stream_summary()
                .stream_name(&**n)
                .send()
                .await
                .map_err(|e| AwsError::new("DescribeStreamSummary", e))?;
            out.stream_description_summary()
                .map(|s| s.stream_arn().to_string())
                .ok_or_else(|| {
                    AwsError::other("DescribeStreamSummary", ErrorKind::Other, "no summary")
                })?
        }
    };
    let mut pauses = BackoffConfig::new(Duration::from_millis(50), Duration::from_secs(1))
        .with_deadline(wait)
        .build();
    let mut registered = false;
    loop {
        let described = kinesis
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await;
        match described {
            Ok(out) => {
                if let Some(d) = out.consumer_description()
                    && *d.consumer_status() == ConsumerStatus::Active
                {
                    return Ok(d.consumer_arn().to_string());
                }
            }
            Err(e) if classify(&e) == ErrorKind::NotFound && !registered => {
                match kinesis
                    .register_stream_consumer()
                    .stream_arn(&stream_arn)
                    .consumer_name(name)
                    .send()
                    .await
                {
                    Ok(_) => registered = true,
                    // Another worker registered it first.
                    Err(e) if classify(&e) == ErrorKind::ResourceInUse => registered = true,
                    Err(e) if classify(&e).is_retryable() => {}
                    Err(e) => return Err(AwsError::new("RegisterStreamConsumer", e)),
                }
            }
            Err(e) if classify(&e).is_retryable() || classify(&e) == ErrorKind::NotFound => {}
            Err(e) => return Err(AwsError::new("DescribeStreamConsumer", e)),
        }
        match pauses.next_delay() {
            Some(p) => tokio::time::sleep(p).await,
            None => {
                return Err(AwsError::other(
                    "DescribeStreamConsumer",
                    ErrorKind::Transient,
                    format!("stream consumer {name} not ACTIVE after {wait:?}"),
                ));
            }
        }
    }
}

/// Deregisters the stream consumer (optional at shutdown).
pub(crate) async fn deregister(
    kinesis: &aws_sdk_kinesis::Client,
    consumer_arn: &str,
) -> Result<(), AwsError> {
    kinesis
        .deregister_stream_consumer()
        .consumer_arn(consumer_arn)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| AwsError::new("DeregisterStreamConsumer", e))
}

/// SubscribeToShard failures: 1 s (the API's one call per second per shard), doubling to 30 s.
const SUBSCRIBE_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(30));

/// The pause before the next SubscribeToShard after a failure of `kind`: the backoff's step,
/// never under the API's one call per second per shard.
fn session_pause(backoff: &mut kinesis_core::Backoff, kind: ErrorKind) -> Duration {
    backoff
        .next_delay_for(kind)
        .unwrap_or(SUBSCRIBE_BACKOFF.max)
        .max(SUBSCRIBE_BACKOFF.initial)
}

/// First look at an idle subscription's shard, and the longest gap between looks.
const CLOSED_CHECK_FIRST: Duration = Duration::from_secs(10);
const CLOSED_CHECK_MAX: Duration = Duration::from_secs(300);

pub(crate) struct Subscription {
    pub(crate) kinesis: aws_sdk_kinesis::Client,
    /// For SubscribeToShard: the caller's client, whose attempts are not cut by a timeout.
    pub(crate) streaming: aws_sdk_kinesis::Client,
    /// Longest wait for the subscription's answer and for each next event (the service sends
    /// one at least every 5 s); past it the session counts as broken and is renewed.
    pub(crate) wait: Duration,
    pub(crate) stream: StreamRef,
    pub(crate) consumer_arn: String,
    pub(crate) shard: ShardId,
    pub(crate) range: HashKeyRange,
    /// Where the shard's reading starts (its checkpoint).
    pub(crate) start: Checkpoint,
    pub(crate) timestamp: Option<std::time::SystemTime>,
    /// Most events ever waiting in a shard's buffer (all shards of this worker).
    pub(crate) high_water: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Where the service says a subscription stands, for the next one to go on from.
#[derive(Debug, Default)]
struct Resume {
    /// The last record delivered.
    last: Option<SequenceNumber>,
    /// The last continuation the service gave.
    continuation: Option<SequenceNumber>,
    /// When reading from LATEST began (less the skew margin).
    latest_since: Option<std::time::SystemTime>,
}

/// How far before "now" a LATEST start is pinned, for clocks that disagree with the service's.
pub(crate) const LATEST_SKEW_MARGIN: Duration = Duration::from_secs(30);

impl Subscription {
    fn position(&self, resume: &Resume) -> Result<StartingPosition, AwsError> {
        let b = StartingPosition::builder();
        let b = match (&resume.last, &self.start) {
            (Some(seq), _) => b
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq.as_str()),
            (None, _) if resume.continuation.is_some() => b
                .r#type(ShardIteratorType::AtSequenceNumber)
                .set_sequence_number(resume.continuation.as_ref().map(|c| c.as_str().to_owned())),
            (None, Checkpoint::Latest) if resume.latest_since.is_some() => b
                .r#type(ShardIteratorType::AtTimestamp)
                .set_timestamp(resume.latest_since.map(Into::into)),
            (
                None,
                Checkpoint::Sequence {
                    sequence_number, ..
                },
            ) => b
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(sequence_number.as_str()),
            (None, Checkpoint::Latest) => b.r#type(ShardIteratorType::Latest),
            (None, Checkpoint::AtTimestamp) => match self.timestamp {
                Some(t) => b.r#type(ShardIteratorType::AtTimestamp).timestamp(t.into()),
                None => b.r#type(ShardIteratorType::TrimHorizon),
            },
            (None, _) => b.r#type(ShardIteratorType::TrimHorizon),
        };
        b.build()
            .map_err(|e| AwsError::other("SubscribeToShard", ErrorKind::Invalid, e))
    }

    /// Whether the shard is closed and everything up to its end was delivered.
    async fn finished(&self, last: Option<&SequenceNumber>) -> bool {
        let Ok(shards) = list_shards(&self.kinesis, &self.stream).await else {
            return false;
        };
        match shards.iter().find(|s| s.shard_id == self.shard) {
            None => true,
            Some(s) => match (&s.ending_sequence_number, last) {
                (Some(end), Some(l)) => l >= end,
                _ => false,
            },
        }
    }

    /// Whether ListShards says the shard is closed (or gone).
    async fn closed(&self) -> bool {
        match list_shards(&self.kinesis, &self.stream).await {
            Ok(shards) => shards
                .iter()
                .find(|s| s.shard_id == self.shard)
                .is_none_or(|s| s.ending_sequence_number.is_some()),
            Err(_) => false,
        }
    }

    /// Reads a closed shard from after `last` to its end with GetRecords and sends it on, the
    /// last event with the child shards. `false` if reading failed (the caller subscribes
    /// again and will look again).
    async fn drain(
        &self,
        resume: &mut Resume,
        keys: &mut kinesis_core::agg::KeyCache,
        tx: &mpsc::Sender<Event>,
    ) -> bool {
        let Ok(position) = self.position(resume) else {
            return false;
        };
        let mut req = self
            .kinesis
            .get_shard_iterator()
            .shard_id(self.shard.as_str())
            .shard_iterator_type(position.r#type().clone())
            .set_starting_sequence_number(position.sequence_number().map(str::to_owned))
            .set_timestamp(position.timestamp().copied());
        req = kinesis_core::with_stream!(req, &self.stream);
        let mut iterator = match req.send().await {
            Ok(o) => o.shard_iterator().map(str::to_owned),
            Err(e) => {
                warn!(message = "GetShardIterator failed on a closed shard.", shard_id = %self.shard, error = ?e);
                return false;
            }
        };
        debug!(message = "Shard closed under an open subscription; reading its end with GetRecords.", shard_id = %self.shard);
        while let Some(it) = iterator {
            let out = match self.kinesis.get_records().shard_iterator(&it).send().await {
                Ok(o) => o,
                Err(e) => {
                    warn!(message = "GetRecords failed on a closed shard.", shard_id = %self.shard, error = ?e);
                    return false;
                }
            };
            let children = shard_ids(out.child_shards());
            iterator = out.next_shard_iterator().map(str::to_owned);
            let behind = out.millis_behind_latest();
            let records = after(
                convert(&self.shard, out.records, self.range, keys),
                &mut resume.last,
            );
            let end = iterator.is_none().then_some(children);
            if records.is_empty() && end.is_none() {
                // At most five reads a second per shard (the API's limit).
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let event = Event {
                records,
                millis_behind_latest: behind,
                end,
            };
            if tx.send(event).await.is_err() {
                return true;
            }
        }
        true
    }

    /// Runs until the shard ends or the receiver is dropped.
    pub(crate) async fn run(self, tx: mpsc::Sender<Event>) {
        let mut resume = Resume {
            latest_since: matches!(self.start, Checkpoint::Latest)
                .then(|| std::time::SystemTime::now() - LATEST_SKEW_MARGIN),
            ..Resume::default()
        };
        // Session errors: 1 s doubling to 30 s, with jitter; a healthy session resets it. At
        // most one SubscribeToShard per second per shard (the API's limit) either way.
        let mut backoff = SUBSCRIBE_BACKOFF.build();
        let mut pause = SUBSCRIBE_BACKOFF.initial;
        // While events come without records: when to look whether the shard is closed.
        let mut idle_since = tokio::time::Instant::now();
        let mut check_after = CLOSED_CHECK_FIRST;
        let mut keys = kinesis_core::agg::KeyCache::new();
        loop {
            if tx.is_closed() {
                return;
            }
            let position = match self.position(&resume) {
                Ok(p) => p,
                Err(e) => {
                    warn!(message = "Bad starting position.", shard_id = %self.shard, error = %e);
                    return;
                }
            };
            let started = tokio::time::Instant::now();
            let subscribed = tokio::time::timeout(
                self.wait,
                self.streaming
                    .subscribe_to_shard()
                    .consumer_arn(&self.consumer_arn)
                    .shard_id(self.shard.as_str())
                    .starting_position(position)
                    .send(),
            )
            .await;
            let mut out = match subscribed {
                Err(_) => {
                    pause = session_pause(&mut backoff, ErrorKind::Transient);
                    warn!(message = "SubscribeToShard did not answer in time; backing off.", shard_id = %self.shard, retry_in = ?pause);
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    let kind = classify(&e);
                    if kind == ErrorKind::NotFound && self.finished(resume.last.as_ref()).await {
                        let _ = tx
                            .send(Event {
                                records: Vec::new(),
                                millis_behind_latest: None,
                                end: Some(Vec::new()),
                            })
                            .await;
                        return;
                    }
                    pause = session_pause(&mut backoff, kind);
                    warn!(message = "SubscribeToShard failed; backing off.", shard_id = %self.shard, kind = %kind, error = ?e, retry_in = ?pause);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            let labels =
                crate::telemetry::per_shard(crate::telemetry::PROCESS_TASK, self.shard.as_str());
            metrics::counter!("SubscribeToShard.Success", &labels).increment(1);
            loop {
                let Ok(next) = tokio::time::timeout(self.wait, out.event_stream.recv()).await
                else {
                    warn!(message = "No event from the subscription in time; resubscribing.", shard_id = %self.shard, waited = ?self.wait);
                    break;
                };
                match next {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(ev))) => {
                        backoff.reset();
                        pause = SUBSCRIBE_BACKOFF.initial;
                        let children = shard_ids(ev.child_shards.as_deref().unwrap_or_default());
                        let records = after(
                            convert(&self.shard, ev.records, self.range, &mut keys),
                            &mut resume.last,
                        );
                        if let Ok(c) = SequenceNumber::parse(&ev.continuation_sequence_number) {
                            resume.continuation = Some(c);
                        }
                        let end = (!children.is_empty()).then_some(children);
                        let ended = end.is_some();
                        if records.is_empty() && !ended {
                            if idle_since.elapsed() >= check_after {
                                check_after = (check_after * 2).min(CLOSED_CHECK_MAX);
                                idle_since = tokio::time::Instant::now();
                                if self.closed().await {
                                    if self.drain(&mut resume, &mut keys, &tx).await {
                                        return;
                                    }
                                    break;
                                }
                            }
                            continue;
                        }
                        idle_since = tokio::time::Instant::now();
                        check_after = CLOSED_CHECK_FIRST;
                        let event = Event {
                            records,
                            millis_behind_latest: Some(ev.millis_behind_latest),
                            end,
                        };
                        // Waits while the processor is behind: flow control.
                        if tx.send(event).await.is_err() || ended {
                            return;
                        }
                        let waiting = tx.max_capacity() - tx.capacity();
                        self.high_water
                            .fetch_max(waiting, std::sync::atomic::Ordering::Relaxed);
                        metrics::gauge!("FanOutRecordsPublisher.EventsBuffered", &labels)
                            .set(waiting as f64);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        debug!(message = "Subscription ended; resubscribing.", shard_id = %self.shard);
                        break;
                    }
                    Err(e) => {
                        let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
                        let kind = classify_code(code).unwrap_or(ErrorKind::Transient);
                        pause = session_pause(&mut backoff, kind);
                        warn!(message = "Subscription failed; resubscribing.", shard_id = %self.shard, code, kind = %kind, retry_in = ?pause);
                        break;
                    }
                }
            }
            if self.finished(resume.last.as_ref()).await {
                let _ = tx
                    .send(Event {
                        records: Vec::new(),
                        millis_behind_latest: None,
                        end: Some(Vec::new()),
                    })
                    .await;
                return;
            }
            // At most one SubscribeToShard per second per shard (AWS limit); more after errors.
            let since = started.elapsed();
            if since < pause {
                tokio::time::sleep(pause - since).await;
            }
        }
    }
}

/// The ids of child shards, as the events and GetRecords name them.
fn shard_ids(children: &[aws_sdk_kinesis::types::ChildShard]) -> Vec<String> {
    children.iter().map(|c| c.shard_id().to_string()).collect()
}

/// Never repeat: drops the records at or before `last` (the emulators and AWS differ on what a
/// continuation means, so the filter is on what was delivered) and moves `last` on.
fn after(
    mut records: Vec<ConsumerRecord>,
    last: &mut Option<SequenceNumber>,
) -> Vec<ConsumerRecord> {
    if let Some(l) = last.as_ref() {
        records.retain(|r| &r.sequence_number > l);
    }
    if let Some(r) = records.last() {
        *last = Some(r.sequence_number.clone());
    }
    records
}
