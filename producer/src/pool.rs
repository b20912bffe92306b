//! [`BufferPool`]: one buffer budget shared by many producers.
//!
//! ```text
//!   Producer "orders" ──┐
//!   Producer "clicks" ──┼── acquire buffer bytes ──► BufferPool (one Semaphore of N bytes)
//!   Producer "audit"  ──┘        ▲
//!                                └── released as each record (or batch) is settled
//! ```
//!
//! The trade-off and an example are on [`BufferPool`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, Semaphore};

use crate::config::{ConfigError, ProducerConfig};

/// A byte budget for the buffers of many producers. Cheap to clone: clones share one budget.
///
/// Each producer still has its own driver, channels and shutdown; only the byte budget is
/// shared. A producer built with a pool takes every record's [`buffer_cost`](crate::buffer_cost)
/// from the pool, and its own `max_buffered_bytes` is **ignored** (it must still be valid).
/// There is no per-stream cap inside the pool: the permits a record holds are handed to the
/// driver and released by it when the record is settled, as one permit from one semaphore.
///
/// The trade-off: one stalled or throttled stream can fill the whole pool — up to its
/// `record_ttl`, after which its records fail and free their space — and while it does, every
/// other producer of the pool sees backpressure too (`send` waits, `try_send` reports
/// [`Full`](crate::TrySendErrorKind::Full)). That is what a pool is for — one number bounds the
/// memory of all streams — but a stream that must never be held up by another one wants a
/// producer of its own (no pool) or a pool of its own.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Runs against the testkit's embedded Kinesis emulator, with two streams.
/// # let env = kinesis_testkit::TestEnv::start().await;
/// # let (orders_stream, clicks_stream) = (env.create_stream(1).await, env.create_stream(1).await);
/// # let client = env.kinesis.clone();
/// use std::time::Duration;
/// use kinesis_core::{PartitionKey, UserRecord};
/// use kinesis_producer::{BufferPool, Producer};
/// let pool = BufferPool::new(128 * 1024 * 1024)?; // 128 MiB for every stream together
/// let orders = Producer::builder(client.clone(), &orders_stream).buffer_pool(pool.clone()).build().await?;
/// let clicks = Producer::builder(client, &clicks_stream).buffer_pool(pool.clone()).build().await?;
/// println!("{} of {} bytes free", pool.available_bytes(), pool.capacity());
/// // Shutting one down leaves the pool (and the other producer) working.
/// orders.shutdown(Duration::from_secs(10)).await;
/// let receipt = clicks.send(UserRecord::new(PartitionKey::new("user-1")?, None, "click".into())).await?;
/// receipt.await?;
/// # let report = clicks.shutdown(Duration::from_secs(10)).await;
/// # assert_eq!((report.delivered, report.failed), (1, 0));
/// # assert_eq!(pool.available_bytes(), pool.capacity()); // every record settled: all bytes back
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BufferPool {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl BufferPool {
    /// A pool of `capacity` bytes, counted as [`buffer_cost`](crate::buffer_cost) counts them.
    ///
    /// # Errors
    /// When `capacity` is 0 or not below 4 GiB (the limit of `max_buffered_bytes` too).
    pub fn new(capacity: usize) -> Result<Self, ConfigError> {
        if capacity == 0 || u32::try_from(capacity).is_err() {
            return Err(ConfigError {
                field: "buffer_pool",
                reason: format!("capacity must be 1 byte to below 4 GiB, is {capacity}"),
            });
        }
        Ok(Self::unchecked(capacity))
    }

    /// A pool for a configuration `validate()` accepted (its `max_buffered_bytes` fits).
    pub(crate) fn unchecked(capacity: usize) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// The budget, in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes free now.
    pub fn available_bytes(&self) -> usize {
        self.permits.available_permits()
    }

    /// Refuses a pool that cannot hold one largest record of `config` (its `send` would wait
    /// for ever).
    pub(crate) fn check(&self, config: &ProducerConfig) -> Result<(), ConfigError> {
        let largest = config.largest_record_cost();
        if self.capacity < largest {
            return Err(ConfigError {
                field: "buffer_pool",
                reason: format!(
                    "({} bytes) must hold at least one largest record ({largest} bytes)",
                    self.capacity
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }
}

/// One producer's "shut down" signal. With a shared pool, shutting a producer down cannot close
/// the semaphore (the other producers use it), so its waiting `send`s wait on this as well.
#[derive(Debug, Default)]
pub(crate) struct Closing {
    closed: AtomicBool,
    notify: Notify,
}

impl Closing {
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once [`close`](Self::close) has been called (at once if it has). Cancel-safe.
    pub(crate) async fn closed(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a close() in between still wakes it.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_checked() {
        assert_eq!(BufferPool::new(0).unwrap_err().field, "buffer_pool");
        assert!(BufferPool::new(usize::MAX).is_err());
        let pool = BufferPool::new(1000).unwrap();
        assert_eq!((pool.capacity(), pool.available_bytes()), (1000, 1000));
        assert!(pool.check(&ProducerConfig::default()).is_err());
    }

    #[tokio::test]
    async fn closing_wakes_waiters_and_later_callers() {
        let closing = Arc::new(Closing::default());
        let waiter = tokio::spawn({
            let c = Arc::clone(&closing);
            async move { c.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        closing.close();
        waiter.await.unwrap();
        // Already closed: resolves at once.
        closing.closed().await;
        assert!(closing.is_closed());
    }
}
