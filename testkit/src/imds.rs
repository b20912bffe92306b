//! A small EC2 instance metadata service (IMDSv2) on a loopback port, for the SDK's IMDS
//! client: point a process at it with `AWS_EC2_METADATA_SERVICE_ENDPOINT=`[`Imds::endpoint`].
//!
//! ```text
//!   PUT /latest/api/token            (X-aws-ec2-metadata-token-ttl-seconds: 1..=21600)
//!     ─► a token
//!   GET /latest/meta-data/<path>     (X-aws-ec2-metadata-token: that token)
//!     ─► the value at <path> in the map; a "directory" lists its children, one a line
//!   GET /latest/dynamic/instance-identity/document
//!     ─► the identity document (JSON) built from the map
//!   anything else, or without a valid token ─► 404 / 401, as IMDS answers
//! ```
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! let imds = kinesis_testkit::imds::Imds::start(kinesis_testkit::imds::Metadata::ec2("i-0123456789abcdef0")).await?;
//! let mut agent = std::process::Command::new("kinesis-agent");
//! agent.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

/// What the service serves: meta-data paths (under `/latest/meta-data/`) and the identity
/// document's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `path` (e.g. `instance-id`, `placement/availability-zone`) → value.
    pub meta_data: BTreeMap<String, String>,
    /// The instance-identity document's fields (`instanceId`, `region`, `accountId`, ...),
    /// served as one JSON object of strings.
    pub identity: BTreeMap<String, String>,
}

impl Metadata {
    /// An instance `instance_id` in us-east-1a, with the usual paths and identity document.
    pub fn ec2(instance_id: &str) -> Self {
        let meta = [
            ("instance-id", instance_id),
            ("instance-type", "t3.micro"),
            ("ami-id", "ami-0abcdef1234567890"),
            ("hostname", "ip-10-0-0-1.ec2.internal"),
            ("local-hostname", "ip-10-0-0-1.ec2.internal"),
            ("local-ipv4", "10.0.0.1"),
            ("placement/availability-zone", "us-east-1a"),
            ("placement/region", "us-east-1"),
        ];
        let identity = [
            ("instanceId", instance_id),
            ("instanceType", "t3.micro"),
            ("imageId", "ami-0abcdef1234567890"),
            ("region", "us-east-1"),
            ("availabilityZone", "us-east-1a"),
            ("accountId", "123456789012"),
            ("privateIp", "10.0.0.1"),
            ("architecture", "x86_64"),
        ];
        let own = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        Self {
            meta_data: own(&meta),
            identity: own(&identity),
        }
    }
}

/// How many requests of each kind the service answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImdsStats {
    /// Tokens handed out (`PUT /latest/api/token`).
    pub tokens: u64,
    /// GETs answered with a value.
    pub served: u64,
    /// Requests refused (no or wrong token: 401; unknown path: 404; IMDSv1 GETs included).
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    tokens: AtomicU64,
    served: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug)]
struct State {
    metadata: Mutex<Metadata>,
    tokens: Mutex<Vec<String>>,
    counters: Counters,
}

/// The service, on `127.0.0.1:PORT`; stops when dropped.
#[derive(Debug)]
pub struct Imds {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

const TOKEN: &str = "x-aws-ec2-metadata-token";
const TOKEN_TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";

impl Imds {
    /// Starts serving `metadata`.
    pub async fn start(metadata: Metadata) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            metadata: Mutex::new(metadata),
            tokens: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let s = Arc::clone(&state);
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
                let s = Arc::clone(&s);
                async move { answer(&s, &method, &uri, &headers) }
            });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces what is served.
    pub fn set(&self, metadata: Metadata) {
        *self
            .state
            .metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = metadata;
    }

    /// The requests answered so far.
    pub fn stats(&self) -> ImdsStats {
        let c = &self.state.counters;
        ImdsStats {
            tokens: c.tokens.load(Ordering::Relaxed),
            served: c.served.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn refuse(state: &State, status: StatusCode) -> Response {
    state.counters.refused.fetch_add(1, Ordering::Relaxed);
    status.into_response()
}

fn text(state: &State, body: String) -> Response {
    state.counters.served.fetch_add(1, Ordering::Relaxed);
    Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn answer(state: &State, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let path = uri.path();
    if path == "/latest/api/token" {
        if method != Method::PUT {
            return refuse(state, StatusCode::METHOD_NOT_ALLOWED);
        }
        let ttl_ok = headers
            .get(TOKEN_TTL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|t| (1..=21_600).contains(&t));
        if !ttl_ok {
            return refuse(state, StatusCode::BAD_REQUEST);
        }
        let token = format!("token-{}", uuid::Uuid::new_v4());
        state
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token.clone());
        state.counters.tokens.fetch_add(1, Ordering::Relaxed);
        return Response::builder()
            .header(TOKEN_TTL, "21600")
            .body(Body::from(token))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if method != Method::GET {
        return refuse(state, StatusCode::METHOD_NOT_ALLOWED);
    }
    let authorised = headers
        .get(TOKEN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            state
                .tokens
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|k| k == t)
        });
    if !authorised {
        return refuse(state, StatusCode::UNAUTHORIZED);
    }
    let md = state
        .metadata
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if path == "/latest/dynamic/instance-identity/document" {
        let doc: serde_json::Map<String, serde_json::Value> = md
            .identity
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
        return text(state, body);
    }
    let Some(key) = path.strip_prefix("/latest/meta-data") else {
        return refuse(state, StatusCode::NOT_FOUND);
    };
    let key = key.trim_start_matches('/');
    if let Some(v) = md.meta_data.get(key) {
        return text(state, v.clone());
    }
    // A directory: its children, one a line (sub-directories end in '/').
    let prefix = if key.is_empty() || key.ends_with('/') {
        key.to_owned()
    } else {
        format!("{key}/")
    };
    let mut children: Vec<String> = md
        .meta_data
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .map(|rest| match rest.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => rest.to_owned(),
        })
        .collect();
    children.dedup();
    if children.is_empty() {
        return refuse(state, StatusCode::NOT_FOUND);
    }
    text(state, children.join("\n"))
}
