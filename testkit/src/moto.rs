//! `moto_server` (PyPI `moto[server]`) as a CloudWatch emulator, and the bridge the Rust SDK
//! needs to talk to it.
//!
//! ```text
//!   aws-sdk-cloudwatch ──RPC v2 CBOR──► CborBridge ──AWS JSON 1.0──► [FaultProxy] ──► moto_server
//!     POST /service/GraniteServiceVersion20100801/operation/PutMetricData     (child process,
//!     content-encoding: gzip (above 10 KiB)    gunzip, CBOR → JSON,            127.0.0.1:PORT)
//!                                              gzip again if it came gzipped
//!                         ◄── CBOR ──────────── JSON → CBOR (numbers as moto typed them,
//!                                                `*Timestamp(s)` as CBOR tag 1)
//! ```
//!
//! The Rust SDK (aws-sdk-cloudwatch 1.140) speaks only Smithy RPC v2 CBOR to CloudWatch; moto
//! 5.2 serves CloudWatch over the query and JSON 1.0 protocols only, and its maintainers plan no
//! CBOR support (getmoto/moto#9195). The bridge translates, nothing more: moto stores and
//! aggregates every datum and answers every query, and every error it or a [`FaultProxy`]
//! between them returns reaches the client with its code. Put a [`FaultProxy`] *between* the
//! bridge and moto (`CborBridge::start(proxy.addr())`): it then sees `X-Amz-Target`, so its
//! rules can name `PutMetricData`, and its JSON errors are translated like moto's.
//!
//! moto runs from the test venv ([`python`](crate::python::python)); it exits when its stdin
//! closes, so a test process killed without unwinding leaves no server behind.
//!
//! ```no_run
//! # async fn f() {
//! use kinesis_testkit::{local_sdk_config, moto::{MotoServer, cloudwatch_for}};
//! let Some(moto) = MotoServer::start_or_skip().await else { return };
//! let cloudwatch = cloudwatch_for(&local_sdk_config(), &moto.endpoint());
//! # }
//! ```
//!
//! [`FaultProxy`]: crate::FaultProxy

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_config::SdkConfig;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A CloudWatch client for `endpoint` (a [`MotoServer::endpoint`] or a [`CborBridge::endpoint`])
/// with `sdk`'s region and credentials.
pub fn cloudwatch_for(sdk: &SdkConfig, endpoint: &str) -> aws_sdk_cloudwatch::Client {
    let conf = aws_sdk_cloudwatch::config::Builder::from(sdk)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_cloudwatch::Client::from_conf(conf)
}

/// A metric as CloudWatch lists it: its name and its `Name=Value` dimensions, sorted.
pub type MetricId = (String, Vec<String>);

/// The [`MetricId`] of `name` with these dimensions.
pub fn metric_id(name: &str, dims: &[(&str, &str)]) -> MetricId {
    let mut d: Vec<String> = dims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    d.sort();
    (name.to_owned(), d)
}

/// Every metric in `namespace` (all pages of ListMetrics).
///
/// # Panics
/// When ListMetrics fails (a test helper).
#[allow(
    clippy::expect_used,
    reason = "a test helper: a failed call fails the test"
)]
pub async fn list_metrics(
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
) -> std::collections::BTreeSet<MetricId> {
    let mut out = std::collections::BTreeSet::new();
    let mut token = None;
    loop {
        let page = cw
            .list_metrics()
            .namespace(namespace)
            .set_next_token(token)
            .send()
            .await
            .expect("ListMetrics");
        for m in page.metrics() {
            let mut d: Vec<String> = m
                .dimensions()
                .iter()
                .map(|d| format!("{}={}", d.name().unwrap_or(""), d.value().unwrap_or("")))
                .collect();
            d.sort();
            out.insert((m.metric_name().unwrap_or("").to_owned(), d));
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return out;
        }
    }
}

/// SampleCount, Sum and Maximum of one metric over the last and next hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricStats {
    /// SampleCount.
    pub count: f64,
    /// Sum.
    pub sum: f64,
    /// Maximum.
    pub max: f64,
}

