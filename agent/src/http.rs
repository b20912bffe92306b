//! `/health` and Prometheus `/metrics` on a loopback address.
//!
//! ```text
//!   GET /health  ─► 200 {"status":"ok"}
//!   GET /metrics ─► Prometheus text: agent_lines_read_total, agent_records_delivered_total,
//!                   agent_bytes_behind{file}, agent_errors_total{kind}, agent_checkpoint_age_seconds,
//!                   and the producer's UserRecordsPut, KinesisRecordsPut, ErrorsByCode, ...
//! ```

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder (installed once; a reload keeps it).
fn handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
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
                async move { recorder.map(|h| h.render()).unwrap_or_default() }
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
