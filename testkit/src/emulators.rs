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
    /// Serve Kinesis over TLS (ALPN h2 and http/1.1) with a self-signed certificate for
    /// `localhost` and `127.0.0.1`, as AWS serves it: exercises the HTTP/2 path of enhanced
    /// fan-out. Clients must trust [`LocalEmulators::ca_pem`].
    pub tls: bool,
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
            tls: false,
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
    /// The TLS certificate or configuration could not be made.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The DynamoDB emulator's database could not be opened.
    #[error("cannot open the DynamoDB emulator's in-memory database: {0}")]
    Database(String),
}

/// Both emulators, serving until [`shutdown`](Self::shutdown) or drop (which aborts them).
#[derive(Debug)]
pub struct LocalEmulators {
    kinesis_addr: SocketAddr,
    versions: std::sync::Arc<VersionsSeen>,
    /// PEM of the self-signed certificate, when Kinesis is served over TLS.
    ca_pem: Option<String>,
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
        // Which HTTP versions clients used (to prove the HTTP/2 path is exercised).
        let versions = std::sync::Arc::new(VersionsSeen::default());
        let seen = std::sync::Arc::clone(&versions);
        let app = app.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let seen = std::sync::Arc::clone(&seen);
                async move {
                    seen.record(req.version());
                    next.run(req).await
                }
            },
        ));
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
        let (k_task, ca_pem) = if opts.tls {
            let (task, pem) = serve_tls(kl, app, k_rx)?;
            (task, Some(pem))
        } else {
            let task = tokio::spawn(async move {
                let served = axum::serve(kl, app)
                    .with_graceful_shutdown(async {
                        let _ = k_rx.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(message = "Kinesis emulator stopped.", error = %e);
                }
            });
            (task, None)
        };
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
            versions,
            ca_pem,
            dynamodb_addr,
            stops: vec![k_stop, d_stop],
            tasks: vec![k_task, d_task],
        })
    }

    /// Kinesis endpoint: `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS.
    pub fn kinesis_endpoint(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://localhost:{}", self.kinesis_addr.port()),
            None => format!("http://{}", self.kinesis_addr),
        }
    }

    /// Whether the Kinesis emulator has served an HTTP/2 request (over TLS: negotiated by ALPN).
    pub fn served_http2(&self) -> bool {
        self.versions.h2.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The certificate to trust when Kinesis is served over TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
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

/// Serves `app` over TLS on `listener` with a fresh self-signed certificate; returns the task and
/// the certificate's PEM.
fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    stop: oneshot::Receiver<()>,
) -> Result<(JoinHandle<()>, String), StartError> {
    use std::sync::Arc;
    let tls = |e: &dyn std::fmt::Display| StartError::Tls(e.to_string());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| tls(&e))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(&e))?
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .map_err(|e| tls(&e))?;
    // RustlsConfig::from_config does not set ALPN: offer h2 first, as AWS does.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let std_listener = listener.into_std().map_err(|e| tls(&e))?;
    std_listener.set_nonblocking(true).map_err(|e| tls(&e))?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(
        std_listener,
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(cfg)),
    )
    .map_err(|e| tls(&e))?
    .handle(handle.clone());
    let task = tokio::spawn(async move {
        let serve = server.serve(app.into_make_service());
        tokio::select! {
            r = serve => if let Err(e) = r {
                tracing::error!(message = "Kinesis emulator (TLS) stopped.", error = %e);
            },
            _ = stop => handle.shutdown(),
        }
    });
    Ok((task, ck.cert.pem()))
}

/// An HTTPS client for the SDK that trusts only `ca_pem` (the embedded emulator's certificate).
pub fn https_client_trusting(
    ca_pem: &str,
) -> Result<aws_sdk_kinesis::config::SharedHttpClient, StartError> {
    use aws_smithy_http_client::tls;
    let ctx = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::empty().with_pem_certificate(ca_pem.as_bytes()))
        .build()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(ctx)
        .build_https())
}

#[derive(Debug, Default)]
struct VersionsSeen {
    h2: std::sync::atomic::AtomicBool,
}

impl VersionsSeen {
    fn record(&self, v: axum::http::Version) {
        if v == axum::http::Version::HTTP_2 {
            self.h2.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