/// [`MetricStats`] of the metric with exactly `id`'s dimensions, through GetMetricData (moto
/// matches it on the exact dimension set; its GetMetricStatistics matches any superset), in one
/// two-hour window; `None` when moto holds no datum of it.
///
/// # Panics
/// When GetMetricData fails, or answers more than one window (a test helper).
#[allow(
    clippy::expect_used,
    reason = "a test helper: a failed call fails the test"
)]
pub async fn metric_stats(
    cw: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    id: &MetricId,
) -> Option<MetricStats> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let now = std::time::SystemTime::now();
    let dims: Vec<Dimension> =
        id.1.iter()
            .map(|d| {
                let (k, v) = d.split_once('=').unwrap_or((d, ""));
                Dimension::builder().name(k).value(v).build()
            })
            .collect();
    let metric = Metric::builder()
        .namespace(namespace)
        .metric_name(&id.0)
        .set_dimensions(Some(dims))
        .build();
    let query = |q: &str, stat: &str| {
        MetricDataQuery::builder()
            .id(q)
            .metric_stat(
                MetricStat::builder()
                    .metric(metric.clone())
                    .period(7200)
                    .stat(stat)
                    .build(),
            )
            .build()
    };
    let out = cw
        .get_metric_data()
        .metric_data_queries(query("n", "SampleCount"))
        .metric_data_queries(query("sum", "Sum"))
        .metric_data_queries(query("max", "Maximum"))
        .start_time(DateTime::from(now - Duration::from_secs(3600)))
        .end_time(DateTime::from(now + Duration::from_secs(3600)))
        .send()
        .await
        .expect("GetMetricData");
    let value = |q: &str| -> Option<f64> {
        let r = out
            .metric_data_results()
            .iter()
            .find(|r| r.id() == Some(q))?;
        assert!(r.values().len() <= 1, "one window: {:?}", r.values());
        r.values().first().copied()
    };
    Some(MetricStats {
        count: value("n")?,
        sum: value("sum")?,
        max: value("max")?,
    })
}

/// Why `moto_server` did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MotoError {
    /// The test venv (with `moto[server]`) could not be made.
    #[error("no Python with moto[server]: {0}")]
    Python(String),
    /// The process could not be started, or the bridge could not listen.
    #[error("cannot start moto_server: {0}")]
    Spawn(#[from] std::io::Error),
    /// The process ended before it answered.
    #[error("moto_server exited ({status}) before answering: {log}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of what it printed.
        log: String,
    },
    /// It did not answer in time.
    #[error("moto_server did not answer within {after:?}: {log}")]
    NotReady {
        /// How long it was given.
        after: Duration,
        /// The end of what it printed.
        log: String,
    },
}

/// How long a starting moto_server may take to answer: importing moto costs a few seconds, more
/// on a first run that compiles its bytecode.
const READY_WITHIN: Duration = Duration::from_secs(90);

/// Runs moto's server and ends it when its stdin closes (the test process is gone).
const LAUNCHER: &str = "\
import os, sys, threading
def watch():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
";

/// A `moto_server` child process on a free loopback port, with a [`CborBridge`] in front of it.
/// Dropping it kills the process.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    _stdin: Option<ChildStdin>,
    addr: SocketAddr,
    log: PathBuf,
    bridge: CborBridge,
}

