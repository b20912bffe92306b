//! An HTTP-aware fault-injection proxy: put it in front of any plain-HTTP endpoint (the embedded
//! emulators, kinesis-mock, dynalite) and decide, call by call, whether a request goes through,
//! fails with an AWS error, waits, hangs, or loses its connection.
//!
//! ```text
//!   SDK client ──HTTP/1.1──► FaultProxy 127.0.0.1:PORT ──HTTP/1.1──► target (emulator)
//!                              │ operation = X-Amz-Target after its last '.'
//!                              │ rules in order: the first that matches, has times left
//!                              │ and whose seeded draw hits decides
//!                              ▼
//!   no fault            forward; the response streams back frame by frame
//!   Error               AWS JSON 1.1 error; never forwarded
//!   Latency(d)          wait d, then forward
//!   Stall               hold until release_stalled() or drop; never forwarded
//!   ResetBeforeForward  close the client connection; never forwarded
//!   ResetAfterForward   forward, wait for the response head, close without answering
//!   ResetMidResponse    forward, send the head and `after_bytes` of body, close
//!   PartialFailure      PutRecords: fail a fraction of the entries, forward the rest, merge
//!   ShortAnswer         PutRecords: forward it whole, answer with only its first `keep` entries
//! ```
//!
//! Each client connection gets its own upstream connection (both kept alive), so a reset closes
//! both, as a broken network would. Bodies are never buffered whole: a
//! SubscribeToShard event stream flows through with the client's backpressure. Every draw comes
//! from one seeded generator, so the same seed and the same request order inject the same faults.
//!
//! What the Rust SDK (aws-smithy-http-client 1.5, hyper 1) reports, with its retries disabled;
//! with them on, it retries all of these as transient, so after `ResetAfterForward` a call can
//! take effect twice:
//!
//! - `ResetBeforeForward`, `ResetAfterForward`, and a `Stall` on release:
//!   `SdkError::DispatchFailure`, connector error kind `Other(Some(TransientError))`,
//!   "connection closed before message completed" (`hyper::Error(IncompleteMessage)`).
//! - `ResetMidResponse` on a plain call (GetRecords): `SdkError::ResponseError`, "error reading a
//!   body from connection: unexpected EOF during chunk size line".
//! - `ResetMidResponse` on SubscribeToShard: `send()` succeeds, then `event_stream.recv()` fails
//!   with `SdkError::DispatchFailure`, connector error kind `Io`, the same EOF message.
//! - `Stall` under an operation timeout: `SdkError::TimeoutError`.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use kinesis_testkit::{Fault, FaultProxy, Rule, TestEnv, kinesis_for};
//! let env = TestEnv::start().await;
//! let proxy = FaultProxy::start(env.kinesis_addr().expect("plain HTTP backend"), 7)?;
//! proxy.add_rule(Rule::new(Some("PutRecords"), Fault::throttle()).probability(0.3));
//! proxy.add_rule(Rule::all(Fault::ResetAfterForward).probability(0.05));
//! let kinesis = kinesis_for(&env.sdk, &proxy.endpoint());
//! // ... run a producer or consumer with `kinesis` ...
//! println!("{}", proxy.stats());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the proxy does to one request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this AWS JSON 1.1 error without forwarding: the status,
    /// `content-type: application/x-amz-json-1.1`, `x-amzn-ErrorType: <code>` and
    /// `{"__type":"<code>","message":"<message>"}`, which both SDKs parse.
    Error {
        /// HTTP status.
        status: u16,
        /// AWS error code, as `ProvideErrorMetadata::code()` returns it.
        code: String,
        /// Error message.
        message: String,
    },
    /// Forward after this delay.
    Latency(Duration),
    /// Never answer: the request is held, not forwarded, until [`FaultProxy::release_stalled`]
    /// (which then closes its connection) or until the proxy is dropped. A client that gives up
    /// does not free it earlier.
    Stall,
    /// Close the client connection without forwarding: the request never reached the service.
    ResetBeforeForward,
    /// Forward, wait until the service has answered (the response head), then close the client
    /// connection without any response: the call took effect, the client cannot know it.
    ResetAfterForward,
    /// Forward, send the response head and the first `after_bytes` bytes of body, then close.
    /// The response is re-framed as chunked, so even a body shorter than `after_bytes` ends
    /// without its final chunk and the client sees it break off. For an event stream this cuts
    /// the subscription in the middle.
    ResetMidResponse {
        /// Body bytes delivered before the close.
        after_bytes: usize,
    },
    /// PutRecords only: fail each entry with chance `fraction` (drawn in order from the
    /// proxy's generator) with `ErrorCode` `code`, and forward only the others (as one
    /// PutRecords on a connection of its own), so the failed entries are really not stored;
    /// the answer is the service's with the failed entries merged back in their places and
    /// `FailedRecordCount` counting both, as Kinesis answers a partial failure. Requests to
    /// other operations pass through.
    PartialFailure {
        /// Chance that an entry fails, 0 to 1.
        fraction: f64,
        /// Its `ErrorCode`, e.g. `ProvisionedThroughputExceededException`, `InternalFailure`.
        code: String,
    },
    /// PutRecords only: forward the request whole (every entry reaches the service), then
    /// answer with only the service's first `keep` entries (`FailedRecordCount` counting the
    /// failures among them): an answer the client cannot match to all its records, although
    /// all of them may be stored. Requests to other operations, and answers that are not a
    /// readable PutRecords result, pass through unchanged.
    ShortAnswer {
        /// Entries left in the answer.
        keep: usize,
    },
}

