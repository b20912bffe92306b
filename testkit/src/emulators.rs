//! In-process emulators: ferrokinesis (Kinesis) and dynoxide (DynamoDB) on loopback ports.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the embedded emulators behave. `Default` suits tests: streams become ACTIVE at once,
/// no throttling, iterators live 5 minutes as on AWS.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Kinesis listen address; port 0 picks a free port.
    pub kinesis_addr: SocketAddr,
    /// DynamoDB listen address; port 0 picks a free port.
    pub dynamodb_addr: SocketAddr,
    /// Enforce the per-shard write limits (1 MiB/s, 1,000 records/s): PutRecords entries then
    /// fail with `ProvisionedThroughputExceededException`. Off by default.
    pub enforce_limits: bool,
    /// Shard iterator lifetime (AWS: 5 minutes). Set 1 s to test `ExpiredIteratorException`.
    pub iterator_ttl: Duration,
    /// Time a new stream stays CREATING (0: instant).
    pub create_stream_delay: Duration,
    /// Time a reshard keeps the stream UPDATING.
    pub update_stream_delay: Duration,
    /// Time a deleted stream stays DELETING.
    pub delete_stream_delay: Duration,
    /// Maximum open shards across all streams.
    pub shard_limit: u32,
    /// Cap on retained record bytes (ferrokinesis keeps every record for 24 h otherwise).
    pub max_retained_bytes: Option<u64>,
    /// Lifetime of one SubscribeToShard session (AWS: 5 minutes).
    pub subscribe_session: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            kinesis_addr: any,
            dynamodb_addr: any,
            enforce_limits: false,
            iterator_ttl: Duration::from_secs(300),
            create_stream_delay: Duration::ZERO,
            update_stream_delay: Duration::from_millis(50),
            delete_stream_delay: Duration::from_millis(50),
            shard_limit: 1_000,
            max_retained_bytes: None,
            subscribe_session: Duration::from_secs(300),
        }
    }
}

/// Why the emulators did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The DynamoDB emulator's database could not be opened.
    #[error("cannot open the DynamoDB emulator's in-memory database: {0}")]
    Database(String),
}

/// Both emulators, serving until [`shutdown`](Self::shutdown) or drop (which aborts them).
#[derive(Debug)]
pub struct LocalEmulators {
    kinesis_addr: SocketAddr,
    dynamodb_addr: SocketAddr,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LocalEmulators {
    /// Binds both listeners and starts serving on the current Tokio runtime.
    pub async fn start(opts: &EmulatorOptions) -> Result<Self, StartError> {
        let store = ferrokinesis::store::StoreOptions {
            create_stream_ms: millis(opts.create_stream_delay),
            update_stream_ms: millis(opts.update_stream_delay),
            delete_stream_ms: millis(opts.delete_stream_delay),
            shard_limit: opts.shard_limit,
            iterator_ttl_seconds: opts.iterator_ttl.as_secs().max(1),
            enforce_limits: opts.enforce_limits,
            max_retained_bytes: opts.max_retained_bytes,
            subscribe_to_shard_session_ms: millis(opts.subscribe_session),
            ..Default::default()
        };
        let (app, _store) = ferrokinesis::create_app(store);
        // Axum's default 2 MB body limit is below what AWS accepts: a full PutRecords call
        // (5 MiB of data, base64 in JSON) is about 7 MB.
        let app = app.layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024));
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let kl = bind(opts.kinesis_addr).await?;
        let dl = bind(opts.dynamodb_addr).await?;
        let local = |l: &TcpListener, addr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { addr, source })
        };
        let kinesis_addr = local(&kl, opts.kinesis_addr)?;
        let dynamodb_addr = local(&dl, opts.dynamodb_addr)?;
        let db = dynoxide::Database::memory().map_err(|e| StartError::Database(e.to_string()))?;

        let (k_stop, k_rx) = oneshot::channel::<()>();
        let (d_stop, d_rx) = oneshot::channel::<()>();
        let k_task = tokio::spawn(async move {
            let served = axum::serve(kl, app)
                .with_graceful_shutdown(async {
                    let _ = k_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(message = "Kinesis emulator stopped.", error = %e);
            }
        });
        let d_task = tokio::spawn(async move {
            let served = dynoxide::server::serve_with_shutdown(dl, db, async {
                let _ = d_rx.await;
            })
            .await;
            if let Err(e) = served {
                tracing::error!(message = "DynamoDB emulator stopped.", error = %e);
            }
        });
        Ok(Self {
            kinesis_addr,
            dynamodb_addr,
            stops: vec![k_stop, d_stop],
            tasks: vec![k_task, d_task],
        })
    }

    /// Kinesis endpoint, `http://127.0.0.1:PORT`.
    pub fn kinesis_endpoint(&self) -> String {
        format!("http://{}", self.kinesis_addr)
    }

    /// DynamoDB endpoint, `http://127.0.0.1:PORT`.
    pub fn dynamodb_endpoint(&self) -> String {
        format!("http://{}", self.dynamodb_addr)
    }

    /// Kinesis listen address.
    pub fn kinesis_addr(&self) -> SocketAddr {
        self.kinesis_addr
    }

    /// DynamoDB listen address.
    pub fn dynamodb_addr(&self) -> SocketAddr {
        self.dynamodb_addr
    }

    /// Stops accepting, lets requests in progress finish (at most `grace`), then aborts.
    pub async fn shutdown(mut self, grace: Duration) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let joined = tokio::time::timeout(grace, async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!(message = "Emulators did not stop within the grace period; aborting.");
            for a in aborts {
                a.abort();
            }
        }
    }
}

impl Drop for LocalEmulators {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