impl MotoServer {
    /// Starts moto_server (building the test venv first if needed), waits until it answers,
    /// and starts a bridge in front of it.
    pub async fn start() -> Result<Self, MotoError> {
        let python = tokio::task::spawn_blocking(crate::python::python)
            .await
            .map_err(|e| MotoError::Python(e.to_string()))?
            .map_err(MotoError::Python)?;
        // A free port can be taken between finding it and moto binding it: try another.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::spawn(&python).await {
                Err(MotoError::Exited { log, .. }) if attempt < 3 && log.contains("in use") => {}
                done => return done,
            }
        }
    }

    /// [`start`](Self::start), or `None` with the reason on stderr, so a test can skip itself:
    /// `let Some(moto) = MotoServer::start_or_skip().await else { return };`. Under CI (`CI`
    /// set, where `.ci/run` installs the venv) a server that cannot start is a failure, not a
    /// skip.
    ///
    /// # Panics
    /// Under CI, when moto_server cannot start.
    pub async fn start_or_skip() -> Option<Self> {
        match Self::start().await {
            Ok(server) => Some(server),
            Err(e) if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
                panic!("moto_server must start under CI: {e}")
            }
            Err(e) => {
                eprintln!("skipped: {e}");
                None
            }
        }
    }

    async fn spawn(python: &std::path::Path) -> Result<Self, MotoError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("moto")));
        let out = std::fs::File::create(&log)?;
        let mut child = Command::new(python)
            .args(["-c", LAUNCHER, "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", python.display())))?;
        let stdin = child.stdin.take();
        let mut server = Self {
            child,
            _stdin: stdin,
            addr,
            log,
            bridge: CborBridge::start(addr).await?,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), MotoError> {
        let pace =
            kinesis_core::BackoffConfig::new(Duration::from_millis(20), Duration::from_millis(200));
        let addr = self.addr;
        let child = &mut self.child;
        let waited = kinesis_core::wait::until_ready("moto_server", READY_WITHIN, pace, || {
            let exited = child.try_wait();
            async move {
                match exited {
                    Ok(Some(status)) => Err(Some(status)),
                    Err(_) => Err(None),
                    Ok(None) => Ok(answers(addr).await.then_some(())),
                }
            }
        })
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(kinesis_core::wait::WaitError::Failed {
                source: Some(status),
                ..
            }) => Err(MotoError::Exited {
                status,
                log: self.log_tail(),
            }),
            Err(_) => Err(MotoError::NotReady {
                after: READY_WITHIN,
                log: self.log_tail(),
            }),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].trim().to_owned()
    }

    /// The endpoint for Rust SDK clients: the bridge's `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.bridge.endpoint()
    }

    /// Where moto itself listens (AWS JSON 1.0 and query): put a [`FaultProxy`](crate::FaultProxy)
    /// in front of it, and a [`CborBridge`] in front of that.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// moto itself as a URL (`http://127.0.0.1:PORT`), for the services the Rust SDK reaches
    /// over JSON or query (Firehose, S3, STS) and for the AWS CLI.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs the test venv's AWS CLI (`aws ARGS...`) against moto with test credentials; its
    /// stdout, or its stderr as the error.
    pub fn aws_cli(&self, args: &[&str]) -> Result<Vec<u8>, String> {
        let py = crate::python::python()?;
        let cli = py.with_file_name("aws");
        let out = Command::new(&cli)
            .arg("--endpoint-url")
            .arg(self.url())
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .map_err(|e| format!("{}: {e}", cli.display()))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "aws {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// A bucket and a DirectPut Firehose delivery stream `name` delivering into it; the
    /// bucket's name.
    pub fn delivery_stream_to_s3(&self, name: &str) -> Result<String, String> {
        let bucket = format!("{name}-bucket");
        self.aws_cli(&["s3api", "create-bucket", "--bucket", &bucket])?;
        let destination = format!(
            "BucketARN=arn:aws:s3:::{bucket},RoleARN=arn:aws:iam::123456789012:role/firehose"
        );
        self.aws_cli(&[
            "firehose",
            "create-delivery-stream",
            "--delivery-stream-name",
            name,
            "--delivery-stream-type",
            "DirectPut",
            "--extended-s3-destination-configuration",
            &destination,
        ])?;
        Ok(bucket)
    }

    /// Every line of every object in `bucket`, with how many times it is there (the objects
    /// are downloaded into a temporary directory, removed after).
    pub fn s3_lines(
        &self,
        bucket: &str,
    ) -> Result<std::collections::BTreeMap<String, usize>, String> {
        let dir = crate::TempDir::new("s3-lines");
        let target = dir.display().to_string();
        self.aws_cli(&[
            "s3",
            "cp",
            &format!("s3://{bucket}/"),
            &target,
            "--recursive",
            "--quiet",
        ])?;
        let mut lines = std::collections::BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(|e| e.to_string())? {
                let p = e.map_err(|e| e.to_string())?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
                    for l in text.lines() {
                        *lines.entry(l.to_owned()).or_insert(0) += 1;
                    }
                }
            }
        }
        Ok(lines)
    }

    /// The bridge in front of moto, with the calls it has seen.
    pub fn bridge(&self) -> &CborBridge {
        &self.bridge
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether an HTTP server answers on `addr` within a second.
async fn answers(addr: SocketAddr) -> bool {
    let probe = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 8];
        tcp.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1."))
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request the bridge translated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeCall {
    /// The operation, from the request path (`PutMetricData`).
    pub operation: String,
    /// Whether the body came gzip-compressed (`content-encoding: gzip`).
    pub gzip: bool,
    /// The body's size as it came (compressed or not).
    pub wire_bytes: usize,
    /// The CBOR body's size, uncompressed.
    pub cbor_bytes: usize,
    /// The number of `MetricData` entries, when the request has them.
    pub metric_data: Option<usize>,
    /// The status the client got.
    pub status: u16,
}

/// Speaks Smithy RPC v2 CBOR to clients and AWS JSON 1.0 to its target (moto, or a
/// [`FaultProxy`](crate::FaultProxy) in front of moto). See the [module docs](self).
#[derive(Debug)]
pub struct CborBridge {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<BridgeCall>>>,
    task: JoinHandle<()>,
}

impl CborBridge {
    /// Starts translating for `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(listener, target, Arc::clone(&calls)));
        Ok(Self { addr, calls, task })
    }

    /// `http://127.0.0.1:PORT` of the bridge.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request translated so far, in order of their answers.
    pub fn calls(&self) -> Vec<BridgeCall> {
        lock(&self.calls).clone()
    }

    /// The requests to `operation` so far.
    pub fn calls_to(&self, operation: &str) -> Vec<BridgeCall> {
        lock(&self.calls)
            .iter()
            .filter(|c| c.operation == operation)
            .cloned()
            .collect()
    }
}

