//! Consumer configuration: plain data with documented defaults (the KCL's unless noted).

use std::time::{Duration, SystemTime};

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record kept.
    TrimHorizon,
    /// After the newest record (the KCL's default for new applications).
    Latest,
    /// The first record at or after this time.
    AtTimestamp(SystemTime),
}

/// What to do when the processor returns an error for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnProcessorError {
    /// Give the same batch again after a backoff (default). The KCL skips the batch instead.
    Retry,
    /// Log, count, and go on to the next batch (the KCL's behaviour, made explicit).
    Skip,
}

/// How the consumer behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerConfig {
    /// The application: names the lease table by default, as the KCL does.
    pub application_name: String,
    /// Lease table name; `None` = the application name.
    pub table_name: Option<String>,
    /// This worker's id; `None` = a new random id (a stable id lets a restarted worker keep its
    /// leases).
    pub worker_id: Option<String>,
    /// Start position of shards without a checkpoint. KCL default: LATEST.
    pub initial_position: InitialPosition,
    /// A lease not renewed for this long is expired. KCL `failoverTimeMillis` = 10 s.
    pub failover_time: Duration,
    /// Renewal period. KCL: failover/3 − 25 ms. At most half of `failover_time`: a lease
    /// counts as held only until 80 % of the failover time after its last renewal was sent.
    pub renew_interval: Duration,
    /// How often leases are listed, expired ones taken and balance restored. KCL 2.x:
    /// 2 × (failover + 25 ms) ≈ 20 s; 2 s here, so a joining worker gets its share quickly.
    pub taker_interval: Duration,
    /// How often shards are listed for new leases. KCL's auditor: 2 min; 60 s here.
    pub shard_sync_interval: Duration,
    /// Most leases one worker holds. KCL `maxLeasesForWorker`: unlimited.
    pub max_leases: usize,
    /// GetRecords `Limit`. KCL `maxRecords` = 10,000 (the API's maximum).
    pub max_records: i32,
    /// Pause after an empty GetRecords. KCL `idleTimeBetweenReadsInMillis` = 1.5 s; 1 s here
    /// (5 calls/s/shard is the API limit, shared by all applications).
    pub idle_time_between_reads: Duration,
    /// How often a child shard checks whether its parents are finished. KCL: 10 s; 1 s here.
    pub parent_poll_interval: Duration,
    /// What a processor error does.
    pub on_processor_error: OnProcessorError,
    /// Create the lease table's `leaseOwner` index (KCL 3.x) when creating the table.
    pub create_owner_index: bool,
    /// How records are read.
    pub retrieval: Retrieval,
    /// Enhanced fan-out: events buffered per shard before reading pauses (the KCL buffers up to
    /// 11 and its memory is unbounded in practice, issue #1699).
    pub fan_out_max_buffered_events: usize,
    /// Longest wait for one attempt of a Kinesis or DynamoDB call (and, with enhanced fan-out,
    /// for the next event of a subscription) before it counts as failed and is retried. The
    /// KCL leaves this to the SDK, whose default has no limit: one stalled connection then
    /// holds a shard (or the whole lease coordinator) forever. 15 s here; a client whose
    /// configuration already sets an attempt or operation timeout keeps its own.
    pub call_timeout: Duration,
}

/// How records are read: polling (GetRecords) or enhanced fan-out (SubscribeToShard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retrieval {
    /// GetRecords loops, sharing the shard's 2 MiB/s read limit with other polling readers.
    Polling,
    /// A registered stream consumer with its own 2 MiB/s per shard, pushed over HTTP/2.
    FanOut {
        /// The stream consumer's name; `None` = the application name (as the KCL).
        consumer_name: Option<String>,
        /// Deregister the stream consumer when this worker shuts down gracefully (the KCL never
        /// does; leave it off when other workers of the application still run).
        deregister_on_shutdown: bool,
    },
}

