//! The producer's one seam to the SDK: PutRecords and ListShards.
//!
//! PutRecords runs with the SDK's retries off, on purpose: the producer retries itself, within
//! each record's TTL, so that it can retry only the failed entries of an answered call, pace
//! them by the shard's rate limit, back off whole-call failures once for all calls, count each
//! record's attempts, and mark records whose earlier attempt may have been stored
//! (`Delivered::possible_duplicate`). SDK retries would hide all of that and spend the TTL blind.
//! ListShards keeps the client's own retry configuration.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use futures::future::BoxFuture;
use kinesis_core::shard_map::{Shard, list_shards};
use kinesis_core::{AwsError, KinesisRecord, SequenceNumber, ShardId, StreamRef};

/// The code given to an entry the service answered without a readable result: it may be stored.
pub(crate) const INVALID_RESPONSE: &str = "InvalidResponse";

/// The result of one PutRecords entry.
#[derive(Debug, Clone)]
pub(crate) enum EntryResult {
    Ok {
        shard_id: ShardId,
        sequence_number: SequenceNumber,
    },
    Failed {
        code: Arc<str>,
        message: Arc<str>,
    },
}

/// What the producer needs from Kinesis.
pub(crate) trait KinesisApi: Send + Sync + 'static {
    /// One PutRecords attempt (no SDK retries: the producer owns retries and their accounting).
    fn put_records(
        &self,
        stream: StreamRef,
        records: Vec<KinesisRecord>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<EntryResult>, AwsError>>;

    /// Every shard of the stream.
    fn list_shards(&self, stream: StreamRef) -> BoxFuture<'static, Result<Vec<Shard>, AwsError>>;
}

impl KinesisApi for aws_sdk_kinesis::Client {
    fn put_records(
        &self,
        stream: StreamRef,
        records: Vec<KinesisRecord>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<EntryResult>, AwsError>> {
        let client = self.clone();
        Box::pin(async move {
            // The body is ours (request_body.rs); the SDK builds the request around an empty
            // record list (the stream still sets the endpoint's parameters), and its body is
            // swapped for ours before signing.
            let body = bytes::Bytes::from(crate::request_body::put_records(&stream, &records));
            drop(records);
            let req = client.put_records().set_records(Some(Vec::new()));
            let out = kinesis_core::with_stream!(req, &stream)
                .customize()
                .config_override(
                    aws_sdk_kinesis::config::Builder::default()
                        .retry_config(RetryConfig::disabled())
                        .timeout_config(
                            TimeoutConfig::builder()
                                .operation_attempt_timeout(timeout)
                                .build(),
                        ),
                )
                .mutate_request(move |req| {
                    req.headers_mut()
                        .insert("Content-Length", body.len().to_string());
                    *req.body_mut() = aws_smithy_types::body::SdkBody::from(body.clone());
                })
                .send()
                .await
                .map_err(|e| AwsError::new("PutRecords", e))?;
            // As many entries as records: checked by the driver (a short answer is an unknown
            // outcome for the whole call).
            Ok(out
                .records()
                .iter()
                .map(
                    |r| match (r.error_code(), r.shard_id(), r.sequence_number()) {
                        (None, Some(shard), Some(seq)) => {
                            match (ShardId::new(shard), SequenceNumber::parse(seq)) {
                                (Ok(shard_id), Ok(sequence_number)) => EntryResult::Ok {
                                    shard_id,
                                    sequence_number,
                                },
                                _ => EntryResult::Failed {
                                    code: INVALID_RESPONSE.into(),
                                    message: format!(
                                        "bad shard id {shard:?} or sequence number {seq:?}"
                                    )
                                    .into(),
                                },
                            }
                        }
                        (code, _, _) => EntryResult::Failed {
                            code: code.unwrap_or(INVALID_RESPONSE).into(),
                            message: r
                                .error_message()
                                .unwrap_or("entry has neither result nor error")
                                .into(),
                        },
                    },
                )
                .collect())
        })
    }

    fn list_shards(&self, stream: StreamRef) -> BoxFuture<'static, Result<Vec<Shard>, AwsError>> {
        let client = self.clone();
        Box::pin(async move { list_shards(&client, &stream).await })
    }
}