impl Fault {
    /// The AWS error `code` with the status the services use for it: 500 for
    /// `InternalFailure` / `InternalServerError`, 503 for `ServiceUnavailable`, 400 for the rest
    /// (`ProvisionedThroughputExceededException`, `LimitExceededException`,
    /// `ThrottlingException`, `ExpiredIteratorException`, `ResourceInUseException`,
    /// `ResourceNotFoundException`, `ValidationException`, `ConditionalCheckFailedException`, ...).
    pub fn error(code: impl Into<String>) -> Self {
        let code = code.into();
        let status = match code.as_str() {
            "InternalFailure" | "InternalServerError" | "InternalError" => 500,
            "ServiceUnavailable" | "ServiceUnavailableException" => 503,
            _ => 400,
        };
        Self::Error {
            status,
            message: format!("{code} injected by FaultProxy"),
            code,
        }
    }

    /// `ProvisionedThroughputExceededException` (400): the throttle of Kinesis and of DynamoDB.
    pub fn throttle() -> Self {
        Self::error("ProvisionedThroughputExceededException")
    }

    /// `InternalFailure` (500).
    pub fn internal() -> Self {
        Self::error("InternalFailure")
    }
}

/// When to inject a fault. Built with [`Rule::new`] or [`Rule::all`], then
/// [`probability`](Rule::probability) and [`times`](Rule::times).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The operation it applies to (`PutRecords`, `UpdateItem`, `""` for requests without
    /// `X-Amz-Target`); `None` for every operation.
    pub operation: Option<String>,
    /// Chance of injecting, 0 to 1 (default 1). Only values strictly between 0 and 1 draw from
    /// the generator, so certain rules do not shift the sequence of the others.
    pub probability: f64,
    /// The fault.
    pub fault: Fault,
    /// How many more times to inject (`None`: no limit); the proxy counts it down.
    pub times: Option<u64>,
    /// Only requests whose body contains these bytes (e.g. a stream's name), see
    /// [`Rule::body_contains`].
    pub body_contains: Option<String>,
}

impl Rule {
    /// `fault` on every request to `operation` (`None`: every operation).
    pub fn new(operation: Option<&str>, fault: Fault) -> Self {
        Self {
            operation: operation.map(str::to_owned),
            probability: 1.0,
            fault,
            times: None,
            body_contains: None,
        }
    }

    /// `fault` on every request.
    pub fn all(fault: Fault) -> Self {
        Self::new(None, fault)
    }

    /// Injects with chance `p` (clamped to 0..=1; NaN is 0).
    #[must_use]
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self
    }

    /// Stops after injecting `n` times.
    #[must_use]
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Applies only to requests whose body contains `text` (a stream's name: one of two
    /// flows failing). While such a rule is set, every request is read whole before it is
    /// forwarded (on a connection of its own); such rules support [`Fault::Error`],
    /// [`Fault::Latency`], [`Fault::Stall`] and the resets before and after forwarding.
    #[must_use]
    pub fn body_contains(mut self, text: &str) -> Self {
        self.body_contains = Some(text.to_owned());
        self
    }
}

