//! The Firehose producer's one seam to the SDK: `PutRecordBatch`, with the SDK's retries off
//! (the producer retries itself, within each record's TTL, only what failed; see
//! `crate::api` for the same choice on PutRecords).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_firehose::config::retry::RetryConfig;
use aws_sdk_firehose::config::timeout::TimeoutConfig;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record;
use bytes::Bytes;
use futures::future::BoxFuture;
use kinesis_core::{AwsError, ErrorKind};

/// The result of one entry of a `PutRecordBatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryOutcome {
    /// Stored; Firehose's id for the record.
    Ok(Arc<str>),
    /// Failed with this code (`ServiceUnavailableException`, `InternalFailure`, ...).
    Failed { code: Arc<str>, message: Arc<str> },
}

/// What the Firehose producer needs from the service.
pub(crate) trait FirehoseApi: Send + Sync + 'static {
    /// One `PutRecordBatch` attempt: an outcome per record, in order.
    fn put_record_batch(
        &self,
        delivery_stream: Arc<str>,
        records: Vec<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<EntryOutcome>, AwsError>>;
}

impl FirehoseApi for aws_sdk_firehose::Client {
    fn put_record_batch(
        &self,
        delivery_stream: Arc<str>,
        records: Vec<Bytes>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<EntryOutcome>, AwsError>> {
        let client = self.clone();
        Box::pin(async move {
            let n = records.len();
            let entries = records
                .into_iter()
                .map(|data| {
                    Record::builder()
                        .data(Blob::new(Vec::from(data)))
                        .build()
                        .map_err(|e| AwsError::other("PutRecordBatch", ErrorKind::Invalid, e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = client
                .put_record_batch()
                .delivery_stream_name(&*delivery_stream)
                .set_records(Some(entries))
                .customize()
                .config_override(
                    aws_sdk_firehose::config::Builder::default()
                        .retry_config(RetryConfig::disabled())
                        .timeout_config(
                            TimeoutConfig::builder()
                                .operation_attempt_timeout(timeout)
                                .build(),
                        ),
                )
                .send()
                .await
                .map_err(|e| AwsError::new("PutRecordBatch", e))?;
            if out.request_responses().len() != n {
                // Answered: some or all may be stored.
                return Err(AwsError::other(
                    "PutRecordBatch",
                    ErrorKind::Transient,
                    format!(
                        "response has {} entries for {n} records",
                        out.request_responses().len()
                    ),
                )
                .with_outcome_unknown());
            }
            Ok(out
                .request_responses()
                .iter()
                .map(|r| match (r.error_code(), r.record_id()) {
                    (None, Some(id)) => EntryOutcome::Ok(id.into()),
                    (code, _) => EntryOutcome::Failed {
                        code: code.unwrap_or(crate::api::INVALID_RESPONSE).into(),
                        message: r
                            .error_message()
                            .unwrap_or("entry has neither record id nor error")
                            .into(),
                    },
                })
                .collect())
        })
    }
}
