//! `/health` and Prometheus `/metrics` on a loopback address.
//!
//! ```text
//!   GET /health  ─► 200 {"status":"ok"}
//!   GET /metrics ─► Prometheus text: agent_lines_read_total, agent_records_delivered_total,
//!                   agent_bytes_behind{stream,file} (files being read only), agent_errors_total{kind},
//!                   agent_checkpoint_age_seconds, agent_files_unreadable{pattern},
//!                   and the producer's UserRecordsPut, KinesisRecordsPut, ErrorsByCode, ...
//! ```

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus exporter, in its slot of the global fan-out (filled once; a
/// reload keeps it). `None` when another global recorder was installed first.
fn handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            if !crate::telemetry::install() {
                return None;
            }
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            crate::telemetry::PROMETHEUS.set(Some(recorder));
            Some(handle)
        })
        .clone()
}

/// Serves until the returned guard is dropped.
pub async fn serve(addr: SocketAddr) -> std::io::Result<ServerGuard> {
    let recorder = handle();
    // After a reload the previous listener may take a moment to close: retry briefly.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let app = axum::Router::new()
        .route(
            "/health",
            axum::routing::get(|| async { r#"{"status":"ok"}"# }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let recorder = recorder.clone();
                async move {
                    let mut text = recorder.map(|h| h.render()).unwrap_or_default();
                    text.push_str(&behind::render());
                    text
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(message = "Health and metrics server stopped.", error = %e);
        }
    });
    Ok(ServerGuard(task))
}

/// Stops the server when dropped.
#[derive(Debug)]
pub struct ServerGuard(tokio::task::JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `agent_bytes_behind{stream,file}`: per file being read, its length minus its acknowledged
/// offset. Kept here rather than as `metrics` gauges so that a released file's series goes
/// away with it (the `metrics` facade cannot remove a series).
pub mod behind {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::path::Path;
    use std::sync::{Mutex, PoisonError};

    use crate::store::EntryId;

    #[derive(Debug)]
    struct Row {
        stream: String,
        /// CloudWatch's `Destination`: `KinesisStream:<name>` or `DeliveryStream:<name>`.
        destination: String,
        path: String,
        len: u64,
        acked: u64,
    }

    static ROWS: Mutex<BTreeMap<EntryId, Row>> = Mutex::new(BTreeMap::new());

    /// The file's length at the last scan (and its start offset when new).
    /// `destination` is CloudWatch's `Destination` of the flow.
    pub fn seen(
        id: EntryId,
        stream: &str,
        destination: &str,
        path: &Path,
        len: u64,
        start: Option<u64>,
    ) {
        let mut rows = ROWS.lock().unwrap_or_else(PoisonError::into_inner);
        let row = rows.entry(id).or_insert_with(|| Row {
            stream: stream.to_string(),
            destination: destination.to_string(),
            path: String::new(),
            len: 0,
            acked: start.unwrap_or(0),
        });
        if row.path.as_str() != path.as_os_str() {
            row.path = path.display().to_string();
        }
        row.len = len;
    }

    /// The file's acknowledged offset.
    pub fn acked(id: EntryId, offset: u64) {
        if let Some(r) = ROWS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&id)
        {
            r.acked = offset;
        }
    }

    /// The file is no longer read: its series goes.
    pub fn remove(id: EntryId) {
        ROWS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn escape(s: &str) -> String {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    /// Each flow's lag to CloudWatch: `BytesBehind{Destination}`, the bytes not yet
    /// acknowledged over all the files it reads (a gauge, set every second by the checkpoint
    /// store's tick). Per destination, not per file: a file dimension would make one CloudWatch
    /// metric (billed monthly) and one recorder key (kept for the process's life) per file
    /// name ever read — unbounded with date-named rotation. Prometheus keeps the per-file rows.
    pub(crate) fn publish() {
        let rows = ROWS.lock().unwrap_or_else(PoisonError::into_inner);
        if rows.is_empty() {
            return;
        }
        let mut per_stream: std::collections::BTreeMap<&str, u64> =
            std::collections::BTreeMap::new();
        for r in rows.values() {
            *per_stream.entry(r.destination.as_str()).or_insert(0) += r.len.saturating_sub(r.acked);
        }
        crate::cloudwatch::record(|| {
            for (destination, behind) in per_stream {
                metrics::gauge!(
                    crate::cloudwatch::BYTES_BEHIND,
                    crate::cloudwatch::DESTINATION => destination.to_owned()
                )
                .set(behind as f64);
            }
        });
    }

    /// Prometheus text.
    pub fn render() -> String {
        let rows = ROWS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        if rows.is_empty() {
            return out;
        }
        out.push_str("# TYPE agent_bytes_behind gauge\n");
        for r in rows.values() {
            let _ = writeln!(
                out,
                "agent_bytes_behind{{stream=\"{}\",file=\"{}\"}} {}",
                escape(&r.stream),
                escape(&r.path),
                r.len.saturating_sub(r.acked)
            );
        }
        out
    }
}
