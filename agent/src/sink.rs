//! A flow's destination behind one face: the Kinesis producer (`kinesisStream`) or the
//! Firehose producer (`deliveryStream`), with the flow's keys turned into their configuration.
//!
//! ```text
//!   flow ─ Batch::Kinesis(user records) ──► Producer::send_batch ─────────┐ one receipt
//!        ─ Batch::Firehose(data) ─────────► FirehoseProducer::send_batch ─┤ per batch
//!        ─ an empty batch (footer lines only) ─► Receipt::Ready ──────────┘
//!   Receipt::settle ─► Outcome { delivered, failed: the records handed back, as a Batch }
//! ```

use std::time::Duration;

use kinesis_core::BackoffConfig;
use kinesis_producer::firehose::{
    FIREHOSE_MAX_BATCH_BYTES, FIREHOSE_MAX_RECORD_BYTES, FirehoseBatchReceipt, FirehoseConfig,
    FirehoseProducer,
};
use kinesis_producer::{BatchReceipt, Producer, ProducerConfig};

use crate::config::{AgentConfig, Flow};
use crate::records::Batch;

/// Where a flow's batches go.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// A Kinesis data stream.
    Kinesis(Producer),
    /// A Firehose delivery stream.
    Firehose(FirehoseProducer),
}

/// The fate of one batch, to come.
#[derive(Debug)]
pub(crate) enum Receipt {
    Kinesis(BatchReceipt),
    Firehose(FirehoseBatchReceipt),
    /// Nothing was sent (a batch of footer lines only): delivered at once.
    Ready,
}

/// The records of a batch that were not delivered, handed back.
#[derive(Debug)]
pub(crate) struct Failed {
    /// The records, to send again.
    pub(crate) records: Batch,
    /// The first one's reason.
    pub(crate) reason: String,
    /// Whether retrying may help (not a rejection such as a missing stream or no access).
    pub(crate) retryable: bool,
}

/// What became of a batch.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Records delivered.
    pub(crate) delivered: usize,
    /// Records not delivered (none: `None`).
    pub(crate) failed: Option<Failed>,
}

impl Receipt {
    /// Waits for the batch to settle; `Err` if the producer lost it (it stopped).
    pub(crate) async fn settle(self) -> Result<Outcome, String> {
        match self {
            Self::Ready => Ok(Outcome {
                delivered: 0,
                failed: None,
            }),
            Self::Kinesis(r) => {
                let o = r.await.map_err(|e| e.to_string())?;
                let failed = o
                    .failed
                    .first()
                    .map(|f| (f.error.reason.to_string(), f.error.is_retryable()));
                Ok(Outcome {
                    delivered: o.delivered,
                    failed: failed.map(|(reason, retryable)| Failed {
                        records: Batch::Kinesis(
                            o.failed.into_iter().map(|f| f.error.record).collect(),
                        ),
                        reason,
                        retryable,
                    }),
                })
            }
            Self::Firehose(r) => {
                let o = r.await.map_err(|e| e.to_string())?;
                let failed = o
                    .failed
                    .first()
                    .map(|f| (f.error.reason.to_string(), f.error.reason.is_retryable()));
                Ok(Outcome {
                    delivered: o.delivered,
                    failed: failed.map(|(reason, retryable)| Failed {
                        records: Batch::Firehose(
                            o.failed.into_iter().map(|f| f.error.record).collect(),
                        ),
                        reason,
                        retryable,
                    }),
                })
            }
        }
    }
}

impl Sink {
    /// The producer's buffer, in bytes (what a flow's unsettled batches may cost).
    pub(crate) fn max_buffered_bytes(&self) -> usize {
        match self {
            Self::Kinesis(p) => p.config().max_buffered_bytes,
            // What `firehose_config` gives every Firehose producer (it has no accessor).
            Self::Firehose(_) => BUFFERED_BYTES,
        }
    }

    /// Hands a batch over, waiting while the producer's buffer is full (backpressure).
    pub(crate) async fn send_batch(&self, batch: Batch) -> Result<Receipt, String> {
        if batch.len() == 0 {
            return Ok(Receipt::Ready);
        }
        match (self, batch) {
            (Self::Kinesis(p), Batch::Kinesis(r)) => p
                .send_batch(r)
                .await
                .map(Receipt::Kinesis)
                .map_err(|e| e.to_string()),
            (Self::Firehose(p), Batch::Firehose(r)) => p
                .send_batch(r)
                .await
                .map(Receipt::Firehose)
                .map_err(|e| e.to_string()),
            _ => Err("a batch for another kind of destination (a bug)".to_owned()),
        }
    }

    /// Sends what is buffered and waits until everything handed over is settled.
    pub(crate) async fn flush(&self) {
        match self {
            // Err only when the producer is shut down: then nothing is left to wait for.
            Self::Kinesis(p) => {
                let _ = p.flush().await;
            }
            Self::Firehose(p) => p.flush().await,
        }
    }

    /// Records handed over and not yet settled.
    pub(crate) fn outstanding_records(&self) -> u64 {
        match self {
            Self::Kinesis(p) => p.outstanding_records(),
            Self::Firehose(p) => p.outstanding_records(),
        }
    }

    /// Stops the producer within `deadline`: the records never sent and those whose call got
    /// no answer.
    pub(crate) async fn shutdown(self, deadline: Duration) -> (usize, usize) {
        match self {
            Self::Kinesis(p) => {
                let r = p.shutdown(deadline).await;
                (r.undelivered.len(), r.in_flight.len())
            }
            Self::Firehose(p) => {
                let r = p.shutdown(deadline).await;
                (r.undelivered.len(), r.in_flight.len())
            }
        }
    }
}

