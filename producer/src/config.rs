//! Producer configuration: plain data with documented defaults, checked by [`ProducerConfig::validate`].
//!
//! Defaults follow the KPL (`KinesisProducerConfiguration.java`, `default_config.properties`)
//! unless a comment says why not.

use std::time::Duration;

use kinesis_core::agg::{DEFAULT_MAX_RECORD_BYTES, MAX_RECORD_BYTES_LIMIT};

/// How the producer behaves. Every field has a default; start from `ProducerConfig::default()`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerConfig {
    /// Pack user records for the same predicted shard into KPL aggregates. KPL: `AggregationEnabled`
    /// = true.
    pub aggregation: bool,
    /// Largest aggregated Kinesis record, data + partition key. KPL: `AggregationMaxSize` = 51,200.
    /// Aggregates never exceed `max_record_bytes` either (the stream's record limit).
    pub aggregation_max_bytes: usize,
    /// Most user records in one aggregate. KPL: `AggregationMaxCount` = 4,294,967,295.
    pub aggregation_max_count: usize,
    /// Largest user record accepted by `send`, data + partition key (the stream's limit: 1 MiB by
    /// default, up to 10 MiB). KPL: `MaxUserRecordSize` = 1 MiB, counting data only; we count the
    /// key too, as Kinesis does.
    pub max_record_bytes: usize,
    /// Most Kinesis records per PutRecords call. KPL: `CollectionMaxCount` = 500 (the API limit).
    pub collection_max_count: usize,
    /// Most bytes (data + partition keys) per PutRecords call. KPL: `CollectionMaxSize` = 5 MiB
    /// (the classic API limit; 10 MiB on streams with large records).
    pub collection_max_bytes: usize,
    /// Longest a user record waits in a buffer before it is sent. KPL: `RecordMaxBufferedTime`
    /// = 100 ms.
    pub record_max_buffered_time: Duration,
    /// How long a record may take to be delivered, retries included; then its receipt fails
    /// with the record handed back. KPL: `RecordTtl` = 30 s.
    pub record_ttl: Duration,
    /// Most PutRecords calls in flight at once. KPL: `MaxConnections` = 24. Fewer while the
    /// endpoint falls behind: a call not answered within `request_timeout` (or throttled as a
    /// whole) shrinks a window on the calls and bytes in flight, which grows back as calls are
    /// answered promptly (the KPL has none).
    pub max_in_flight_requests: usize,
    /// Timeout of one PutRecords attempt. KPL: `RequestTimeout` = 6 s. A timed-out call may have
    /// succeeded: it is retried (at least once), and its records' receipts say
    /// `possible_duplicate`. It also says the endpoint has more than it can take: the producer
    /// then sends less at once (see `max_in_flight_requests`) and pauses as after a throttle.
    pub request_timeout: Duration,
    /// Per-shard rate limit as a percentage of the shard limits (1 MiB/s, 1,000 records/s).
    /// KPL: `RateLimit` = 150 (lets one producer saturate a shard; the service throttles the
    /// excess, and we retry it).
    pub rate_limit_percent: u32,
    /// Fail records rejected with `ProvisionedThroughputExceededException` instead of retrying.
    /// KPL: `FailIfThrottled` = false.
    pub fail_if_throttled: bool,
    /// First pause after a PutRecords call failed as a whole (connection lost, timeout, 5xx,
    /// a throttled request); doubles (with jitter, see [`kinesis_core::backoff`]) with each such
    /// failure up to `retry_max_delay`, and starts over once a call is answered within half the
    /// request timeout. Whole-request throttles and timeouts pause at least 500 ms. Entries that failed in an answered call are not backed
    /// off: they are sent again at once, at the front of their shard, paced by the shard's rate
    /// limit (which slows down when the shard throttles), as the KPL does; so the TTL buys many
    /// attempts. The KPL has no backoff for whole-call failures; this is new.
    pub retry_min_delay: Duration,
    /// Largest pause after whole-call failures.
    pub retry_max_delay: Duration,
    /// Cap on memory held for user records not yet delivered, counted by [`buffer_cost`]
    /// (each record's data three and a third times over, its key and measured bookkeeping).
    /// `send` waits and `try_send` fails when it is reached. The KPL has no cap (its users'
    /// most common complaint); 64 MiB here.
    pub max_buffered_bytes: usize,
    /// Never let a record overtake an earlier record with the same partition key, even across
    /// retries and a reshard. Costs throughput: each shard then has at most one Kinesis record in flight.
    /// The KPL cannot guarantee order.
    pub preserve_order: bool,
    /// How often the shard map is listed again even without a sign of resharding (on-demand
    /// streams reshard on their own). The KPL only re-lists on a wrong-shard response.
    pub shard_map_refresh_interval: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            aggregation: true,
            aggregation_max_bytes: 51_200,
            aggregation_max_count: 4_294_967_295,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            collection_max_count: 500,
            collection_max_bytes: 5 * 1024 * 1024,
            record_max_buffered_time: Duration::from_millis(100),
            record_ttl: Duration::from_secs(30),
            max_in_flight_requests: 24,
            request_timeout: Duration::from_secs(6),
            rate_limit_percent: 150,
            fail_if_throttled: false,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(5),
            max_buffered_bytes: 64 * 1024 * 1024,
            preserve_order: false,
            shard_map_refresh_interval: Duration::from_secs(60),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid producer config: {field} {reason}")]
