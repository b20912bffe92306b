//! The periodic progress line per flow in the log, as the Kinesis Agent writes its
//! `Progress:` lines every `log.statusReportingPeriodSeconds` (30 s).
//!
//! ```text
//!   tailer ─ records parsed (+ bytes) ──────────────────┐
//!   acker  ─ records delivered (+ bytes), failures ─────┼─► Progress (atomics)
//!                                                       ▼
//!   reporter task, every period ─► "<flow>: Progress: N records parsed (B bytes), and M records
//!                                   sent successfully to destinations. Uptime: T ms"
//!                                   (+ the counters as fields with log.emitMetrics)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

/// One flow's counts since it started.
#[derive(Debug)]
pub(crate) struct Progress {
    started: Instant,
    parsed: AtomicU64,
    parsed_bytes: AtomicU64,
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    failed: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            parsed: AtomicU64::new(0),
            parsed_bytes: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Progress {
    /// Records read and handed to the producer.
    pub(crate) fn parsed(&self, records: u64, bytes: u64) {
        self.parsed.fetch_add(records, Ordering::Relaxed);
        self.parsed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A batch delivered.
    pub(crate) fn delivered(&self, records: u64, bytes: u64) {
        self.sent.fetch_add(records, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records that failed an attempt (sent again).
    pub(crate) fn failed(&self, records: u64) {
        self.failed.fetch_add(records, Ordering::Relaxed);
    }

    /// The progress line.
    pub(crate) fn line(&self, flow: &str) -> String {
        format!(
            "{flow}: Progress: {} records parsed ({} bytes), and {} records sent successfully to destinations. Uptime: {}ms",
            self.parsed.load(Ordering::Relaxed),
            self.parsed_bytes.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
            self.started.elapsed().as_millis()
        )
    }

    /// Logs the line (with the counters as fields when `metrics`).
    pub(crate) fn log(&self, flow: &str, metrics: bool) {
        let line = self.line(flow);
        if metrics {
            info!(
                message = %line,
                records_parsed = self.parsed.load(Ordering::Relaxed),
                bytes_parsed = self.parsed_bytes.load(Ordering::Relaxed),
                records_sent = self.sent.load(Ordering::Relaxed),
                bytes_sent = self.sent_bytes.load(Ordering::Relaxed),
                record_send_errors = self.failed.load(Ordering::Relaxed),
            );
        } else {
            info!(message = %line);
        }
    }
}

/// Logs `progress` every `period` until dropped (the task is aborted with its flow).
pub(crate) fn report(
    progress: Arc<Progress>,
    flow: String,
    period: Duration,
    metrics: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at(kinesis_core::clock::later(Instant::now(), period), period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            progress.log(&flow, metrics);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_like_the_kinesis_agents() {
        let p = Progress::default();
        p.parsed(10, 100);
        p.parsed(5, 50);
        p.delivered(12, 120);
        p.failed(3);
        let l = p.line("fh:d:/var/log/*.log");
        assert!(
            l.starts_with("fh:d:/var/log/*.log: Progress: 15 records parsed (150 bytes), and 12 records sent successfully to destinations. Uptime: "),
            "{l}"
        );
    }
}
