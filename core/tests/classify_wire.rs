//! Classification of failures before an answer, from real SDK calls against sockets that fail
//! the way load balancers, proxies and dead hosts do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::credential_fn::provide_credentials_fn;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use kinesis_core::classify::{DisplayChain, classify, outcome_unknown};
use kinesis_core::{AwsError, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake endpoint does with each connection.
#[derive(Clone, Copy)]
enum Server {
    /// Accepts and closes at once, before reading anything.
    AcceptClose,
    /// Reads the whole request, then closes without a byte of answer.
    ReadClose,
    /// Reads the request and never answers (nor closes).
    Hang,
    /// Reads the request and answers with this status and JSON error body.
    Answer(u16, &'static str),
    /// Reads the request and writes these bytes, then closes.
    Raw(&'static str),
}

/// Reads one HTTP request (headers, then a Content-Length body).
async fn read_request(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if buf.len() >= end + 4 + len {
            return;
        }
    }
}

async fn serve(mode: Server) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                match mode {
                    Server::AcceptClose => {}
                    Server::ReadClose => read_request(&mut s).await,
                    Server::Hang => {
                        read_request(&mut s).await;
                        std::future::pending::<()>().await;
                    }
                    Server::Answer(status, body) => {
                        read_request(&mut s).await;
                        let a = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(a.as_bytes()).await;
                        let _ = s.flush().await;
                    }
                    Server::Raw(a) => {
                        read_request(&mut s).await;
                        let _ = s.write_all(a.as_bytes()).await;
                        let _ = s.flush().await;
                    }
                }
            });
        }
    });
    addr
}

fn client(endpoint: &str, creds: SharedCredentialsProvider) -> aws_sdk_kinesis::Client {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::from_static("us-east-1"))
        .credentials_provider(creds)
        .build();
    let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_millis(500))
                .build(),
        )
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

fn good() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(kinesis_testkit::test_credentials())
}

/// One PutRecords call; its error's kind and whether its outcome is unknown.
async fn put(c: &aws_sdk_kinesis::Client) -> (ErrorKind, bool) {
    let entry = aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
        .partition_key("k")
        .data(aws_sdk_kinesis::primitives::Blob::new("x"))
        .build()
        .unwrap();
    let err = c
        .put_records()
        .stream_name("s")
        .records(entry)
        .send()
        .await
        .unwrap_err();
    let shown = DisplayChain(&err).to_string();
    let (kind, unknown) = (classify(&err), outcome_unknown(&err));
    let wrapped = AwsError::new("PutRecords", err);
    assert_eq!((wrapped.kind(), wrapped.outcome_unknown()), (kind, unknown));
    eprintln!("{kind:?} unknown={unknown}: {shown}");
    (kind, unknown)
}

#[tokio::test]
async fn closed_before_the_request_is_read_is_transient_and_maybe_applied() {
    let addr = serve(Server::AcceptClose).await;
    assert_eq!(
        put(&client(&format!("http://{addr}"), good())).await,
        (ErrorKind::Transient, true)
    );
}

#[tokio::test]
async fn closed_after_the_request_is_read_is_transient_and_maybe_applied() {
    // hyper: "connection closed before message completed", ConnectorError other(transient):
    // classified Other (fatal) before; `kinesis put` failed every record on it.
    let addr = serve(Server::ReadClose).await;
    assert_eq!(
        put(&client(&format!("http://{addr}"), good())).await,
        (ErrorKind::Transient, true)
    );
}

#[tokio::test]
async fn a_refused_connection_is_transient_and_not_applied() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert_eq!(
        put(&client(&format!("http://{addr}"), good())).await,
        (ErrorKind::Transient, false)
    );
}

#[tokio::test]
async fn a_dns_failure_is_transient_and_not_applied() {
    // `.invalid` never resolves (RFC 6761).
    let c = client("http://kinesis.no-such-host.invalid", good());
    assert_eq!(put(&c).await, (ErrorKind::Transient, false));
}

#[tokio::test]
async fn an_attempt_timeout_is_transient_and_maybe_applied() {
    let addr = serve(Server::Hang).await;
    assert_eq!(
        put(&client(&format!("http://{addr}"), good())).await,
        (ErrorKind::Transient, true)
    );
}

#[tokio::test]
async fn a_body_cut_short_is_transient_and_maybe_applied() {
    let addr = serve(Server::Raw(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: 100\r\n\r\n{\"Failed",
    ))
    .await;
    assert_eq!(
        put(&client(&format!("http://{addr}"), good())).await,
        (ErrorKind::Transient, true)
    );
}

#[tokio::test]
async fn answers_keep_their_classes() {
    let cases = [
        (500, "InternalFailure", (ErrorKind::Transient, true)),
        (503, "ServiceUnavailable", (ErrorKind::Transient, true)),
        (
            400,
            "ResourceNotFoundException",
            (ErrorKind::NotFound, false),
        ),
        (
            400,
            "ProvisionedThroughputExceededException",
            (ErrorKind::Throttled, false),
        ),
        (
            400,
            "AccessDeniedException",
            (ErrorKind::AccessDenied, false),
        ),
        (400, "ValidationException", (ErrorKind::Invalid, false)),
    ];
    for (status, code, want) in cases {
        let body: &'static str = format!("{{\"__type\":\"{code}\",\"message\":\"x\"}}").leak();
        let addr = serve(Server::Answer(status, body)).await;
        assert_eq!(
            put(&client(&format!("http://{addr}"), good())).await,
            want,
            "{status} {code}"
        );
    }
}

#[tokio::test]
async fn credential_failures_are_transient_unless_misconfigured() {
    let addr = serve(Server::Raw("HTTP/1.1 500 x\r\ncontent-length: 0\r\n\r\n")).await;
    let endpoint = format!("http://{addr}");
    let failing = |e: fn() -> CredentialsError| {
        SharedCredentialsProvider::new(provide_credentials_fn(move || async move { Err(e()) }))
    };
    // What IMDS, ECS and STS web identity failures look like once the chain gives up.
    let cases: [(fn() -> CredentialsError, ErrorKind); 5] = [
        (
            || CredentialsError::provider_error("IMDS answered 500"),
            ErrorKind::Transient,
        ),
        (
            || CredentialsError::provider_timed_out(Duration::from_secs(5)),
            ErrorKind::Transient,
        ),
        (
            || CredentialsError::not_loaded("could not reach IMDS"),
            ErrorKind::Transient,
        ),
        (
            || CredentialsError::unhandled("unexpected IMDS response"),
            ErrorKind::Transient,
        ),
        (
            || CredentialsError::invalid_configuration("ECS auth token is not valid"),
            ErrorKind::AccessDenied,
        ),
    ];
    for (make, kind) in cases {
        assert_eq!(
            put(&client(&endpoint, failing(make))).await,
            (kind, false),
            "{}",
            make()
        );
    }
}