impl Drop for CborBridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    calls: Arc<Mutex<Vec<BridgeCall>>>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let calls = Arc::clone(&calls);
                    conns.spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        let service = hyper::service::service_fn(move |req| {
                            let calls = Arc::clone(&calls);
                            async move { translate(req, target, &calls).await }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(message = "CBOR bridge cannot accept.", error = %e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

type BridgeBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> BridgeBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn plain(status: StatusCode, text: &str) -> Response<BridgeBody> {
    let mut resp = Response::new(full(text.to_owned()));
    *resp.status_mut() = status;
    resp
}

/// The error that makes hyper close the client's connection without an answer: what the
/// client sees when the target closed (or reset) the connection on the bridge.
fn reset(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("CBOR bridge: {why}"),
    )
}

const COPIED_REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amzn-query-mode",
    "user-agent",
    "amz-sdk-invocation-id",
    "amz-sdk-request",
];

async fn translate(
    req: Request<Incoming>,
    target: SocketAddr,
    calls: &Mutex<Vec<BridgeCall>>,
) -> Result<Response<BridgeBody>, std::io::Error> {
    // /service/{ServiceId}/operation/{Operation}
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_matches('/').split('/');
    let (Some("service"), Some(service), Some("operation"), Some(operation), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Ok(plain(StatusCode::NOT_FOUND, "not an RPC v2 CBOR path"));
    };
    let (service, operation) = (service.to_owned(), operation.to_owned());
    let (head, body) = req.into_parts();
    let wire = body
        .collect()
        .await
        .map_err(|_| reset("request body broke off"))?
        .to_bytes();
    let gzip = head
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let cbor = if gzip {
        let mut out = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&wire[..]), &mut out)
            .is_err()
        {
            return Ok(plain(StatusCode::BAD_REQUEST, "body is not gzip"));
        }
        out
    } else {
        wire.to_vec()
    };
    let json = if cbor.is_empty() {
        Value::Object(serde_json::Map::new())
    } else {
        match cbor_to_json(&mut minicbor::Decoder::new(&cbor), 0) {
            Ok(v) => v,
            Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, &format!("bad CBOR: {e}"))),
        }
    };
    let metric_data = json
        .get("MetricData")
        .and_then(Value::as_array)
        .map(Vec::len);

    let mut body = serde_json::to_vec(&json).map_err(std::io::Error::other)?;
    if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &body)?;
        body = enc.finish()?;
    }
    let mut out = Request::post("/");
    for name in COPIED_REQUEST_HEADERS {
        if let Some(v) = head.headers.get(name) {
            out = out.header(name, v);
        }
    }
    out = out
        .header(HOST, target.to_string())
        .header(CONTENT_TYPE, "application/x-amz-json-1.0")
        .header("x-amz-target", format!("{service}.{operation}"))
        .header(CONTENT_LENGTH, body.len());
    if gzip {
        out = out.header(CONTENT_ENCODING, "gzip");
    }
    let out = out
        .body(Full::new(Bytes::from(body)))
        .map_err(std::io::Error::other)?;

    let tcp = TcpStream::connect(target)
        .await
        .map_err(|_| reset("target unreachable"))?;
    let _ = tcp.set_nodelay(true);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|_| reset("target failed"))?;
    let driver = tokio::spawn(conn);
    let answer = async {
        let resp = send
            .send_request(out)
            .await
            .map_err(|_| reset("target closed the connection"))?;
        let (head, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|_| reset("target's answer broke off"))?
            .to_bytes();
        Ok::<_, std::io::Error>((head, body))
    }
    .await;
    driver.abort();
    let (answer_head, answer_body) = answer?;

    let status = answer_head.status;
    let resp = match serde_json::from_slice::<Value>(&answer_body) {
        Ok(v) => {
            let mut cbor = minicbor::Encoder::new(Vec::new());
            json_to_cbor(&v, false, &mut cbor).map_err(std::io::Error::other)?;
            let mut resp = Response::new(full(cbor.into_writer()));
            *resp.status_mut() = status;
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/cbor"));
            h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
            for name in ["x-amzn-requestid", "x-amzn-query-error"] {
                if let Some(v) = answer_head.headers.get(name) {
                    h.insert(name, v.clone());
                }
            }
            resp
        }
        // Not JSON (moto's HTML 404, an empty 200): as it came.
        Err(_) if answer_body.is_empty() && status.is_success() => {
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = status;
            resp
        }
        Err(_) => {
            let mut resp = Response::new(full(answer_body));
            *resp.status_mut() = status;
            resp
        }
    };
    lock(calls).push(BridgeCall {
        operation,
        gzip,
        wire_bytes: wire.len(),
        cbor_bytes: cbor.len(),
        metric_data,
        status: status.as_u16(),
    });
    Ok(resp)
}

