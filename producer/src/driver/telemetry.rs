//! The KPL's metrics, with its dimensions: handles registered once per stream and per shard,
//! and what one event of the driver's loop did, summed per shard before anything is emitted.
//!
//! ```text
//!   deliver / answered / expire ─► Tally per shard key (plain integers, no label, no macro)
//!   after each event of the loop ─► emit: one increment per shard and metric ─► ShardHandles
//!   per Kinesis record sent      ─► BufferingTime, UserRecordsPerKinesisRecord (cached handles)
//!   per PutRecords call          ─► RequestTime, KinesisRecordsPerPutRecordsRequest, ...
//! ```
//!
//! Labels are the KPL's dimension names (`StreamName`, `ShardId`, `ErrorCode`): a recorder that
//! turns labels into dimensions (kinesis-metrics' CloudWatch recorder with
//! `MetricsConfig::kpl()`) publishes what the KPL publishes. Handles come from the recorder
//! installed when the producer first sees the stream or the shard: install it before building
//! producers.

use std::sync::Arc;

use foldhash::HashMap;
use foldhash::HashMapExt as _;
use metrics::{Counter, Gauge, Histogram, SharedString, Unit};
use tokio::time::{Duration, Instant};

use super::buffers::ShardKey;

const STREAM_NAME: &str = "StreamName";
const SHARD_ID: &str = "ShardId";
const ERROR_CODE: &str = "ErrorCode";

/// How often `UserRecordsPending` is sampled while records are outstanding (the KPL: 200 ms).
const PENDING_EVERY: Duration = Duration::from_millis(200);

/// One shard's handles (or the stream's, for records no open shard covers).
struct ShardHandles {
    labels: Vec<metrics::Label>,
    user_records_put: Counter,
    user_records_data_put: Counter,
    kinesis_records_put: Counter,
    kinesis_records_data_put: Counter,
    all_errors: Counter,
    expired: Counter,
    retries: Histogram,
    buffering: Histogram,
    per_kinesis_record: Histogram,
    /// `ErrorsByCode`, per code seen (a handful).
    errors: Vec<(Arc<str>, Counter)>,
}

impl ShardHandles {
    fn new(stream: &SharedString, key: &ShardKey) -> Self {
        let mut labels = vec![metrics::Label::new(STREAM_NAME, stream.clone())];
        if let Some(id) = key {
            labels.push(metrics::Label::new(SHARD_ID, id.as_str().to_owned()));
        }
        let c = |name: &'static str| metrics::counter!(name, labels.iter());
        let h = |name: &'static str| metrics::histogram!(name, labels.iter());
        Self {
            user_records_put: c("UserRecordsPut"),
            user_records_data_put: c("UserRecordsDataPut"),
            kinesis_records_put: c("KinesisRecordsPut"),
            kinesis_records_data_put: c("KinesisRecordsDataPut"),
            all_errors: c("AllErrors"),
            expired: c("UserRecordExpired"),
            retries: h("RetriesPerRecord"),
            buffering: h("BufferingTime"),
            per_kinesis_record: h("UserRecordsPerKinesisRecord"),
            errors: Vec::new(),
            labels,
        }
    }

    fn errors_by_code(&mut self, code: &Arc<str>) -> &Counter {
        let i = match self.errors.iter().position(|(c, _)| c == code) {
            Some(i) => i,
            None => {
                let mut labels = self.labels.clone();
                labels.push(metrics::Label::new(ERROR_CODE, code.to_string()));
                let counter = metrics::counter!("ErrorsByCode", labels.iter());
                self.errors.push((Arc::clone(code), counter));
                self.errors.len() - 1
            }
        };
        &self.errors[i].1
    }
}

/// What one event did to one shard's records.
#[derive(Default)]
pub(super) struct Tally {
    user_records: u64,
    user_bytes: u64,
    kinesis_records: u64,
    kinesis_bytes: u64,
    errors: u64,
    expired: u64,
    codes: Vec<(Arc<str>, u64)>,
}

/// The stream's handles, the shards', and this event's tallies.
pub(super) struct Telemetry {
    stream: SharedString,
    received: Counter,
    pending: Gauge,
    /// When `UserRecordsPending` was last set, and to what.
    pending_sampled: Option<(Instant, u64)>,
    pub(super) request_time: Histogram,
    kinesis_per_call: Histogram,
    users_per_call: Histogram,
    call_errors: Counter,
    shards: HashMap<ShardKey, ShardHandles>,
    tally: HashMap<ShardKey, Tally>,
}

impl Telemetry {
    pub(super) fn new(stream: &str) -> Self {
        describe();
        let stream = SharedString::from(stream.to_owned());
        let s = || [(STREAM_NAME, stream.clone())];
        Self {
            received: metrics::counter!("UserRecordsReceived", &s()),
            pending: metrics::gauge!("UserRecordsPending", &s()),
            pending_sampled: None,
            request_time: metrics::histogram!("RequestTime", &s()),
            kinesis_per_call: metrics::histogram!("KinesisRecordsPerPutRecordsRequest", &s()),
            users_per_call: metrics::histogram!("UserRecordsPerPutRecordsRequest", &s()),
            call_errors: metrics::counter!("AllErrors", &s()),
            shards: HashMap::new(),
            tally: HashMap::new(),
            stream,
        }
    }

