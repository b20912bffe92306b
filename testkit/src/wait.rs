//! Waiting without sleeping a fixed time: poll a probe until it answers or a deadline passes.

use std::future::Future;
use std::time::Duration;

use aws_sdk_kinesis::types::StreamStatus;
use tokio::time::Instant;

/// Polls `probe` until it returns `Some`, starting at 5 ms between polls and doubling to
/// 200 ms. Returns the value.
///
/// # Panics
/// When `deadline` passes first, naming `what` — a test that waits forever is worse.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause.min(until.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Polls `DescribeStreamSummary` until the stream is ACTIVE, through the suite's one
/// wait-until helper (`kinesis_core::wait::until_ready`). (The SDK waiter's fixed 10 s first
/// delay makes every creation cost 10 s against an emulator.)
pub async fn wait_stream_active(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    deadline: Duration,
) -> Result<(), String> {
    let pace =
        kinesis_core::BackoffConfig::new(Duration::from_millis(5), Duration::from_millis(200));
    kinesis_core::wait::until_ready(
        &format!("stream {stream} ACTIVE"),
        deadline,
        pace,
        || async {
            match client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
            {
                Ok(out) => Ok(out
                    .stream_description_summary()
                    .filter(|s| *s.stream_status() == StreamStatus::Active)
                    .map(|_| ())),
                Err(e) => {
                    let kind = kinesis_core::classify::classify(&e);
                    if kind.is_retryable() || kind == kinesis_core::ErrorKind::NotFound {
                        Ok(None)
                    } else {
                        Err(format!("DescribeStreamSummary {stream}: {e:?}"))
                    }
                }
            }
        },
    )
    .await
    .map_err(|e| match e {
        kinesis_core::wait::WaitError::Failed { source, .. } => source,
        other => other.to_string(),
    })
}
