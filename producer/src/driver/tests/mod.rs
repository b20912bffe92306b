//! The driver through a fake [`KinesisApi`], under Tokio's paused clock: no real sleeps.
//!
//! ```text
//!   test ─► Producer (start_with_api) ─► Driver task ─► FakeApi.put_records ─► script(call, records)
//!                                                         │ records every call (time, records)
//!                                                         └ answers: Store | StoreOn | FailEntries
//!                                                                    | Error | Never | After(d, ..)
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod routing;
mod timing;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use kinesis_core::agg::deaggregate;
use kinesis_core::shard_map::{Shard, ShardMap};
use kinesis_core::{
    AwsError, HashKey, HashKeyRange, KinesisRecord, PartitionKey, SequenceNumber, ShardId,
    StreamRef, UserRecord,
};
use tokio::time::{Duration, Instant};

use crate::api::{EntryResult, KinesisApi};
use crate::config::ProducerConfig;
use crate::producer::Producer;

/// How the fake answers one PutRecords call.
pub(super) enum Answer {
    /// Every entry stored, on the shard of the fake's own map that owns its key.
    Store,
    /// Every entry stored on this shard.
    StoreOn(&'static str),
    /// Every entry failed with this code.
    FailEntries(&'static str),
    /// The whole call failed.
    Error(AwsError),
    /// Only the first entries stored, the answer short of the others (malformed).
    StoreFirst(usize),
    /// No answer, ever.
    Never,
    /// This answer, after a while.
    After(Duration, Box<Answer>),
}

/// Decides the answer to call number `n` (from 0), given its records.
type Script = Box<dyn FnMut(usize, &[KinesisRecord]) -> Answer + Send>;

/// One PutRecords call the fake got.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) at: Instant,
    pub(super) records: Vec<KinesisRecord>,
}

impl Seen {
    /// The data of every user record in the call, in order (aggregates opened).
    pub(super) fn user_records(&self) -> Vec<String> {
        self.records
            .iter()
            .flat_map(|kr| deaggregate(kr.partition_key.as_str(), kr.data.clone()))
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect()
    }
}

struct State {
    script: Script,
    calls: Vec<Seen>,
    /// What ListShards answers, and where `Answer::Store` stores.
    shards: Vec<Shard>,
    /// Scripted ListShards answers, in order (each after its delay); `shards` at once when none
    /// is left.
    lists: std::collections::VecDeque<(Duration, Result<Vec<Shard>, AwsError>)>,
    list_calls: usize,
    seq: u64,
}

/// A scripted Kinesis.
pub(super) struct FakeApi {
    state: Mutex<State>,
}

impl FakeApi {
    pub(super) fn new(
        shards: Vec<Shard>,
        script: impl FnMut(usize, &[KinesisRecord]) -> Answer + Send + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                script: Box::new(script),
                calls: Vec::new(),
                shards,
                lists: std::collections::VecDeque::new(),
                list_calls: 0,
                seq: 0,
            }),
        })
    }

    /// Every PutRecords call so far.
    pub(super) fn calls(&self) -> Vec<Seen> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The next ListShards calls answer these, in order, each after its delay.
    pub(super) fn script_lists(&self, answers: Vec<(Duration, Result<Vec<Shard>, AwsError>)>) {
        self.state.lock().unwrap().lists.extend(answers);
    }

    pub(super) fn list_calls(&self) -> usize {
        self.state.lock().unwrap().list_calls
    }

    fn results(
        st: &mut State,
        answer: Answer,
        records: &[KinesisRecord],
    ) -> Option<Result<Vec<EntryResult>, AwsError>> {
        let map = ShardMap::new(st.shards.clone());
        let mut stored = |shard: ShardId| {
            st.seq += 1;
            EntryResult::Ok {
                shard_id: shard,
                sequence_number: SequenceNumber::parse(&format!("{:020}", st.seq)).unwrap(),
            }
        };
        Some(Ok(match answer {
            Answer::Store => records
                .iter()
                .map(|kr| {
                    let hash = kr
                        .explicit_hash_key
                        .unwrap_or_else(|| kr.partition_key.hash_key());
                    stored(
                        map.shard_for(hash)
                            .expect("a shard owns every key")
                            .shard_id
                            .clone(),
                    )
                })
                .collect(),
            Answer::StoreOn(id) => records.iter().map(|_| stored(shard_id(id))).collect(),
            Answer::StoreFirst(k) => records
                .iter()
                .take(k)
                .map(|_| stored(shard_id("shardId-000000000000")))
                .collect(),
            Answer::FailEntries(code) => records
                .iter()
                .map(|_| EntryResult::Failed {
                    code: code.into(),
                    message: "scripted".into(),
                })
                .collect(),
            Answer::Error(e) => return Some(Err(e)),
            Answer::Never => return None,
            Answer::After(_, a) => return Self::results(st, *a, records),
        }))
    }
}

