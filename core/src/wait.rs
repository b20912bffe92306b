//! Waiting until something is ready (a stream ACTIVE, a consumer registered, a table created):
//! one loop, paced by [`Backoff`](crate::Backoff), for every such wait in the suite.
//!
//! ```text
//!   check() ─► Ok(Some(t)) ─► Ok(t)
//!           ─► Ok(None)    ─► pause (backoff, ends at the timeout) ─► check() again
//!           ─► Err(e)      ─► Err(WaitError::Failed)     (the check decides what is fatal)
//!   timeout reached        ─► Err(WaitError::TimedOut)   (after one last check at the timeout)
//! ```
//!
//! The SDK's generated waiters start with a fixed pause of several seconds; an emulator (or a
//! stream that is already ACTIVE) is ready in milliseconds.

use std::future::Future;
use std::time::Duration;

use crate::backoff::BackoffConfig;

/// Why [`until_ready`] gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError<E> {
    /// Still not ready when the timeout passed.
    #[error("gave up waiting for {what} after {after:?}")]
    TimedOut {
        /// What was waited for, e.g. `stream orders to become ACTIVE`.
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// The check failed in a way it said is fatal.
    #[error("waiting for {what}")]
    Failed {
        /// What was waited for.
        what: String,
        /// The check's error.
        #[source]
        source: E,
    },
}

/// Calls `check` until it answers `Ok(Some(t))` (ready: returns `t`) or `Err(e)` (fatal:
/// returns [`WaitError::Failed`]); on `Ok(None)` (not yet) it pauses by `backoff` and checks
/// again, for at most `timeout` in all (a last check comes at the timeout itself). `what` names
/// what is waited for, in the error: "gave up waiting for {what} after 60s".
///
/// A check that meets a retryable error (see [`ErrorKind::is_retryable`](crate::ErrorKind::is_retryable))
/// should answer `Ok(None)` to keep waiting.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // Runs against the testkit's embedded Kinesis emulator: a stream just created, not yet
/// # // waited for; against AWS the client comes from the standard chain.
/// # let env = kinesis_testkit::TestEnv::start().await;
/// # let client = env.kinesis.clone();
/// # let orders = kinesis_testkit::unique_name("orders");
/// # client.create_stream().stream_name(&orders).shard_count(2).send().await?;
/// use std::time::Duration;
/// use aws_sdk_kinesis::types::StreamStatus;
/// use kinesis_core::{AwsError, BackoffConfig, wait::until_ready};
/// let backoff = BackoffConfig::new(Duration::from_millis(20), Duration::from_secs(1));
/// let summary = until_ready("stream orders to become ACTIVE", Duration::from_secs(60), backoff, || async {
///     match client.describe_stream_summary().stream_name(&orders).send().await {
///         Ok(out) => Ok(out
///             .stream_description_summary()
///             .filter(|s| *s.stream_status() == StreamStatus::Active)
///             .cloned()),
///         Err(e) => {
///             let e = AwsError::new("DescribeStreamSummary", e);
///             if e.is_retryable() { Ok(None) } else { Err(e) }
///         }
///     }
/// })
/// .await?;
/// assert_eq!(summary.open_shard_count(), 2);
/// # Ok(()) }
/// ```
///
/// # Cancellation
/// Cancel-safe: dropping the future stops the waiting; a check in progress is dropped with it.
pub async fn until_ready<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    backoff: BackoffConfig,
    mut check: F,
) -> Result<T, WaitError<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let mut pauses = backoff.with_deadline(timeout).build();
    loop {
        match check().await {
            Ok(Some(t)) => return Ok(t),
            Ok(None) => {}
            Err(source) => {
                return Err(WaitError::Failed {
                    what: what.to_owned(),
                    source,
                });
            }
        }
        match pauses.next_delay() {
            Some(pause) => tokio::time::sleep(pause).await,
            None => {
                return Err(WaitError::TimedOut {
                    what: what.to_owned(),
                    after: timeout,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const BACKOFF: BackoffConfig =
        BackoffConfig::new(Duration::from_millis(10), Duration::from_millis(100));

    #[tokio::test(start_paused = true)]
    async fn ready_after_a_few_checks() {
        let calls = AtomicU32::new(0);
        let got: Result<u32, WaitError<std::io::Error>> =
            until_ready("x", Duration::from_secs(5), BACKOFF, || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                Ok((n == 4).then_some(n))
            })
            .await;
        assert_eq!(got.unwrap(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_errors_end_it_at_once() {
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = until_ready("x", Duration::from_secs(5), BACKOFF, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(std::io::Error::other("gone"))
        })
        .await;
        assert!(matches!(got, Err(WaitError::Failed { .. })), "{got:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_after_a_last_check_at_the_timeout() {
        let started = tokio::time::Instant::now();
        let last = std::sync::Mutex::new(started);
        let got: Result<(), WaitError<std::io::Error>> = until_ready(
            "s to become ACTIVE",
            Duration::from_secs(2),
            BACKOFF,
            || async {
                *last.lock().unwrap() = tokio::time::Instant::now();
                Ok(None)
            },
        )
        .await;
        let err = got.unwrap_err();
        assert_eq!(
            err.to_string(),
            "gave up waiting for s to become ACTIVE after 2s"
        );
        assert_eq!(
            last.lock().unwrap().duration_since(started),
            Duration::from_secs(2)
        );
    }
}