pub struct ConfigError {
    /// The field's name.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl ProducerConfig {
    /// The largest aggregate: `aggregation_max_bytes`, but never above `max_record_bytes` (an
    /// aggregate is one Kinesis record: over the stream's limit, Kinesis refuses it and every
    /// record in it fails).
    pub(crate) fn aggregate_max_bytes(&self) -> usize {
        self.aggregation_max_bytes.min(self.max_record_bytes)
    }

    /// Checks every field; `Producer::builder(..).build()` calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError { field, reason });
        if !(1..=MAX_RECORD_BYTES_LIMIT).contains(&self.max_record_bytes) {
            return err(
                "max_record_bytes",
                format!("must be 1..=10 MiB, is {}", self.max_record_bytes),
            );
        }
        if !(64..=MAX_RECORD_BYTES_LIMIT).contains(&self.aggregation_max_bytes) {
            return err(
                "aggregation_max_bytes",
                format!("must be 64..=10 MiB, is {}", self.aggregation_max_bytes),
            );
        }
        if self.aggregation_max_count == 0 {
            return err("aggregation_max_count", "must be at least 1".into());
        }
        if !(1..=500).contains(&self.collection_max_count) {
            return err(
                "collection_max_count",
                format!("must be 1..=500, is {}", self.collection_max_count),
            );
        }
        if self.collection_max_bytes < self.max_record_bytes {
            return err(
                "collection_max_bytes",
                format!(
                    "({}) must be at least max_record_bytes ({})",
                    self.collection_max_bytes, self.max_record_bytes
                ),
            );
        }
        if self.max_in_flight_requests == 0 {
            return err("max_in_flight_requests", "must be at least 1".into());
        }
        if self.rate_limit_percent == 0 {
            return err("rate_limit_percent", "must be at least 1".into());
        }
        if self.record_ttl.is_zero() {
            return err("record_ttl", "must be positive".into());
        }
        if self.request_timeout.is_zero() {
            return err("request_timeout", "must be positive".into());
        }
        if self.retry_min_delay > self.retry_max_delay {
            return err("retry_min_delay", "must not exceed retry_max_delay".into());
        }
        let largest = self.largest_record_cost();
        if self.max_buffered_bytes < largest {
            return err(
                "max_buffered_bytes",
                format!("must hold at least one largest record ({largest} bytes)"),
            );
        }
        if u32::try_from(self.max_buffered_bytes).is_err() {
            return err("max_buffered_bytes", "must be below 4 GiB".into());
        }
        Ok(())
    }
}

impl ProducerConfig {
    /// Buffer bytes the largest record `send` accepts may hold (at most).
    pub(crate) fn largest_record_cost(&self) -> usize {
        cost(self.max_record_bytes, RECORD_OVERHEAD_BYTES)
    }
}

/// Bookkeeping bytes counted per record from `send` / `try_send` on top of its data copies and
/// key: its entry, receipt channel, aggregation entry and allocator slack, measured with the
/// throughput bench's stalled-endpoint run (peak RSS per record held, minus data and key).
pub const RECORD_OVERHEAD_BYTES: usize = 416;

/// Bookkeeping bytes counted per record of a batch given to `send_batch` (no receipt channel of
/// its own), measured the same way.
pub const BATCH_RECORD_OVERHEAD_BYTES: usize = 352;

/// Buffer bytes a record from `send` or `try_send` holds until it is settled: its data three
/// and a third times over (the record, kept to hand back on failure; its copy in an aggregate;
/// the request body, base64), its partition key, and [`RECORD_OVERHEAD_BYTES`].
pub fn buffer_cost(record: &kinesis_core::UserRecord) -> usize {
    cost(record.data.len(), RECORD_OVERHEAD_BYTES) + record.partition_key.len_bytes()
}

/// [`buffer_cost`] for a record given to `send_batch`: [`BATCH_RECORD_OVERHEAD_BYTES`] of
/// bookkeeping.
pub fn batch_buffer_cost(record: &kinesis_core::UserRecord) -> usize {
    cost(record.data.len(), BATCH_RECORD_OVERHEAD_BYTES) + record.partition_key.len_bytes()
}

fn cost(data: usize, overhead: usize) -> usize {
    2 * data + data.div_ceil(3) * 4 + overhead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ProducerConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(&str, ProducerConfig)> = vec![
            (
                "max_record_bytes",
                ProducerConfig {
                    max_record_bytes: 0,
                    ..Default::default()
                },
            ),
            (
                "aggregation_max_bytes",
                ProducerConfig {
                    aggregation_max_bytes: 10,
                    ..Default::default()
                },
            ),
            (
                "collection_max_count",
                ProducerConfig {
                    collection_max_count: 501,
                    ..Default::default()
                },
            ),
            (
                "max_in_flight_requests",
                ProducerConfig {
                    max_in_flight_requests: 0,
                    ..Default::default()
                },
            ),
            (
                "rate_limit_percent",
                ProducerConfig {
                    rate_limit_percent: 0,
                    ..Default::default()
                },
            ),
            (
                "record_ttl",
                ProducerConfig {
                    record_ttl: Duration::ZERO,
                    ..Default::default()
                },
            ),
            (
                "max_buffered_bytes",
                ProducerConfig {
                    max_buffered_bytes: 1000,
                    ..Default::default()
                },
            ),
            (
                "retry_min_delay",
                ProducerConfig {
                    retry_min_delay: Duration::from_secs(10),
                    ..Default::default()
                },
            ),
        ];
        for (field, cfg) in cases {
            assert_eq!(cfg.validate().unwrap_err().field, field);
        }
    }
}
