//! For users who just want records: a closure per batch, checkpointed after it succeeds.

use std::future::Future;
use std::sync::Arc;

use crate::processor::{Checkpointer, ProcessorError, RecordBatch, ShardProcessor};

/// A [`ShardProcessor`] made from a closure: `f(batch)` runs for every batch; when it returns
/// `Ok`, the worker checkpoints at the batch's last record. At shard end and at graceful
/// shutdown it checkpoints too. Build one per shard with [`with_fn`].
#[derive(Debug)]
pub struct FnProcessor<F> {
    f: Arc<F>,
}

/// A processor factory for [`crate::Consumer::builder`] from a closure.
///
/// ```no_run
/// # async fn f(kinesis: aws_sdk_kinesis::Client, dynamodb: aws_sdk_dynamodb::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use kinesis_consumer::{Consumer, ConsumerConfig, ProcessorError, RecordBatch, with_fn};
/// let consumer = Consumer::builder(kinesis, dynamodb, "orders", ConsumerConfig::new("my-app"),
///     with_fn(|batch: RecordBatch| async move {
///         println!("{}: {} records", batch.shard_id, batch.records.len());
///         Ok::<(), ProcessorError>(())
///     }))
///     .build().await?;
/// # Ok(()) }
/// ```
pub fn with_fn<F, Fut>(
    f: F,
) -> impl Fn(&kinesis_core::ShardId) -> FnProcessor<F> + Send + Sync + 'static
where
    F: Fn(RecordBatch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ProcessorError>> + Send + 'static,
{
    let f = Arc::new(f);
    move |_| FnProcessor { f: Arc::clone(&f) }
}

impl<F, Fut> ShardProcessor for FnProcessor<F>
where
    F: Fn(RecordBatch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), ProcessorError>> + Send + 'static,
{
    async fn process(
        &mut self,
        batch: RecordBatch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        (self.f)(batch).await?;
        checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, checkpointer: &mut Checkpointer) {
        // Every delivered batch was checkpointed after it succeeded: nothing more to record.
        let _ = checkpointer;
    }
}