/// The producers' buffer for a flow: lines are on disk already, so a small buffer is enough
/// to keep the stream busy and keeps the agent's memory low (measured: 20 MiB is where
/// throughput stops rising, BENCHMARKS.md).
const BUFFERED_BYTES: usize = 20 * 1024 * 1024;

/// The agent resends failed records itself; a long TTL keeps retries in the producer.
const RECORD_TTL: Duration = Duration::from_secs(300);

/// A producer's pause after failed calls: `retryInitialBackoffMillis` / `retryMaxBackoffMillis`
/// over the producer's own defaults (a max below the initial pause is raised to it).
fn backoff(flow: &Flow, initial: Duration, max: Duration) -> (Duration, Duration) {
    let initial = flow.tuning.retry_initial_backoff.unwrap_or(initial);
    let max = flow.tuning.retry_max_backoff.unwrap_or(max).max(initial);
    (initial, max)
}

/// The Kinesis producer's configuration for a flow.
pub(crate) fn producer_config(flow: &Flow, cfg: &AgentConfig) -> ProducerConfig {
    let d = ProducerConfig::default();
    let (retry_min_delay, retry_max_delay) = backoff(flow, d.retry_min_delay, d.retry_max_delay);
    ProducerConfig {
        record_max_buffered_time: flow.max_buffer_age.min(Duration::from_secs(1)),
        max_record_bytes: flow.max_record_bytes,
        record_ttl: RECORD_TTL,
        // It must hold a few of the largest records.
        max_buffered_bytes: BUFFERED_BYTES.max(4 * flow.max_record_bytes + 4096),
        max_in_flight_requests: cfg.max_sending_threads.unwrap_or(d.max_in_flight_requests),
        retry_min_delay,
        retry_max_delay,
        ..d
    }
}

/// The Firehose producer's configuration for a flow: one batch of the Kinesis Agent is one
/// `PutRecordBatch`, so `maxBufferSizeRecords` and `maxBufferSizeBytes` are the call's limits
/// too (the bytes at least 1,000 KiB: a call must hold the largest record).
pub(crate) fn firehose_config(flow: &Flow, cfg: &AgentConfig) -> FirehoseConfig {
    let d = FirehoseConfig::default();
    let (initial, max) = backoff(flow, d.retry.initial, d.retry.max);
    FirehoseConfig {
        max_buffered_bytes: BUFFERED_BYTES,
        batch_max_records: flow.tuning.max_buffer_size_records,
        batch_max_bytes: flow
            .max_batch_bytes()
            .clamp(FIREHOSE_MAX_RECORD_BYTES, FIREHOSE_MAX_BATCH_BYTES),
        max_buffered_time: flow.max_buffer_age.min(Duration::from_secs(1)),
        join_records_up_to: flow.tuning.aggregated_record_size_bytes,
        record_ttl: RECORD_TTL,
        max_in_flight_requests: cfg.max_sending_threads.unwrap_or(d.max_in_flight_requests),
        retry: BackoffConfig::new(initial, max),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DestinationKind, from_value};

    fn flow_of(extra: &serde_json::Value, global: &serde_json::Value) -> (Flow, AgentConfig) {
        let mut f = serde_json::json!({"filePattern": "/a", "deliveryStream": "d"});
        if let (Some(o), Some(x)) = (f.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        let mut top = serde_json::json!({"flows": [f]});
        if let (Some(o), Some(x)) = (top.as_object_mut(), global.as_object()) {
            o.extend(x.clone());
        }
        let cfg = from_value(&top).unwrap().config;
        (cfg.flows[0].clone(), cfg)
    }

    #[test]
    fn the_kinesis_agents_keys_become_the_producers_settings() {
        let (f, cfg) = flow_of(&serde_json::json!({}), &serde_json::json!({}));
        assert_eq!(f.kind, DestinationKind::DeliveryStream);
        let c = firehose_config(&f, &cfg);
        assert_eq!(c.validate(), Ok(()));
        let d = FirehoseConfig::default();
        assert_eq!(
            (c.batch_max_records, c.batch_max_bytes, c.join_records_up_to),
            (500, 4 << 20, 0)
        );
        assert_eq!((c.retry, c.max_in_flight_requests), (d.retry, 8));

        let (f, cfg) = flow_of(
            &serde_json::json!({"maxBufferSizeRecords": 50, "maxBufferSizeBytes": 2000,
                "retryInitialBackoffMillis": 250, "retryMaxBackoffMillis": "4000",
                "aggregatedRecordSizeBytes": 4096}),
            &serde_json::json!({"maxSendingThreads": 3}),
        );
        let c = firehose_config(&f, &cfg);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.batch_max_records, 50);
        assert_eq!(
            c.batch_max_bytes, FIREHOSE_MAX_RECORD_BYTES,
            "raised to hold a record"
        );
        assert_eq!(c.join_records_up_to, 4096);
        assert_eq!(
            c.retry,
            BackoffConfig::new(Duration::from_millis(250), Duration::from_secs(4))
        );
        assert_eq!(c.max_in_flight_requests, 3);

        // A stream's flow: the Kinesis producer's backoff and calls in flight.
        let mut k = f;
        k.kind = DestinationKind::KinesisStream;
        k.tuning.retry_max_backoff = None;
        k.tuning.retry_initial_backoff = Some(Duration::from_secs(8));
        let c = producer_config(&k, &cfg);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            (c.retry_min_delay, c.retry_max_delay),
            (Duration::from_secs(8), Duration::from_secs(8)),
            "a max below the initial pause is raised to it"
        );
        assert_eq!(c.max_in_flight_requests, 3);
    }
}