/// Requests seen and faults injected for one operation (or in total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpStats {
    /// Requests that reached the proxy, faulted or not.
    pub requests: u64,
    /// [`Fault::Error`] answers.
    pub errors: u64,
    /// [`Fault::Latency`] delays.
    pub latency: u64,
    /// [`Fault::Stall`] holds.
    pub stalls: u64,
    /// [`Fault::ResetBeforeForward`] closes.
    pub resets_before_forward: u64,
    /// [`Fault::ResetAfterForward`] closes.
    pub resets_after_forward: u64,
    /// [`Fault::ResetMidResponse`] cuts.
    pub resets_mid_response: u64,
    /// [`Fault::PartialFailure`] requests (with at least one entry drawn, or not).
    pub partial_failures: u64,
    /// [`Fault::ShortAnswer`] answers.
    pub short_answers: u64,
}

const COLUMNS: [&str; 10] = [
    "requests",
    "injected",
    "error",
    "latency",
    "stall",
    "reset-before",
    "reset-after",
    "reset-mid",
    "partial",
    "short",
];

impl OpStats {
    /// Faults injected, of every kind.
    pub fn injected(&self) -> u64 {
        self.kinds().iter().sum()
    }

    fn kinds(&self) -> [u64; 8] {
        [
            self.errors,
            self.latency,
            self.stalls,
            self.resets_before_forward,
            self.resets_after_forward,
            self.resets_mid_response,
            self.partial_failures,
            self.short_answers,
        ]
    }

    fn kinds_mut(&mut self) -> [&mut u64; 8] {
        [
            &mut self.errors,
            &mut self.latency,
            &mut self.stalls,
            &mut self.resets_before_forward,
            &mut self.resets_after_forward,
            &mut self.resets_mid_response,
            &mut self.partial_failures,
            &mut self.short_answers,
        ]
    }

    fn count(&mut self, fault: &Fault) {
        let kind = match fault {
            Fault::Error { .. } => 0,
            Fault::Latency(_) => 1,
            Fault::Stall => 2,
            Fault::ResetBeforeForward => 3,
            Fault::ResetAfterForward => 4,
            Fault::ResetMidResponse { .. } => 5,
            Fault::PartialFailure { .. } => 6,
            Fault::ShortAnswer { .. } => 7,
        };
        *self.kinds_mut()[kind] += 1;
    }
}

/// What a proxy has seen, per operation. `Display` prints a table with a total row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Per operation (`""`: requests without `X-Amz-Target`).
    pub operations: BTreeMap<String, OpStats>,
}

impl FaultStats {
    /// The counts for `operation` (zero when it was never seen).
    pub fn op(&self, operation: &str) -> OpStats {
        self.operations.get(operation).copied().unwrap_or_default()
    }

