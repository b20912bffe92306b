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
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Runs against the testkit's embedded Kinesis and DynamoDB emulators (the lease table), with
/// # // two records in a stream of one shard; against AWS the clients come from the standard chain.
/// # use std::sync::{Mutex, atomic::{AtomicUsize, Ordering}};
/// # static SEEN: AtomicUsize = AtomicUsize::new(0);
/// # static SHARDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// # let env = kinesis_testkit::TestEnv::start().await;
/// # let orders = env.create_stream(1).await;
/// # for data in ["a", "b"] {
/// #     env.kinesis.put_record().stream_name(&orders).partition_key("user-1")
/// #         .data(aws_sdk_kinesis::primitives::Blob::new(data)).send().await?;
/// # }
/// # let (kinesis, dynamodb) = (env.kinesis.clone(), env.dynamodb.clone());
/// use kinesis_consumer::{Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, with_fn};
/// let config = ConsumerConfig { initial_position: InitialPosition::TrimHorizon, ..ConsumerConfig::new("my-app") };
/// let consumer = Consumer::builder(kinesis, dynamodb, &orders, config,
///     with_fn(|batch: RecordBatch| async move {
///         println!("{}: {} records", batch.shard_id, batch.records.len());
/// #       SHARDS.lock().map_err(|_| "poisoned")?.push(batch.shard_id.to_string());
/// #       SEEN.fetch_add(batch.records.len(), Ordering::SeqCst);
///         Ok::<(), ProcessorError>(())
///     }))
///     .build().await?;
/// # kinesis_testkit::eventually("both records", std::time::Duration::from_secs(20), || async {
/// #     (SEEN.load(Ordering::SeqCst) == 2).then_some(())
/// # }).await;
/// # consumer.shutdown(std::time::Duration::from_secs(10)).await;
/// # let shards = SHARDS.lock().map_err(|_| "poisoned")?.clone();
/// # assert!(!shards.is_empty() && shards.iter().all(|s| s == "shardId-000000000000"), "{shards:?}");
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
