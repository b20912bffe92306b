//! A fast PutRecords/ListShards endpoint for client benchmarks: it checks each request and
//! acknowledges every entry, with canned shard ids and sequence numbers. Run it in a separate
//! process ([`FastEndpoint::spawn`] re-runs the current executable with `endpoint` as its first
//! argument, which must call [`serve_from_args`]) so its CPU does not count as the client's.

// A benchmark harness: failing loudly on setup errors is what it should do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes as AxBytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

/// Shards the endpoint reports.
pub const SHARDS: u128 = 16;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsIn {
    records: Vec<EntryIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EntryIn {
    data: String,
    partition_key: String,
    explicit_hash_key: Option<String>,
}

struct EndpointState {
    stall: bool,
    records: AtomicU64,
    seq: AtomicU64,
}

fn shard_of(hash: u128) -> u128 {
    hash / (u128::MAX / SHARDS + 1)
}

async fn handle(
    axum::extract::State(st): axum::extract::State<Arc<EndpointState>>,
    headers: HeaderMap,
    body: AxBytes,
) -> (StatusCode, String) {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bad = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            format!("{{\"__type\":\"ValidationException\",\"message\":\"{m}\"}}"),
        )
    };
    if target.ends_with("ListShards") {
        let step = u128::MAX / SHARDS + 1;
        let shards: Vec<String> = (0..SHARDS)
            .map(|i| {
                let end = if i == SHARDS - 1 { u128::MAX } else { step * (i + 1) - 1 };
                format!(
                    "{{\"ShardId\":\"shardId-{i:012}\",\"HashKeyRange\":{{\"StartingHashKey\":\"{}\",\"EndingHashKey\":\"{end}\"}},\"SequenceNumberRange\":{{\"StartingSequenceNumber\":\"1\"}}}}",
                    step * i
                )
            })
            .collect();
        return (
            StatusCode::OK,
            format!("{{\"Shards\":[{}]}}", shards.join(",")),
        );
    }
    if !target.ends_with("PutRecords") {
        return bad("unsupported operation");
    }
    if st.stall {
        std::future::pending::<()>().await;
    }
    let req: PutRecordsIn = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => return bad("bad json"),
    };
    if req.records.is_empty() || req.records.len() > 500 {
        return bad("1..=500 records");
    }
    let mut total = 0;
    let mut out = String::with_capacity(req.records.len() * 80 + 40);
    out.push_str("{\"FailedRecordCount\":0,\"Records\":[");
    for (i, e) in req.records.iter().enumerate() {
        let Ok(data) = B64.decode(&e.data) else {
            return bad("data is not base64");
        };
        let pk_chars = e.partition_key.chars().count();
        if pk_chars == 0 || pk_chars > 256 {
            return bad("partition key length");
        }
        let size = data.len() + e.partition_key.len();
        if size > 1024 * 1024 {
            return bad("record too large");
        }
        total += size;
        let hash = match &e.explicit_hash_key {
            Some(h) => match h.parse::<u128>() {
                Ok(h) => h,
                Err(_) => return bad("explicit hash key"),
            },
            None => kinesis_core::hash_key(&e.partition_key).0,
        };
        let seq = st.seq.fetch_add(1, Ordering::Relaxed);
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"SequenceNumber\":\"{}\",\"ShardId\":\"shardId-{:012}\"}}",
            49_000_000_000_000_000_000u128 + u128::from(seq),
            shard_of(hash)
        ));
    }
    if total > 5 * 1024 * 1024 {
        return bad("request too large");
    }
    st.records
        .fetch_add(req.records.len() as u64, Ordering::Relaxed);
    out.push_str("]}");
    (StatusCode::OK, out)
}

/// Serves until stdin closes; prints the listen address on stdout first.
pub fn run_endpoint(stall: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let st = Arc::new(EndpointState {
            stall,
            records: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(st)
            .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", l.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        // Stop when the parent closes our stdin.
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut s = String::new();
                let _ = std::io::stdin().read_line(&mut s);
            })
            .await;
        };
        axum::serve(l, app)
            .with_graceful_shutdown(stop)
            .await
            .unwrap();
    });
}

/// A running endpoint process.
#[derive(Debug)]
pub struct FastEndpoint {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl FastEndpoint {
    /// Starts the current executable as an endpoint (`endpoint [--stall]`).
    pub fn spawn(stall: bool) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("endpoint");
        if stall {
            cmd.arg("--stall");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self {
            child,
            url: format!("http://{}", line.trim()),
        }
    }
}

impl Drop for FastEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Call first in `main` of a bench that uses [`FastEndpoint`]: serves and returns true when this
/// process was started as the endpoint.
pub fn serve_from_args() -> bool {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("endpoint") {
        run_endpoint(args.iter().any(|a| a == "--stall"));
        return true;
    }
    false
}