    /// The counts over every operation.
    pub fn total(&self) -> OpStats {
        let mut total = OpStats::default();
        for s in self.operations.values() {
            total.requests += s.requests;
            for (sum, n) in total.kinds_mut().into_iter().zip(s.kinds()) {
                *sum += n;
            }
        }
        total
    }
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |op: &str| (if op.is_empty() { "(none)" } else { op }).to_owned();
        let width = self.operations.keys().map(|op| name(op).len());
        let width = width.chain(["operation".len()]).max().unwrap_or(0);
        write!(f, "{:<width$}", "operation")?;
        for c in COLUMNS {
            write!(f, "  {c}")?;
        }
        writeln!(f)?;
        let rows = self.operations.iter().map(|(op, s)| (name(op), *s));
        for (op, s) in rows.chain([("total".to_owned(), self.total())]) {
            write!(f, "{op:<width$}")?;
            let values = [s.requests, s.injected()].into_iter().chain(s.kinds());
            for (c, v) in COLUMNS.iter().zip(values) {
                write!(f, "  {v:>w$}", w = c.len())?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The proxy: listens on `127.0.0.1:PORT`, forwards to its target, injects faults by its rules.
/// Dropping it aborts its tasks (the accept loop, which owns every connection task).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    /// Bumped by `release_stalled`; stalled requests wait for a change.
    release: watch::Sender<u64>,
    /// Operations forwarded one at a time ([`FaultProxy::one_at_a_time`]), and their turn.
    serialized: Mutex<Vec<String>>,
    turn: tokio::sync::Mutex<()>,
    /// Requests by the access key id that signed them (SigV4 `Credential=AKID/...`).
    signers: Mutex<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug)]
struct State {
    rules: Vec<Rule>,
    rng: fastrand::Rng,
    stats: FaultStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:0` (a free port) to `target`, with no rules and a generator
    /// seeded with `seed`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn start(target: SocketAddr, seed: u64) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                rules: Vec::new(),
                rng: fastrand::Rng::with_seed(seed),
                stats: FaultStats::default(),
            }),
            release: watch::Sender::new(0),
            serialized: Mutex::new(Vec::new()),
            turn: tokio::sync::Mutex::new(()),
            signers: Mutex::new(std::collections::BTreeMap::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the rules; the next request is judged by the new ones.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        lock(&self.shared.state).rules = rules;
    }

    /// Appends a rule (evaluated after the existing ones).
    pub fn add_rule(&self, rule: Rule) {
        lock(&self.shared.state).rules.push(rule);
    }

    /// Removes every rule: requests pass through. Stalled requests stay held (see
    /// [`release_stalled`](Self::release_stalled)).
    pub fn clear(&self) {
        lock(&self.shared.state).rules.clear();
    }

    /// The rules as they stand (with `times` counted down).
    pub fn rules(&self) -> Vec<Rule> {
        lock(&self.shared.state).rules.clone()
    }

    /// Forwards `operation` one request at a time (each waits until the previous one has its
    /// answer), faults applied as before. For an emulator that serves concurrent writes in a
    /// way the real service does not: ferrokinesis 0.7 gives a PutRecords call its sequence
    /// numbers before it stores the records, so a read between two concurrent calls to one
    /// shard can return the later call's record and move past the earlier one's for good.
    pub fn one_at_a_time(&self, operation: &str) {
        lock(&self.shared.serialized).push(operation.to_owned());
    }

    /// Ends every request held by [`Fault::Stall`] so far: each one's connection closes, and
    /// the request is never forwarded.
    pub fn release_stalled(&self) {
        self.shared.release.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Requests seen and faults injected so far.
    pub fn stats(&self) -> FaultStats {
        lock(&self.shared.state).stats.clone()
    }

    /// How many requests each access key id signed (from SigV4's `Credential=`): which
    /// identity a client really used.
    pub fn signers(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.shared.signers).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Shared {
    /// Counts the request and picks its fault.
    fn decide(&self, op: &str, body: Option<&[u8]>) -> Option<Fault> {
        let mut state = lock(&self.state);
        let State { rules, rng, stats } = &mut *state;
        let seen = stats.operations.entry(op.to_owned()).or_default();
        seen.requests += 1;
        for rule in rules.iter_mut() {
            if rule.operation.as_deref().is_some_and(|o| o != op) || rule.times == Some(0) {
                continue;
            }
            if let Some(text) = &rule.body_contains
                && body.is_none_or(|b| memchr::memmem::find(b, text.as_bytes()).is_none())
            {
                continue;
            }
            let p = rule.probability;
            let hit = p >= 1.0 || (p > 0.0 && rng.f64() < p);
            if hit {
                if let Some(n) = &mut rule.times {
                    *n -= 1;
                }
                seen.count(&rule.fault);
                return Some(rule.fault.clone());
            }
        }
        None
    }
}

/// Accepts connections; owns their tasks, so aborting it aborts them all.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        // Both branches are cancel-safe.
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(serve(tcp, Arc::clone(&shared)));
                }
                Err(e) => {
                    tracing::warn!(message = "Fault proxy cannot accept.", error = %e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One client connection and the upstream connection that serves it.
#[derive(Debug)]
struct Conn {
    shared: Arc<Shared>,
    upstream: Mutex<Option<Upstream>>,
    /// Set by a cut body: the connection fails at its next flush.
    cut: Arc<AtomicBool>,
}

async fn serve(tcp: TcpStream, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let cut = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(CutIo {
        inner: tcp,
        cut: Arc::clone(&cut),
    });
    let conn = Arc::new(Conn {
        shared,
        upstream: Mutex::new(None),
        cut,
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { conn.handle(req).await }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        tracing::debug!(message = "Fault proxy closed a connection.", error = %e);
    }
}

/// The error that makes hyper close the client connection without a response.
fn reset(why: &str) -> io::Error {
    let msg = format!("fault proxy closed the connection: {why}");
    io::Error::new(io::ErrorKind::ConnectionAborted, msg)
}

impl Conn {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, io::Error> {
        if let Some(akid) = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').next())
        {
            *lock(&self.shared.signers)
                .entry(akid.to_owned())
                .or_insert(0) += 1;
        }
        let op = req
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .map_or("", |t| t.rsplit_once('.').map_or(t, |(_, op)| op))
            .to_owned();
        // Subscribed before deciding, so a release right after the decision is not missed.
        let mut released = self.shared.release.subscribe();
        let by_body = lock(&self.shared.state)
            .rules
            .iter()
            .any(|r| r.body_contains.is_some());
        if by_body {
            return self.handle_whole(req, &op, released).await;
        }
        let fault = self.shared.decide(&op, None);
        let forwards = !matches!(
            fault,
            Some(Fault::Error { .. } | Fault::Stall | Fault::ResetBeforeForward)
        );
        let _turn = if forwards && lock(&self.shared.serialized).contains(&op) {
            Some(self.shared.turn.lock().await)
        } else {
            None
        };
        let Some(fault) = fault else {
            return Ok(self.forward(req).await?.map(boxed));
        };
        match fault {
            Fault::Error {
                status,
                code,
                message,
            } => {
                // Read the request to its end, so the client can reuse the connection.
                let _ = req.into_body().collect().await;
                Ok(error_response(status, &code, &message))
            }
            Fault::Latency(delay) => {
                tokio::time::sleep(delay).await;
                Ok(self.forward(req).await?.map(boxed))
            }
            Fault::Stall => {
                let _ = released.changed().await;
                Err(reset("stalled request released"))
            }
            Fault::ResetBeforeForward => Err(reset("reset before forwarding")),
            Fault::ResetAfterForward => {
                drop(self.forward(req).await?);
                Err(reset("reset after forwarding"))
            }
            Fault::ResetMidResponse { after_bytes } => {
                let (mut head, body) = self.forward(req).await?.into_parts();
                head.headers.remove(CONTENT_LENGTH);
                let body = CutBody {
                    inner: body,
                    left: after_bytes,
                    cut: Arc::clone(&self.cut),
                };
                Ok(Response::from_parts(head, body.boxed_unsync()))
            }
            Fault::PartialFailure { fraction, code } if op == "PutRecords" => {
                partial::put_records(&self.shared, req, fraction, &code).await
            }
            Fault::PartialFailure { .. } => Ok(self.forward(req).await?.map(boxed)),
            Fault::ShortAnswer { keep } if op == "PutRecords" => {
                let (head, body) = req.into_parts();
                let body = partial::whole(body, "request body broke off").await?;
                partial::short_answer(&self.shared, head, body, keep).await
            }
            Fault::ShortAnswer { .. } => Ok(self.forward(req).await?.map(boxed)),
        }
    }

    /// A request read whole before deciding (rules that look at bodies).
    async fn handle_whole(
        &self,
        req: Request<Incoming>,
        op: &str,
        mut released: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Response<ProxyBody>, io::Error> {
        let (head, body) = req.into_parts();
        let body = partial::whole(body, "request broke off").await?;
        match self.shared.decide(op, Some(&body)) {
            Some(Fault::Error {
                status,
                code,
                message,
            }) => Ok(error_response(status, &code, &message)),
            Some(Fault::Stall) => {
                let _ = released.changed().await;
                Err(reset("stalled request released"))
            }
            Some(Fault::ResetBeforeForward) => Err(reset("reset before forwarding")),
            Some(Fault::ResetAfterForward) => {
                drop(partial::forward(&self.shared, head, body).await?);
                Err(reset("reset after forwarding"))
            }
            Some(Fault::Latency(delay)) => {
                tokio::time::sleep(delay).await;
                partial::forward(&self.shared, head, body).await
            }
            Some(Fault::ShortAnswer { keep }) if op == "PutRecords" => {
                partial::short_answer(&self.shared, head, body, keep).await
            }
            _ => partial::forward(&self.shared, head, body).await,
        }
    }

    /// Sends `req` on this connection's upstream connection, (re)connecting when it is closed.
    async fn forward(&self, mut req: Request<Incoming>) -> Result<Response<Incoming>, io::Error> {
        for _ in 0..2 {
            let idle = lock(&self.upstream).take();
            let mut up = match idle {
                Some(up) if !up.send.is_closed() => up,
                _ => Upstream::connect(self.shared.target).await.map_err(|e| {
                    tracing::warn!(message = "Fault proxy cannot reach its target.", error = %e);
                    reset("target unreachable")
                })?,
            };
            if up.send.ready().await.is_err() {
                continue;
            }
            match up.send.try_send_request(req).await {
                Ok(resp) => {
                    *lock(&self.upstream) = Some(up);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection had closed; send on a new one.
                    Some(unsent) => req = unsent,
                    None => {
                        let error = e.into_error();
                        tracing::warn!(message = "Fault proxy's target failed.", %error);
                        return Err(reset("target failed"));
                    }
                },
            }
        }
        Err(reset("target keeps closing connections"))
    }
}

/// A client connection to the target; dropping it aborts the task that drives it.
#[derive(Debug)]
struct Upstream {
    send: SendRequest<Incoming>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn connect(target: SocketAddr) -> Result<Self, BoxError> {
        let tcp = TcpStream::connect(target).await?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(message = "Fault proxy's upstream connection failed.", error = %e);
            }
        });
        Ok(Self { send, task })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn boxed(body: Incoming) -> ProxyBody {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
}

fn error_response(status: u16, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    let body = Full::new(Bytes::from(body)).map_err(|never| match never {});
    let mut resp = Response::new(body.boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = resp.headers_mut();
    let json = HeaderValue::from_static("application/x-amz-json-1.1");
    headers.insert(CONTENT_TYPE, json);
    if let Ok(v) = HeaderValue::from_str(code) {
        headers.insert(HeaderName::from_static("x-amzn-errortype"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), v);
    }
    resp
}

/// A response body that stops after `left` bytes and never ends: it then sets `cut` and stays
/// pending, hyper flushes what it holds, and [`CutIo`] fails that flush, closing the connection
/// right after the last byte went out.
#[derive(Debug)]
struct CutBody {
    inner: Incoming,
    left: usize,
    cut: Arc<AtomicBool>,
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.left == 0 || this.cut.load(Ordering::Relaxed) {
            this.cut.store(true, Ordering::Relaxed);
            return Poll::Pending;
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    data.truncate(this.left);
                    this.left -= data.len();
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(trailers) => Poll::Ready(Some(Ok(trailers))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            // Ended before the cut: withhold the end.
            Poll::Ready(None) => {
                this.cut.store(true, Ordering::Relaxed);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The client socket; once `cut` is set, flushing fails (after hyper has written everything it
/// buffered), which makes hyper drop the connection.
#[derive(Debug)]
struct CutIo {
    inner: TcpStream,
    cut: Arc<AtomicBool>,
}

impl AsyncRead for CutIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut.load(Ordering::Relaxed) {
            let e = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "fault: reset mid-response",
            );
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// [`Fault::PartialFailure`] on a PutRecords request: the chosen entries are failed with `code`
/// and never forwarded, the others are forwarded (as one PutRecords on a connection of its own),
/// and the answer is the service's, merged back into the original order with the failed
/// entries in place and `FailedRecordCount` counting both. Anything that is not a PutRecords
/// JSON body is forwarded unchanged.
mod partial {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper::body::Incoming;
    use hyper::header::{CONTENT_LENGTH, HeaderValue};
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use serde_json::{Value, json};
    use tokio::net::TcpStream;

    use super::{ProxyBody, Shared, lock, reset};

    pub(super) async fn put_records(
        shared: &Shared,
        req: Request<Incoming>,
        fraction: f64,
        code: &str,
    ) -> Result<Response<ProxyBody>, std::io::Error> {
        let (head, body) = req.into_parts();
        let body = whole(body, "request body broke off").await?;
        let Ok(mut request) = serde_json::from_slice::<Value>(&body) else {
            return forward(shared, head, body).await;
        };
        let Some(records) = request.get_mut("Records").and_then(Value::as_array_mut) else {
            return forward(shared, head, body).await;
        };
        // One draw per entry, in order, from the proxy's seeded generator.
        let failed: Vec<bool> = {
            let mut state = lock(&shared.state);
            records.iter().map(|_| state.rng.f64() < fraction).collect()
        };
        let injected = failed.iter().filter(|f| **f).count();
        let kept: Vec<Value> = std::mem::take(records)
            .into_iter()
            .zip(&failed)
            .filter(|(_, f)| !**f)
            .map(|(r, _)| r)
            .collect();
        let mut answered: Vec<Value> = Vec::new();
        let mut service_failed = 0;
        let mut encryption = None;
        if !kept.is_empty() {
            *records = kept;
            let body = Bytes::from(request.to_string());
            let resp = forward(shared, head.clone(), body).await?;
            let (resp_head, resp_body) = resp.into_parts();
            let resp_body = whole(resp_body, "response body broke off").await?;
            let parsed = serde_json::from_slice::<Value>(&resp_body).ok();
            let entries = parsed
                .as_ref()
                .and_then(|v| v.get("Records"))
                .and_then(Value::as_array);
            match (resp_head.status, entries) {
                (StatusCode::OK, Some(entries)) => {
                    answered.clone_from(entries);
                    service_failed = parsed
                        .as_ref()
                        .and_then(|v| v.get("FailedRecordCount"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    encryption = parsed
                        .as_ref()
                        .and_then(|v| v.get("EncryptionType"))
                        .cloned();
                }
                // An error (or an answer we cannot read): the client sees it as it is.
                _ => {
                    let body = Full::new(resp_body).map_err(|never| match never {});
                    return Ok(Response::from_parts(resp_head, body.boxed_unsync()));
                }
            }
        }
        let mut answered = answered.into_iter();
        let merged: Vec<Value> = failed
            .iter()
            .map(|&f| {
                if f {
                    json!({
                        "ErrorCode": code,
                        "ErrorMessage": format!("{code} injected by FaultProxy (partial failure)"),
                    })
                } else {
                    answered.next().unwrap_or_else(
                        || json!({"ErrorCode": "InternalFailure", "ErrorMessage": "missing entry"}),
                    )
                }
            })
            .collect();
        let mut out = json!({
            "FailedRecordCount": injected as u64 + service_failed,
            "Records": merged,
        });
        if let Some(e) = encryption {
            out["EncryptionType"] = e;
        }
        let body = Full::new(Bytes::from(out.to_string())).map_err(|never| match never {});
        let mut resp = Response::new(body.boxed_unsync());
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        Ok(resp)
    }

    /// [`super::Fault::ShortAnswer`]: the request (read whole) forwarded, the service's answer
    /// cut to its first `keep` entries.
    pub(super) async fn short_answer(
        shared: &Shared,
        head: hyper::http::request::Parts,
        body: Bytes,
        keep: usize,
    ) -> Result<Response<ProxyBody>, std::io::Error> {
        let (mut resp_head, resp_body) = forward(shared, head, body).await?.into_parts();
        let resp_body = whole(resp_body, "response body broke off").await?;
        let mut answer = serde_json::from_slice::<Value>(&resp_body)
            .ok()
            .filter(|_| resp_head.status == StatusCode::OK);
        let body = match answer
            .as_mut()
            .and_then(|v| v.get_mut("Records"))
            .and_then(Value::as_array_mut)
        {
            Some(entries) => {
                entries.truncate(keep);
                let failed = entries
                    .iter()
                    .filter(|e| e.get("ErrorCode").is_some_and(|c| !c.is_null()))
                    .count();
                let mut v = answer.unwrap_or_default();
                v["FailedRecordCount"] = json!(failed as u64);
                Bytes::from(v.to_string())
            }
            None => resp_body,
        };
        resp_head
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let body = Full::new(body).map_err(|never| match never {});
        Ok(Response::from_parts(resp_head, body.boxed_unsync()))
    }

    /// A body read to its end; `broke` names the reset when it breaks off.
    pub(super) async fn whole<B: hyper::body::Body>(
        body: B,
        broke: &'static str,
    ) -> Result<Bytes, std::io::Error> {
        Ok(body.collect().await.map_err(|_| reset(broke))?.to_bytes())
    }

    /// Sends `body` with `head` to the target on a connection of its own, and waits for the
    /// whole answer.
    pub(super) async fn forward(
        shared: &Shared,
        mut head: hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<ProxyBody>, std::io::Error> {
        head.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let req = Request::from_parts(head, Full::new(body));
        let tcp = TcpStream::connect(shared.target)
            .await
            .map_err(|_| reset("target unreachable"))?;
        let _ = tcp.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| reset("target failed"))?;
        let driver = tokio::spawn(conn);
        let resp = send
            .send_request(req)
            .await
            .map_err(|_| reset("target failed"));
        let resp = match resp {
            Ok(r) => {
                let (head, body) = r.into_parts();
                let body = whole(body, "target's answer broke off").await?;
                Ok(Response::from_parts(
                    head,
                    Full::new(body)
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                ))
            }
            Err(e) => Err(e),
        };
        driver.abort();
        resp
    }
}

#[cfg(test)]
mod partial_tests {
    use std::collections::HashMap;

    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;

    use super::*;
    use crate::{TestEnv, kinesis_for, read_stream};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rule_on_a_body_fails_one_stream_and_spares_the_other() {
        let env = TestEnv::start().await;
        let healthy = env.create_stream(1).await;
        let failing = env.create_stream(1).await;
        let proxy = FaultProxy::start(env.kinesis_addr().unwrap(), 12).unwrap();
        proxy.add_rule(
            Rule::new(Some("PutRecord"), Fault::error("AccessDeniedException"))
                .body_contains(&format!("\"{failing}\"")),
        );
        let client = kinesis_for(&env.sdk, &proxy.endpoint());
        let put = |stream: String| {
            let client = client.clone();
            async move {
                client
                    .put_record()
                    .stream_name(stream)
                    .partition_key("k")
                    .data(Blob::new("x"))
                    .send()
                    .await
            }
        };
        for _ in 0..3 {
            put(healthy.clone()).await.unwrap();
            let e = put(failing.clone()).await.unwrap_err();
            assert!(format!("{e:?}").contains("AccessDenied"), "{e:?}");
        }
        assert_eq!(
            read_stream(&env.kinesis, &healthy)
                .await
                .unwrap()
                .records
                .len(),
            3
        );
        let stats = proxy.stats();
        assert_eq!(
            (stats.op("PutRecord").requests, stats.op("PutRecord").errors),
            (6, 3)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partial_failure_stores_only_the_entries_it_answers_for() {
        let env = TestEnv::start().await;
        let stream = env.create_stream(2).await;
        let proxy = FaultProxy::start(env.kinesis_addr().unwrap(), 11).unwrap();
        proxy.add_rule(Rule::new(
            Some("PutRecords"),
            Fault::PartialFailure {
                fraction: 0.4,
                code: "InternalFailure".into(),
            },
        ));
        let client = kinesis_for(&env.sdk, &proxy.endpoint());
        let mut stored = HashMap::new();
        let mut failed = 0;
        for call in 0..4 {
            let entries = (0..100).map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{i}"))
                    .data(Blob::new(format!("{call}-{i}")))
                    .build()
                    .unwrap()
            });
            let out = client
                .put_records()
                .stream_name(&stream)
                .set_records(Some(entries.collect()))
                .send()
                .await
                .unwrap();
            assert_eq!(out.records().len(), 100, "one answer per entry, in order");
            let n_failed = out
                .records()
                .iter()
                .filter(|r| r.error_code().is_some())
                .count();
            assert_eq!(out.failed_record_count(), i32::try_from(n_failed).ok());
            failed += n_failed;
            for (i, r) in out.records().iter().enumerate() {
                match (r.error_code(), r.sequence_number()) {
                    (Some(code), None) => assert_eq!(code, "InternalFailure"),
                    (None, Some(seq)) => {
                        stored.insert(format!("{call}-{i}"), seq.to_owned());
                    }
                    other => panic!("entry {i}: {other:?}"),
                }
            }
        }
        assert!(
            (80..240).contains(&failed),
            "about 40 % of 400 failed: {failed}"
        );
        assert_eq!(proxy.stats().op("PutRecords").partial_failures, 4);
        // The stream holds exactly the entries answered with a sequence number, where it says.
        let read = read_stream(&env.kinesis, &stream).await.unwrap().records;
        let got: HashMap<String, String> = read
            .iter()
            .map(|r| {
                let data = String::from_utf8(r.data.to_vec()).unwrap();
                (data, r.sequence_number.to_string())
            })
            .collect();
        assert_eq!(read.len(), 400 - failed);
        assert_eq!(got, stored);
    }
}
