//! The task that owns the unsent statistic sets and the PutMetricData calls, and its handle.
//!
//! ```text
//!   every flush_interval (aligned), flush(), shutdown()
//!     └─► Shared::drain(window start) ─► datums ─► queue (≤ queue_size; oldest dropped, counted)
//!   queue ─► take_batch (≤ 1000 datums, ≤ 1 MB) ─► PutMetricData (one at a time, own timeout)
//!     ok                      ─► counted sent; next batch at once
//!     throttled / transient   ─► back to the queue's front; next try after the backoff
//!     any other error         ─► dropped, counted rejected (a bad batch must not block the rest)
//! ```
//!
//! One task owns the queue, so nothing else locks it; recording never touches it. Draining
//! goes on while a call is in flight, so a slow CloudWatch delays sending, not the windows.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::types::{
    Dimension, MetricDatum, StandardUnit, StatisticSet as SdkStatisticSet,
};
use aws_smithy_types::DateTime;
use kinesis_core::{AwsError, Backoff};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::batch::{self, MAX_DATUMS_PER_CALL, MAX_REQUEST_BYTES};
use crate::recorder::{Datum, Shared};
use crate::{Error, MetricsConfig};

/// What the publisher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// PutMetricData calls made (each attempt counts).
    pub calls: u64,
    /// Calls that failed (then retried, or their datums rejected).
    pub failed_calls: u64,
    /// Statistic sets CloudWatch accepted.
    pub datums_sent: u64,
    /// Statistic sets dropped unsent: the oldest, when the queue was full, and any older than
    /// the two weeks CloudWatch takes.
    pub datums_dropped: u64,
    /// Statistic sets in calls CloudWatch refused with an error that retrying cannot fix
    /// (validation, access denied).
    pub datums_rejected: u64,
    /// Samples (NaN, infinite, beyond ±2^360) and sets (a sum past 2^360) CloudWatch cannot
    /// take, left out.
    pub values_invalid: u64,
    /// Statistic sets waiting now, in the queue or in the call in flight.
    pub queued: usize,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    failed_calls: AtomicU64,
    datums_sent: AtomicU64,
    datums_dropped: AtomicU64,
    datums_rejected: AtomicU64,
    queued: AtomicUsize,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What [`Publisher::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Everything drained was sent, dropped or rejected before the deadline.
    pub complete: bool,
    /// Statistic sets still unsent at the deadline (lost with the publisher).
    pub unsent: usize,
    /// The publisher's counters at the end.
    pub stats: PublisherStats,
}

enum Command {
    Flush(oneshot::Sender<()>),
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<ShutdownReport>,
    },
}

/// The handle of the task that sends the recorder's statistic sets to CloudWatch. Clones share
/// the task; dropping the last one aborts it (what is queued is lost: call
/// [`shutdown`](Self::shutdown) for a last flush).
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    task: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl Publisher {
    pub(crate) fn spawn(
        config: &MetricsConfig,
        sdk: &aws_types::SdkConfig,
        shared: Arc<Shared>,
    ) -> Result<Self, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let counters = Arc::new(Counters::default());
        let (commands, rx) = mpsc::channel(16);
        let task = Task {
            client: client(config, sdk),
            namespace: Arc::from(config.namespace.as_str()),
            shared: Arc::clone(&shared),
            counters: Arc::clone(&counters),
            queue: VecDeque::new(),
            cap: config.queue_size,
            interval: config.flush_interval,
            backoff: config.retry.build(),
            window_start: SystemTime::now(),
            in_flight: 0,
            failing: false,
        };
        let handle = runtime.spawn(task.run(rx));
        Ok(Self {
            inner: Arc::new(Inner {
                commands,
                task: Mutex::new(Some(handle)),
                counters,
                shared,
            }),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> PublisherStats {
        let c = &self.inner.counters;
        PublisherStats {
            calls: c.calls.load(Ordering::Relaxed),
            failed_calls: c.failed_calls.load(Ordering::Relaxed),
            datums_sent: c.datums_sent.load(Ordering::Relaxed),
            datums_dropped: c.datums_dropped.load(Ordering::Relaxed),
            datums_rejected: c.datums_rejected.load(Ordering::Relaxed),
            values_invalid: self.inner.shared.invalid.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
        }
    }

    /// Ends the current window now and waits until everything queued is sent (or dropped, or
    /// rejected), for at most `timeout`. The next window starts at once; the aligned ticks go
    /// on as before.
    ///
    /// # Cancellation
    /// Cancel-safe: the flush goes on in the task; only the waiting stops.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let (done, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Flush(done))
            .await
            .map_err(|_| Error::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::FlushTimedOut {
                after: timeout,
                queued: self.stats().queued,
            }),
        }
    }

    /// Ends the current window, sends what is queued until `deadline` (retrying as usual), and
    /// stops the task; returns by the deadline (plus a moment for the task to answer) whatever
    /// CloudWatch does. What the recorder records afterwards is not published. A second call,
    /// or a call on a clone after it, returns [`Error::Closed`].
    ///
    /// # Cancellation
    /// Dropping the future does not stop the shutdown: the task still sends until the
    /// deadline, then ends.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, Error> {
        let until = Instant::now() + deadline;
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or(Error::Closed)?;
        let (done, rx) = oneshot::channel();
        let command = Command::Shutdown {
            deadline: until,
            done,
        };
        if self.inner.commands.send(command).await.is_err() {
            return Err(Error::TaskFailed);
        }
        // The task keeps the deadline itself; the grace covers a drain that is slow to end.
        let answer = tokio::time::timeout_at(until + Duration::from_millis(500), rx).await;
        task.abort();
        match answer {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(_)) => Err(Error::TaskFailed),
            Err(_) => {
                let stats = self.stats();
                Ok(ShutdownReport {
                    complete: false,
                    unsent: stats.queued,
                    stats,
                })
            }
        }
    }
}

/// A CloudWatch client from `sdk` (credentials, region, endpoint, with
/// `AWS_ENDPOINT_URL_CLOUDWATCH` honoured as usual), with the SDK's retries off (the task
/// retries, within its deadlines) and `request_timeout` per attempt.
fn client(config: &MetricsConfig, sdk: &aws_types::SdkConfig) -> aws_sdk_cloudwatch::Client {
    use aws_smithy_types::retry::RetryConfig;
    use aws_smithy_types::timeout::TimeoutConfig;
    let mut timeouts = TimeoutConfig::builder()
        .operation_timeout(config.request_timeout)
        .operation_attempt_timeout(config.request_timeout);
    if let Some(connect) = sdk.timeout_config().and_then(|t| t.connect_timeout()) {
        timeouts = timeouts.connect_timeout(connect.min(config.request_timeout));
    }
    let mut b = aws_sdk_cloudwatch::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts.build());
    if !config.gzip {
        b = b.disable_request_compression(true);
    }
    aws_sdk_cloudwatch::Client::from_conf(b.build())
}

type Call = Pin<Box<dyn Future<Output = (Vec<Datum>, Result<(), AwsError>)> + Send>>;

struct Task {
    client: aws_sdk_cloudwatch::Client,
    namespace: Arc<str>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    queue: VecDeque<Datum>,
    cap: usize,
    interval: Duration,
    backoff: Backoff,
    window_start: SystemTime,
    /// Datums in the call in flight.
    in_flight: usize,
    /// Whether the last call failed (to log the first failure and the recovery only).
    failing: bool,
}

/// How long from `now` to the next multiple of `period` since the epoch.
fn until_boundary(now: SystemTime, period: Duration) -> Duration {
    let since = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let p = period.as_nanos().max(1);
    let left = p - since % p;
    Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
}

async fn in_flight(call: &mut Option<Call>) -> (Vec<Datum>, Result<(), AwsError>) {
    match call {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let first = Instant::now() + until_boundary(SystemTime::now(), self.interval);
        let mut ticks = tokio::time::interval_at(first, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut call: Option<Call> = None;
        let mut retry_at: Option<Instant> = None;
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            if call.is_none() && retry_at.is_none() {
                call = self.next_call();
            }
            if call.is_none() && self.queue.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
            }
            self.counters
                .queued
                .store(self.queue.len() + self.in_flight, Ordering::Relaxed);
            let (calling, pausing) = (call.is_some(), retry_at.is_some() && call.is_none());
            // Every branch is cancel-safe: recv and tick lose nothing when another branch wins,
            // the call is polled by reference and resumed next turn, and the pause sleeps
            // until a fixed instant.
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Flush(done)) => {
                        self.drain();
                        flushes.push(done);
                    }
                    Some(Command::Shutdown { deadline, done }) => {
                        let report = self.finish(call.take(), deadline).await;
                        let _ = done.send(report);
                        return;
                    }
                    // Every handle is gone (their drop aborts us too).
                    None => return,
                },
                (batch, result) = in_flight(&mut call), if calling => {
                    call = None;
                    retry_at = self.settle(batch, result).map(|pause| Instant::now() + pause);
                }
                () = until(retry_at), if pausing => retry_at = None,
                _ = ticks.tick() => self.drain(),
            }
        }
    }

    /// Ends the window: its statistic sets go to the queue.
    fn drain(&mut self) {
        let now = SystemTime::now();
        let datums = self.shared.drain(self.window_start);
        self.window_start = now;
        let n = datums.len();
        let dropped = batch::push_capped(&mut self.queue, datums, self.cap);
        if dropped > 0 {
            Counters::add(&self.counters.datums_dropped, dropped);
            tracing::warn!(
                message = "CloudWatch metrics queue full: oldest statistic sets dropped.",
                dropped,
                queue_size = self.cap,
            );
        }
        tracing::trace!(message = "Metrics window drained.", datums = n);
    }

    /// The next PutMetricData call, if anything is queued.
    fn next_call(&mut self) -> Option<Call> {
        let (batch, expired) = batch::take_batch(
            &mut self.queue,
            &self.namespace,
            MAX_DATUMS_PER_CALL,
            MAX_REQUEST_BYTES,
            SystemTime::now(),
        );
        if expired > 0 {
            Counters::add(&self.counters.datums_dropped, expired);
        }
        if batch.is_empty() {
            return None;
        }
        Counters::add(&self.counters.calls, 1);
        self.in_flight = batch.len();
        let client = self.client.clone();
        let namespace = Arc::clone(&self.namespace);
        Some(Box::pin(async move {
            let data: Vec<MetricDatum> = batch.iter().map(to_sdk).collect();
            let result = client
                .put_metric_data()
                .namespace(&*namespace)
                .set_metric_data(Some(data))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| AwsError::new("PutMetricData", e));
            (batch, result)
        }))
    }

    /// Counts a call's outcome; a retryable failure puts its datums back and returns the pause
    /// before the next try.
    fn settle(&mut self, batch: Vec<Datum>, result: Result<(), AwsError>) -> Option<Duration> {
        let n = batch.len() as u64;
        self.in_flight = 0;
        match result {
            Ok(()) => {
                Counters::add(&self.counters.datums_sent, n);
                self.backoff.reset();
                if std::mem::take(&mut self.failing) {
                    tracing::info!(message = "CloudWatch PutMetricData succeeds again.");
                }
                None
            }
            Err(e) => {
                Counters::add(&self.counters.failed_calls, 1);
                let kind = e.kind();
                if kind.is_retryable() {
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(message = "CloudWatch PutMetricData failed; retrying.", error = %e);
                    } else {
                        tracing::debug!(message = "CloudWatch PutMetricData failed again.", error = %e);
                    }
                    let dropped = batch::requeue_capped(&mut self.queue, batch, self.cap);
                    Counters::add(&self.counters.datums_dropped, dropped);
                    // Without a deadline the backoff always answers; `max` if it ever did not.
                    Some(
                        self.backoff
                            .next_delay_for(kind)
                            .unwrap_or(self.backoff.config().max),
                    )
                } else {
                    tracing::warn!(
                        message = "CloudWatch refused PutMetricData: its statistic sets are dropped.",
                        datums = n,
                        error = %e,
                    );
                    Counters::add(&self.counters.datums_rejected, n);
                    self.failing = true;
                    None
                }
            }
        }
    }

    /// The last window and the queue, sent until `deadline`.
    async fn finish(&mut self, call: Option<Call>, deadline: Instant) -> ShutdownReport {
        self.drain();
        let mut call = call;
        let sent = tokio::time::timeout_at(deadline, async {
            loop {
                let current = match call.take() {
                    Some(c) => c,
                    None => match self.next_call() {
                        Some(c) => c,
                        None => return,
                    },
                };
                let (batch, result) = current.await;
                if let Some(pause) = self.settle(batch, result) {
                    tokio::time::sleep(pause).await;
                }
            }
        })
        .await;
        let unsent = self.queue.len() + self.in_flight;
        self.counters.queued.store(unsent, Ordering::Relaxed);
        let stats = PublisherStats {
            calls: self.counters.calls.load(Ordering::Relaxed),
            failed_calls: self.counters.failed_calls.load(Ordering::Relaxed),
            datums_sent: self.counters.datums_sent.load(Ordering::Relaxed),
            datums_dropped: self.counters.datums_dropped.load(Ordering::Relaxed),
            datums_rejected: self.counters.datums_rejected.load(Ordering::Relaxed),
            values_invalid: self.shared.invalid.load(Ordering::Relaxed),
            queued: unsent,
        };
        if unsent > 0 {
            tracing::warn!(
                message =
                    "CloudWatch publisher stopped at its deadline with statistic sets unsent.",
                unsent,
            );
        }
        ShutdownReport {
            complete: sent.is_ok() && unsent == 0,
            unsent,
            stats,
        }
    }
}

fn to_sdk(d: &Datum) -> MetricDatum {
    MetricDatum::builder()
        .metric_name(&*d.key.name)
        .set_dimensions(Some(
            d.key
                .dimensions
                .iter()
                .map(|(n, v)| Dimension::builder().name(&**n).value(&**v).build())
                .collect(),
        ))
        .timestamp(DateTime::from(d.timestamp))
        .statistic_values(
            SdkStatisticSet::builder()
                .sample_count(d.stats.sample_count)
                .sum(d.stats.sum)
                .minimum(d.stats.minimum)
                .maximum(d.stats.maximum)
                .build(),
        )
        .set_unit(d.unit.and_then(standard_unit))
        .build()
}

/// The CloudWatch unit for a `metrics` unit, where there is one.
fn standard_unit(unit: metrics::Unit) -> Option<StandardUnit> {
    use metrics::Unit as U;
    Some(match unit {
        U::Count => StandardUnit::Count,
        U::Percent => StandardUnit::Percent,
        U::Seconds => StandardUnit::Seconds,
        U::Milliseconds => StandardUnit::Milliseconds,
        U::Microseconds => StandardUnit::Microseconds,
        U::Nanoseconds => return None,
        U::Tebibytes => StandardUnit::Terabytes,
        U::Gibibytes => StandardUnit::Gigabytes,
        U::Mebibytes => StandardUnit::Megabytes,
        U::Kibibytes => StandardUnit::Kilobytes,
        U::Bytes => StandardUnit::Bytes,
        U::TerabitsPerSecond => StandardUnit::TerabitsSecond,
        U::GigabitsPerSecond => StandardUnit::GigabitsSecond,
        U::MegabitsPerSecond => StandardUnit::MegabitsSecond,
        U::KilobitsPerSecond => StandardUnit::KilobitsSecond,
        U::BitsPerSecond => StandardUnit::BitsSecond,
        U::CountPerSecond => StandardUnit::CountSecond,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_multiples_of_the_interval() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        let m = Duration::from_secs(60);
        let table = [
            (at(120, 0), m, Duration::from_secs(60)),
            (at(120, 1), m, Duration::from_millis(59_999)),
            (at(179, 500), m, Duration::from_millis(500)),
            (at(100, 0), Duration::from_secs(10), Duration::from_secs(10)),
            (
                at(101, 250),
                Duration::from_secs(10),
                Duration::from_millis(8_750),
            ),
        ];
        for (now, period, want) in table {
            assert_eq!(until_boundary(now, period), want, "{now:?} {period:?}");
        }
    }

    fn closed_port_sdk() -> aws_types::SdkConfig {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        kinesis_testkit::local_sdk_config()
            .into_builder()
            .endpoint_url(format!("http://{addr}"))
            .build()
    }

    #[tokio::test]
    async fn clones_share_the_task_and_the_last_drop_aborts_it() {
        let (_recorder, publisher) =
            crate::start(&MetricsConfig::kpl(), &closed_port_sdk()).unwrap();
        let counters = Arc::clone(&publisher.inner.counters);
        let task_holds = |c: &Arc<Counters>| Arc::strong_count(c) == 3; // handle, task, here
        assert!(task_holds(&counters));
        let clone = publisher.clone();
        drop(publisher);
        // The task still answers through the clone.
        clone.flush(Duration::from_secs(5)).await.unwrap();
        assert!(task_holds(&counters));
        drop(clone);
        // Aborted: the task dropped its share.
        kinesis_core::wait::until_ready(
            "the task to end",
            Duration::from_secs(5),
            kinesis_core::BackoffConfig::new(Duration::from_millis(1), Duration::from_millis(20)),
            || async { Ok::<_, ()>((Arc::strong_count(&counters) == 1).then_some(())) },
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn shutdown_ends_the_task_once() {
        let (_recorder, publisher) =
            crate::start(&MetricsConfig::kpl(), &closed_port_sdk()).unwrap();
        let report = publisher.shutdown(Duration::from_secs(1)).await.unwrap();
        assert!(
            report.complete,
            "nothing recorded, nothing to send: {report:?}"
        );
        assert!(matches!(
            publisher.shutdown(Duration::from_secs(1)).await,
            Err(Error::Closed)
        ));
        assert!(matches!(
            publisher.flush(Duration::from_secs(1)).await,
            Err(Error::Closed)
        ));
    }

    #[test]
    fn start_needs_a_runtime() {
        let got = crate::start(&MetricsConfig::kpl(), &closed_port_sdk());
        assert!(matches!(got, Err(Error::NoRuntime)), "{got:?}");
        let bad = MetricsConfig {
            queue_size: 0,
            ..MetricsConfig::kpl()
        };
        assert!(matches!(
            crate::start(&bad, &closed_port_sdk()),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn units_map_to_cloudwatch_units() {
        assert_eq!(
            standard_unit(metrics::Unit::Milliseconds),
            Some(StandardUnit::Milliseconds)
        );
        assert_eq!(
            standard_unit(metrics::Unit::CountPerSecond),
            Some(StandardUnit::CountSecond)
        );
        assert_eq!(standard_unit(metrics::Unit::Nanoseconds), None);
    }
}