type DecodeError = minicbor::decode::Error;

/// One CBOR item as JSON: a timestamp (tag 1) becomes its epoch seconds, as AWS JSON 1.0 sends
/// timestamps; a blob becomes base64, as JSON protocols send blobs.
fn cbor_to_json(d: &mut minicbor::Decoder<'_>, depth: u32) -> Result<Value, DecodeError> {
    use minicbor::data::Type as T;
    if depth > 64 {
        return Err(DecodeError::message("nested too deeply"));
    }
    Ok(match d.datatype()? {
        T::Bool => Value::Bool(d.bool()?),
        T::Null => {
            d.null()?;
            Value::Null
        }
        T::Undefined => {
            d.undefined()?;
            Value::Null
        }
        T::U8 | T::U16 | T::U32 | T::U64 => Value::from(d.u64()?),
        T::I8 | T::I16 | T::I32 | T::I64 => Value::from(d.i64()?),
        T::Int => {
            let i = i128::from(d.int()?);
            i64::try_from(i).map_or_else(|_| float(i as f64), Value::from)
        }
        T::F16 | T::F32 | T::F64 => float(d.f64()?),
        T::String | T::StringIndef => {
            let mut s = String::new();
            for chunk in d.str_iter()? {
                s.push_str(chunk?);
            }
            Value::String(s)
        }
        T::Bytes | T::BytesIndef => {
            let mut b = Vec::new();
            for chunk in d.bytes_iter()? {
                b.extend_from_slice(chunk?);
            }
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        T::Array | T::ArrayIndef => {
            let mut items = Vec::new();
            match d.array()? {
                Some(n) => {
                    for _ in 0..n {
                        items.push(cbor_to_json(d, depth + 1)?);
                    }
                }
                None => {
                    while d.datatype()? != T::Break {
                        items.push(cbor_to_json(d, depth + 1)?);
                    }
                    d.skip()?;
                }
            }
            Value::Array(items)
        }
        T::Map | T::MapIndef => {
            let mut map = serde_json::Map::new();
            let mut entry = |d: &mut minicbor::Decoder<'_>| -> Result<(), DecodeError> {
                let mut key = String::new();
                for chunk in d.str_iter()? {
                    key.push_str(chunk?);
                }
                let value = cbor_to_json(d, depth + 1)?;
                map.insert(key, value);
                Ok(())
            };
            match d.map()? {
                Some(n) => {
                    for _ in 0..n {
                        entry(d)?;
                    }
                }
                None => {
                    while d.datatype()? != T::Break {
                        entry(d)?;
                    }
                    d.skip()?;
                }
            }
            Value::Object(map)
        }
        T::Tag => {
            // Tag 1 (epoch-seconds timestamp) is the only tag RPC v2 CBOR uses: its content is
            // the JSON value.
            d.tag()?;
            cbor_to_json(d, depth + 1)?
        }
        other => return Err(DecodeError::message(format!("unexpected CBOR {other}"))),
    })
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Members that are timestamps in CloudWatch's answers (`Timestamp`, `Timestamps`,
/// `StateUpdatedTimestamp`, ...): JSON sends them as epoch seconds, CBOR as tag 1.
fn is_timestamp_member(key: &str) -> bool {
    key.ends_with("Timestamp") || key.ends_with("Timestamps") || key == "LastModified"
}

type EncodeError = minicbor::encode::Error<std::convert::Infallible>;

/// A JSON value as CBOR. Numbers keep moto's types (an integer stays one, a float is a double,
/// as the SDK's decoder wants for doubles); numbers under a timestamp member get tag 1.
fn json_to_cbor(
    v: &Value,
    timestamp: bool,
    e: &mut minicbor::Encoder<Vec<u8>>,
) -> Result<(), EncodeError> {
    match v {
        Value::Null => {
            e.null()?;
        }
        Value::Bool(b) => {
            e.bool(*b)?;
        }
        Value::Number(n) => {
            if timestamp {
                e.tag(minicbor::data::IanaTag::Timestamp)?;
                e.f64(n.as_f64().unwrap_or_default())?;
            } else if let Some(i) = n.as_i64().filter(|_| !n.is_f64()) {
                e.i64(i)?;
            } else if let Some(u) = n.as_u64().filter(|_| !n.is_f64()) {
                e.u64(u)?;
            } else {
                e.f64(n.as_f64().unwrap_or_default())?;
            }
        }
        Value::String(s) => {
            e.str(s)?;
        }
        Value::Array(items) => {
            e.array(items.len() as u64)?;
            for item in items {
                json_to_cbor(item, timestamp, e)?;
            }
        }
        Value::Object(map) => {
            e.map(map.len() as u64)?;
            for (k, v) in map {
                e.str(k)?;
                json_to_cbor(v, is_timestamp_member(k), e)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_and_json_translate_both_ways() {
        let mut e = minicbor::Encoder::new(Vec::new());
        e.begin_map().unwrap();
        e.str("Namespace").unwrap().str("ns").unwrap();
        e.str("MetricData").unwrap().array(1).unwrap();
        e.map(3).unwrap();
        e.str("MetricName").unwrap().str("m").unwrap();
        e.str("Timestamp").unwrap();
        e.tag(minicbor::data::IanaTag::Timestamp)
            .unwrap()
            .f64(1.5)
            .unwrap();
        e.str("StatisticValues").unwrap().map(1).unwrap();
        e.str("SampleCount").unwrap().f64(3.0).unwrap();
        e.end().unwrap();
        let bytes = e.into_writer();
        let json = cbor_to_json(&mut minicbor::Decoder::new(&bytes), 0).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Namespace": "ns", "MetricData": [
                {"MetricName": "m", "Timestamp": 1.5, "StatisticValues": {"SampleCount": 3.0}}
            ]})
        );

        let answer: Value = serde_json::from_str(
            r#"{"Datapoints": [{"Timestamp": 1796147173.492, "Sum": 12.0}], "N": 2}"#,
        )
        .unwrap();
        let mut e = minicbor::Encoder::new(Vec::new());
        json_to_cbor(&answer, false, &mut e).unwrap();
        let bytes = e.into_writer();
        let mut d = minicbor::Decoder::new(&bytes);
        assert_eq!(d.map().unwrap(), Some(2));
        assert_eq!(d.str().unwrap(), "Datapoints");
        assert_eq!(d.array().unwrap(), Some(1));
        assert_eq!(d.map().unwrap(), Some(2));
        // Keys in serde_json's order, which depends on its `preserve_order` feature (another
        // crate of the workspace may turn it on): read them in whatever order they come.
        let (mut sum, mut timestamp) = (None, None);
        for _ in 0..2 {
            match d.str().unwrap() {
                "Sum" => sum = Some(d.f64().unwrap()),
                "Timestamp" => {
                    assert_eq!(
                        d.tag().unwrap(),
                        minicbor::data::Tag::from(minicbor::data::IanaTag::Timestamp)
                    );
                    timestamp = Some(d.f64().unwrap());
                }
                other => panic!("unexpected key {other}"),
            }
        }
        assert_eq!((sum, timestamp), (Some(12.0), Some(1796147173.492)));
        assert_eq!(d.str().unwrap(), "N");
        assert_eq!(d.i64().unwrap(), 2);
    }
}
