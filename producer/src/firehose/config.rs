//! The Firehose producer's configuration: plain data with documented defaults.

use std::time::Duration;

use kinesis_core::backoff::BackoffConfig;

use crate::config::ConfigError;

/// The largest Firehose record: 1,000 KiB (`PutRecordBatch` limit; the Kinesis Agent's
/// `FirehoseConstants.MAX_RECORD_SIZE_BYTES`).
pub const FIREHOSE_MAX_RECORD_BYTES: usize = 1000 * 1024;
/// Records per `PutRecordBatch`: at most 500 (API limit).
pub const FIREHOSE_MAX_BATCH_RECORDS: usize = 500;
/// Bytes per `PutRecordBatch`: at most 4 MiB (API limit; the Kinesis Agent's Firehose
/// `maxBufferSizeBytes` default and maximum).
pub const FIREHOSE_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Bookkeeping counted per record in the buffer, beside its data.
pub(crate) const FIREHOSE_RECORD_OVERHEAD_BYTES: usize = 160;

/// How a [`FirehoseProducer`](super::FirehoseProducer) buffers, batches and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirehoseConfig {
    /// Buffer space for records not yet settled (default 64 MiB, as the Kinesis producer's
    /// `max_buffered_bytes`). `send` waits while it is full; `try_send` refuses. A record costs
    /// [`firehose_buffer_cost`] of it.
    pub max_buffered_bytes: usize,
    /// Firehose records per `PutRecordBatch` (default and maximum 500; the Kinesis Agent's
    /// `maxBufferSizeRecords` default).
    pub batch_max_records: usize,
    /// Bytes per `PutRecordBatch` (default and maximum 4 MiB, the Kinesis Agent's).
    pub batch_max_bytes: usize,
    /// How long a record may wait for company before its batch goes (default 100 ms, as the
    /// KPL's `RecordMaxBufferedTime`; the Kinesis Agent's `maxBufferAgeMillis` is 60 s, which the
    /// agent sets from `agent.json`).
    pub max_buffered_time: Duration,
    /// Joins consecutive records into one Firehose record of at most this many bytes (the
    /// Kinesis Agent's `aggregatedRecordSizeBytes`; default 0: off). Firehose then delivers
    /// their bytes back to back, as the Kinesis Agent does; records should end with their own
    /// delimiter (a log line's newline). 0 or `1..=1000 KiB`.
    pub join_records_up_to: usize,
    /// A record not delivered within this time after `send` fails with `Expired` (default 30 s,
    /// the KPL's `RecordTtl`).
    pub record_ttl: Duration,
    /// `PutRecordBatch` calls in flight at once (default 8).
    pub max_in_flight_requests: usize,
    /// How long one call may take before it counts as failed with an unknown outcome (default
    /// 6 s, the KPL's `RequestTimeout`).
    pub request_timeout: Duration,
    /// Pauses after failed calls and failed entries (`ServiceUnavailableException` is
    /// Firehose's throttle): growing with jitter from 100 ms to 10 s.
    pub retry: BackoffConfig,
}

impl Default for FirehoseConfig {
    fn default() -> Self {
        Self {
            max_buffered_bytes: 64 * 1024 * 1024,
            batch_max_records: FIREHOSE_MAX_BATCH_RECORDS,
            batch_max_bytes: FIREHOSE_MAX_BATCH_BYTES,
            max_buffered_time: Duration::from_millis(100),
            join_records_up_to: 0,
            record_ttl: Duration::from_secs(30),
            max_in_flight_requests: 8,
            request_timeout: Duration::from_secs(6),
            retry: BackoffConfig::new(Duration::from_millis(100), Duration::from_secs(10)),
        }
    }
}

/// Buffer space a record of `data_len` bytes takes: its data, a copy while joined or in a
/// request, its base64 in the request body, and bookkeeping.
pub fn firehose_buffer_cost(data_len: usize) -> usize {
    2 * data_len + data_len.div_ceil(3) * 4 + FIREHOSE_RECORD_OVERHEAD_BYTES
}

impl FirehoseConfig {
    /// Checks every field; the builder calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| Err(ConfigError { field, reason });
        let largest = firehose_buffer_cost(FIREHOSE_MAX_RECORD_BYTES);
        if self.max_buffered_bytes < largest || self.max_buffered_bytes >= u32::MAX as usize {
            return err(
                "max_buffered_bytes",
                format!(
                    "must hold the largest record ({largest} bytes) and be below 4 GiB, is {}",
                    self.max_buffered_bytes
                ),
            );
        }
        if !(1..=FIREHOSE_MAX_BATCH_RECORDS).contains(&self.batch_max_records) {
            return err(
                "batch_max_records",
                format!("must be 1..=500, is {}", self.batch_max_records),
            );
        }
        if !(FIREHOSE_MAX_RECORD_BYTES..=FIREHOSE_MAX_BATCH_BYTES).contains(&self.batch_max_bytes) {
            return err(
                "batch_max_bytes",
                format!(
                    "must be 1000 KiB..=4 MiB (a call must hold the largest record), is {}",
                    self.batch_max_bytes
                ),
            );
        }
        if self.join_records_up_to > FIREHOSE_MAX_RECORD_BYTES {
            return err(
                "join_records_up_to",
                format!("must be 0..=1000 KiB, is {}", self.join_records_up_to),
            );
        }
        if self.max_in_flight_requests == 0 {
            return err("max_in_flight_requests", "must be at least 1".into());
        }
        if self.record_ttl.is_zero() || self.request_timeout.is_zero() {
            return err(
                "record_ttl",
                "record_ttl and request_timeout must be above zero".into(),
            );
        }
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            return err(
                "retry",
                format!("needs 0 < initial <= max, is {:?}", self.retry),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bad_value_names_its_field() {
        assert_eq!(FirehoseConfig::default().validate(), Ok(()));
        let d = FirehoseConfig::default;
        let table: Vec<(FirehoseConfig, &str)> = vec![
            (
                FirehoseConfig {
                    max_buffered_bytes: 1000,
                    ..d()
                },
                "max_buffered_bytes",
            ),
            (
                FirehoseConfig {
                    batch_max_records: 0,
                    ..d()
                },
                "batch_max_records",
            ),
            (
                FirehoseConfig {
                    batch_max_records: 501,
                    ..d()
                },
                "batch_max_records",
            ),
            (
                FirehoseConfig {
                    batch_max_bytes: 5 << 20,
                    ..d()
                },
                "batch_max_bytes",
            ),
            (
                FirehoseConfig {
                    batch_max_bytes: 1000,
                    ..d()
                },
                "batch_max_bytes",
            ),
            (
                FirehoseConfig {
                    join_records_up_to: 2 << 20,
                    ..d()
                },
                "join_records_up_to",
            ),
            (
                FirehoseConfig {
                    max_in_flight_requests: 0,
                    ..d()
                },
                "max_in_flight_requests",
            ),
            (
                FirehoseConfig {
                    record_ttl: Duration::ZERO,
                    ..d()
                },
                "record_ttl",
            ),
            (
                FirehoseConfig {
                    retry: BackoffConfig::new(Duration::from_secs(2), Duration::from_secs(1)),
                    ..d()
                },
                "retry",
            ),
        ];
        for (cfg, field) in table {
            assert_eq!(cfg.validate().unwrap_err().field, field);
        }
    }
}