impl ConsumerConfig {
    /// Defaults for `application_name`.
    pub fn new(application_name: impl Into<String>) -> Self {
        Self {
            application_name: application_name.into(),
            table_name: None,
            worker_id: None,
            initial_position: InitialPosition::Latest,
            failover_time: Duration::from_secs(10),
            renew_interval: Duration::from_millis(3_308),
            taker_interval: Duration::from_secs(2),
            shard_sync_interval: Duration::from_secs(60),
            max_leases: usize::MAX,
            max_records: 10_000,
            idle_time_between_reads: Duration::from_secs(1),
            parent_poll_interval: Duration::from_secs(1),
            on_processor_error: OnProcessorError::Retry,
            create_owner_index: true,
            retrieval: Retrieval::Polling,
            fan_out_max_buffered_events: 2,
            call_timeout: Duration::from_secs(15),
        }
    }

    /// The lease table's name.
    pub fn table(&self) -> &str {
        self.table_name.as_deref().unwrap_or(&self.application_name)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: &str| {
            Err(ConfigError {
                field,
                reason: reason.to_string(),
            })
        };
        let name = self.table();
        if name.len() < 3
            || name.len() > 255
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return err(
                "application_name",
                "the table name must be 3–255 characters of [a-zA-Z0-9_.-]",
            );
        }
        // Every duration must be positive: a zero would panic in `tokio::time::interval` or
        // spin a loop; each is named so the error says which.
        for (field, d) in [
            ("failover_time", self.failover_time),
            ("renew_interval", self.renew_interval),
            ("taker_interval", self.taker_interval),
            ("shard_sync_interval", self.shard_sync_interval),
            ("idle_time_between_reads", self.idle_time_between_reads),
            ("parent_poll_interval", self.parent_poll_interval),
            ("call_timeout", self.call_timeout),
        ] {
            if d.is_zero() {
                return err(field, "must be positive");
            }
        }
        // A lease is held until 80 % of the failover time after its last renewal was sent: at
        // least one more renewal must fit in before that, with room for a slow one.
        if self.renew_interval * 2 > self.failover_time {
            return err(
                "renew_interval",
                "must be at most half of failover_time (the KCL renews every third)",
            );
        }
        if !(1..=10_000).contains(&self.max_records) {
            return err("max_records", "must be 1..=10000");
        }
        if self.max_leases == 0 {
            return err("max_leases", "must be at least 1");
        }
        if self.fan_out_max_buffered_events == 0 {
            return err("fan_out_max_buffered_events", "must be at least 1");
        }
        Ok(())
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid consumer config: {field} {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_zero_duration_is_refused_by_name() {
        type Set = fn(&mut ConsumerConfig);
        let cases: [(&str, Set); 7] = [
            ("call_timeout", |c| c.call_timeout = Duration::ZERO),
            ("failover_time", |c| c.failover_time = Duration::ZERO),
            ("renew_interval", |c| c.renew_interval = Duration::ZERO),
            ("taker_interval", |c| c.taker_interval = Duration::ZERO),
            ("shard_sync_interval", |c| {
                c.shard_sync_interval = Duration::ZERO;
            }),
            ("idle_time_between_reads", |c| {
                c.idle_time_between_reads = Duration::ZERO;
            }),
            ("parent_poll_interval", |c| {
                c.parent_poll_interval = Duration::ZERO;
            }),
        ];
        for (field, set) in cases {
            let mut c = ConsumerConfig::new("app-name");
            set(&mut c);
            let e = c.validate().expect_err(field);
            assert_eq!(e.field, field);
        }
    }

    #[test]
    fn other_ranges() {
        let mut c = ConsumerConfig::new("app-name");
        assert!(c.validate().is_ok());
        c.renew_interval = c.failover_time;
        assert_eq!(c.validate().unwrap_err().field, "renew_interval");
        c.renew_interval = c.failover_time / 2 + Duration::from_millis(1);
        assert_eq!(c.validate().unwrap_err().field, "renew_interval");
        c.renew_interval = c.failover_time / 2;
        assert!(c.validate().is_ok());
        let mut c = ConsumerConfig::new("app-name");
        c.fan_out_max_buffered_events = 0;
        assert_eq!(
            c.validate().unwrap_err().field,
            "fan_out_max_buffered_events"
        );
        let mut c = ConsumerConfig::new("ab");
        assert_eq!(c.validate().unwrap_err().field, "application_name");
        c.application_name = "app".into();
        c.max_records = 0;
        assert_eq!(c.validate().unwrap_err().field, "max_records");
    }
}
