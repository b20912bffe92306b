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

/// Polls `DescribeStreamSummary` until the stream is ACTIVE. (The SDK waiter's fixed 10 s first
/// delay makes every creation cost 10 s against an emulator.)
pub async fn wait_stream_active(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    deadline: Duration,
) -> Result<(), String> {
    let until = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        let status = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await;
        match status {
            Ok(out) => {
                let active = out
                    .stream_description_summary()
                    .is_some_and(|s| *s.stream_status() == StreamStatus::Active);
                if active {
                    return Ok(());
                }
            }
            Err(e) => {
                let kind = kinesis_core::classify::classify(&e);
                if !(kind.is_retryable() || kind == kinesis_core::ErrorKind::NotFound) {
                    return Err(format!("DescribeStreamSummary {stream}: {e:?}"));
                }
            }
        }
        if Instant::now() >= until {
            return Err(format!("stream {stream} not ACTIVE after {deadline:?}"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