    fn handles(&mut self, key: &ShardKey) -> &mut ShardHandles {
        if !self.shards.contains_key(key) {
            let h = ShardHandles::new(&self.stream, key);
            self.shards.insert(key.clone(), h);
        }
        self.shards
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    fn tally(&mut self, key: &ShardKey) -> &mut Tally {
        if !self.tally.contains_key(key) {
            self.tally.insert(key.clone(), Tally::default());
        }
        self.tally
            .get_mut(key)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// `n` user records taken from the handle.
    pub(super) fn received(&self, n: u64) {
        if n > 0 {
            self.received.increment(n);
        }
    }

    /// Samples the records outstanding, at most every 200 ms, and at once when they drop to
    /// none (the loop then idles: the gauge must not keep the last busy value).
    pub(super) fn sample_pending(&mut self, outstanding: u64, now: Instant) {
        let due = match self.pending_sampled {
            None => true,
            Some((_, last)) if outstanding == 0 => last != 0,
            Some((at, _)) => now.saturating_duration_since(at) >= PENDING_EVERY,
        };
        if due {
            self.pending_sampled = Some((now, outstanding));
            self.pending.set(outstanding as f64);
        }
    }

    /// A PutRecords call of `kinesis` Kinesis records holding `users` user records went.
    pub(super) fn call_sent(&self, kinesis: usize, users: usize) {
        self.kinesis_per_call.record(kinesis as f64);
        self.users_per_call.record(users as f64);
    }

    /// A Kinesis record of `users` user records, the oldest of which arrived at `oldest`, goes
    /// in a call now.
    pub(super) fn kinesis_record_sent(
        &mut self,
        key: &ShardKey,
        users: usize,
        oldest: Instant,
        now: Instant,
    ) {
        let h = self.handles(key);
        h.per_kinesis_record.record(users as f64);
        h.buffering
            .record(now.saturating_duration_since(oldest).as_secs_f64() * 1000.0);
    }

    /// A Kinesis record of `bytes` predicted for `key` was stored.
    pub(super) fn stored(&mut self, key: &ShardKey, bytes: usize) {
        let t = self.tally(key);
        t.kinesis_records += 1;
        t.kinesis_bytes += bytes as u64;
    }

    /// `n` user records of `bytes` were delivered on `shard`.
    pub(super) fn delivered(&mut self, shard: &kinesis_core::ShardId, n: u64, bytes: u64) {
        let key = Some(shard.clone());
        let t = self.tally(&key);
        t.user_records += n;
        t.user_bytes += bytes;
    }

    /// A user record delivered on `shard` after `retries` retries.
    pub(super) fn retried(&mut self, shard: &kinesis_core::ShardId, retries: u32) {
        self.handles(&Some(shard.clone()))
            .retries
            .record(f64::from(retries));
    }

    /// A Kinesis record predicted for `key` failed with `code`.
    pub(super) fn entry_failed(&mut self, key: &ShardKey, code: &Arc<str>) {
        let t = self.tally(key);
        t.errors += 1;
        match t.codes.iter_mut().find(|(c, _)| c == code) {
            Some((_, n)) => *n += 1,
            None => t.codes.push((Arc::clone(code), 1)),
        }
    }

    /// A user record predicted for `key` expired.
    pub(super) fn expired(&mut self, key: &ShardKey) {
        self.tally(key).expired += 1;
    }

    /// A whole PutRecords call failed with `code`: the stream's `ErrorsByCode` and
    /// `AllErrors` (no shard, as the KPL).
    pub(super) fn call_failed(&self, code: &str) {
        let labels = [
            (STREAM_NAME, self.stream.clone()),
            (ERROR_CODE, SharedString::from(code.to_owned())),
        ];
        metrics::counter!("ErrorsByCode", &labels).increment(1);
        self.call_errors.increment(1);
    }

    /// Emits this event's tallies: one increment per shard and metric.
    pub(super) fn emit(&mut self) {
        if self.tally.is_empty() {
            return;
        }
        let mut tally = std::mem::take(&mut self.tally);
        for (key, t) in tally.drain() {
            let h = self.handles(&key);
            let add = |c: &Counter, n: u64| {
                if n > 0 {
                    c.increment(n);
                }
            };
            add(&h.user_records_put, t.user_records);
            add(&h.user_records_data_put, t.user_bytes);
            add(&h.kinesis_records_put, t.kinesis_records);
            add(&h.kinesis_records_data_put, t.kinesis_bytes);
            add(&h.all_errors, t.errors);
            add(&h.expired, t.expired);
            for (code, n) in &t.codes {
                h.errors_by_code(code).increment(*n);
            }
        }
        // Keep the map's allocation for the next event.
        self.tally = tally;
    }
}

/// Units, as the KPL's `unit()`: bytes and milliseconds; counts otherwise.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    for name in [
        "UserRecordsReceived",
        "UserRecordsPut",
        "KinesisRecordsPut",
        "ErrorsByCode",
        "AllErrors",
        "UserRecordExpired",
    ] {
        describe_counter!(name, Unit::Count, "");
    }
    describe_gauge!("UserRecordsPending", Unit::Count, "");
    for name in [
        "RetriesPerRecord",
        "UserRecordsPerKinesisRecord",
        "KinesisRecordsPerPutRecordsRequest",
        "UserRecordsPerPutRecordsRequest",
    ] {
        describe_histogram!(name, Unit::Count, "");
    }
    describe_counter!("UserRecordsDataPut", Unit::Bytes, "");
    describe_counter!("KinesisRecordsDataPut", Unit::Bytes, "");
    describe_histogram!("BufferingTime", Unit::Milliseconds, "");
    describe_histogram!("RequestTime", Unit::Milliseconds, "");
}