impl KinesisApi for FakeApi {
    fn put_records(
        &self,
        _stream: StreamRef,
        records: Vec<KinesisRecord>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<EntryResult>, AwsError>> {
        let mut st = self.state.lock().unwrap();
        let n = st.calls.len();
        st.calls.push(Seen {
            at: Instant::now(),
            records: records.clone(),
        });
        let answer = (st.script)(n, &records);
        let delay = match &answer {
            Answer::After(d, _) => *d,
            _ => Duration::ZERO,
        };
        let result = Self::results(&mut st, answer, &records);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            match result {
                Some(r) => r,
                None => std::future::pending().await,
            }
        })
    }

    fn list_shards(&self, _stream: StreamRef) -> BoxFuture<'static, Result<Vec<Shard>, AwsError>> {
        let mut st = self.state.lock().unwrap();
        st.list_calls += 1;
        let (delay, answer) = st
            .lists
            .pop_front()
            .unwrap_or_else(|| (Duration::ZERO, Ok(st.shards.clone())));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            answer
        })
    }
}

pub(super) fn shard_id(id: &str) -> ShardId {
    ShardId::new(id).unwrap()
}

/// A shard owning `start..=end`, open or closed.
pub(super) fn shard(id: &str, start: u128, end: u128, open: bool) -> Shard {
    Shard {
        shard_id: shard_id(id),
        parent_shard_id: None,
        adjacent_parent_shard_id: None,
        hash_key_range: HashKeyRange::new(HashKey(start), HashKey(end)).unwrap(),
        starting_sequence_number: SequenceNumber::parse("0").unwrap(),
        ending_sequence_number: (!open).then(|| SequenceNumber::parse("9").unwrap()),
    }
}

/// One open shard owning every key.
pub(super) fn one_shard() -> Vec<Shard> {
    vec![shard("shardId-000000000000", 0, u128::MAX, true)]
}

/// A record whose data is `data`, with key `key`.
pub(super) fn record(key: &str, data: &str) -> UserRecord {
    UserRecord::new(
        PartitionKey::new(key).unwrap(),
        None,
        Bytes::from(data.to_owned()),
    )
}

/// A record routed by an explicit hash key.
pub(super) fn record_at(hash: u128, data: &str) -> UserRecord {
    UserRecord::new(
        PartitionKey::new("k").unwrap(),
        Some(HashKey(hash)),
        Bytes::from(data.to_owned()),
    )
}

/// Short deadlines, no jitter-free surprises: the defaults where a test does not care.
pub(super) fn config() -> ProducerConfig {
    ProducerConfig {
        record_max_buffered_time: Duration::from_millis(10),
        record_ttl: Duration::from_secs(3),
        retry_min_delay: Duration::from_millis(100),
        retry_max_delay: Duration::from_secs(1),
        ..ProducerConfig::default()
    }
}

/// A producer whose driver believes `map` and talks to `api`.
pub(super) fn start(cfg: ProducerConfig, map: Vec<Shard>, api: &Arc<FakeApi>) -> Producer {
    cfg.validate().unwrap();
    let api: Arc<dyn KinesisApi> = Arc::clone(api) as Arc<dyn KinesisApi>;
    Producer::start_with_api(
        cfg,
        api,
        StreamRef::parse("test").unwrap(),
        ShardMap::new(map),
    )
}

/// The records' data as text, sorted.
pub(super) fn sorted_data(records: &[UserRecord]) -> Vec<String> {
    let mut d: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    d.sort();
    d
}

/// Until the fake got its first call (paused clock: virtual time advances meanwhile).
pub(super) async fn until_a_call(api: &FakeApi) {
    while api.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A retryable whole-call failure.
pub(super) fn transient() -> AwsError {
    AwsError::other(
        "PutRecords",
        kinesis_core::ErrorKind::Transient,
        "connection reset by peer",
    )
}
