//! The fault proxy against the embedded emulators: passthrough, every fault kind, seeded
//! reproducibility, rule changes while running, and the counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use kinesis_testkit::fault::OpStats;
use kinesis_testkit::{Fault, FaultProxy, Rule, TestEnv, eventually, read_stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// A proxy in front of the embedded Kinesis and a client through it without SDK retries.
fn kinesis_proxy(env: &TestEnv, seed: u64) -> (FaultProxy, aws_sdk_kinesis::Client) {
    let addr = env.kinesis_addr().expect("embedded Kinesis on plain HTTP");
    let proxy = FaultProxy::start(addr, seed).expect("start the proxy");
    let client = no_retries(env, &proxy);
    (proxy, client)
}

fn no_retries(env: &TestEnv, proxy: &FaultProxy) -> aws_sdk_kinesis::Client {
    let conf = aws_sdk_kinesis::config::Builder::from(&env.sdk)
        .endpoint_url(proxy.endpoint())
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

async fn put(client: &aws_sdk_kinesis::Client, stream: &str, data: &str) -> Result<(), String> {
    client
        .put_record()
        .stream_name(stream)
        .partition_key("pk")
        .data(Blob::new(data))
        .send()
        .await
        .map(drop)
        .map_err(|e| {
            let dispatch = matches!(e, SdkError::DispatchFailure(_));
            eprintln!("PutRecord failed: {}", DisplayErrorContext(&e));
            if dispatch { "dispatch" } else { "other" }.to_owned()
        })
}

async fn stored(env: &TestEnv, stream: &str) -> Vec<String> {
    let contents = read_stream(&env.kinesis, stream).await.expect("read back");
    let data = contents.records.iter().map(|r| r.data.to_vec());
    data.map(|d| String::from_utf8(d).expect("UTF-8")).collect()
}

async fn iterator(env: &TestEnv, stream: &str) -> String {
    let out = env
        .kinesis
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id("shardId-000000000000")
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("GetShardIterator");
    out.shard_iterator.expect("an iterator")
}

#[tokio::test]
async fn passes_calls_through_to_both_services() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let faulty = env.fault_proxies(1).await.expect("embedded emulators");
    faulty
        .kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("pk")
        .data(Blob::new("hello"))
        .send()
        .await
        .expect("PutRecord through the proxy");
    let it = iterator(&env, &stream).await;
    let got = faulty
        .kinesis
        .get_records()
        .shard_iterator(it)
        .send()
        .await
        .expect("GetRecords through the proxy");
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0].data.as_ref(), b"hello");
    faulty
        .dynamodb
        .list_tables()
        .send()
        .await
        .expect("ListTables through the proxy");

    let k = faulty.kinesis_proxy.stats();
    assert_eq!(k.op("PutRecord").requests, 1);
    assert_eq!(k.op("GetRecords").requests, 1);
    assert_eq!(k.total().injected(), 0);
    assert_eq!(faulty.dynamodb_proxy.stats().op("ListTables").requests, 1);
}

#[tokio::test]
async fn error_rules_give_the_exact_code_for_the_matching_operation_only() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    proxy.set_rules(vec![
        Rule::new(Some("PutRecord"), Fault::throttle()),
        Rule::new(Some("ListShards"), Fault::internal()),
    ]);
    let e = kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("pk")
        .data(Blob::new("x"))
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(e.code(), Some("ProvisionedThroughputExceededException"));
    assert!(e.message().is_some_and(|m| m.contains("injected")), "{e:?}");
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(400));
    let e = kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .expect_err("internal");
    assert_eq!(e.code(), Some("InternalFailure"));
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(500));
    kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .expect("other operations pass");
    assert!(stored(&env, &stream).await.is_empty());

    let faulty = env.fault_proxies(1).await.expect("embedded emulators");
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&env.sdk)
            .endpoint_url(faulty.dynamodb_proxy.endpoint())
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    faulty
        .dynamodb_proxy
        .add_rule(Rule::new(Some("ListTables"), Fault::throttle()));
    let e = dynamodb.list_tables().send().await.expect_err("throttled");
    assert_eq!(e.code(), Some("ProvisionedThroughputExceededException"));
    assert_eq!(faulty.dynamodb_proxy.stats().op("ListTables").errors, 1);
}

/// Which of 200 ListStreams calls a proxy seeded with `seed` fails at probability 0.5.
async fn draw_pattern(env: &TestEnv, seed: u64) -> Vec<bool> {
    let (proxy, kinesis) = kinesis_proxy(env, seed);
    proxy.add_rule(Rule::new(Some("ListStreams"), Fault::throttle()).probability(0.5));
    let mut failed = Vec::new();
    for _ in 0..200 {
        match kinesis.list_streams().send().await {
            Ok(_) => failed.push(false),
            Err(e) => {
                assert_eq!(e.code(), Some("ProvisionedThroughputExceededException"));
                failed.push(true);
            }
        }
    }
    let stats = proxy.stats().op("ListStreams");
    let count = failed.iter().filter(|f| **f).count() as u64;
    assert_eq!((stats.requests, stats.errors), (200, count));
    failed
}

#[tokio::test]
async fn a_seed_replays_the_same_faults() {
    let env = TestEnv::start().await;
    let first = draw_pattern(&env, 42).await;
    let again = draw_pattern(&env, 42).await;
    let other = draw_pattern(&env, 43).await;
    let count = |p: &[bool]| p.iter().filter(|f| **f).count();
    eprintln!(
        "seed 42: {} of 200 injected (twice), seed 43: {}",
        count(&first),
        count(&other)
    );
    assert!((60..=140).contains(&count(&first)), "{}", count(&first));
    assert_eq!(first, again, "the same seed replays the same pattern");
    assert_ne!(first, other, "another seed draws another pattern");
}

#[tokio::test]
async fn times_limits_the_injections() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    proxy.add_rule(Rule::new(Some("DescribeStreamSummary"), Fault::internal()).times(2));
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let r = kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await;
        outcomes.push(r.is_ok());
    }
    assert_eq!(outcomes, [false, false, true, true, true]);
    assert_eq!(proxy.stats().op("DescribeStreamSummary").errors, 2);
    assert_eq!(proxy.rules()[0].times, Some(0));
}

#[tokio::test]
async fn reset_before_forward_never_reaches_the_service() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    proxy.add_rule(Rule::new(Some("PutRecord"), Fault::ResetBeforeForward).times(1));
    assert_eq!(put(&kinesis, &stream, "lost").await, Err("dispatch".into()));
    assert!(stored(&env, &stream).await.is_empty());
    put(&kinesis, &stream, "next")
        .await
        .expect("the next call passes");
    assert_eq!(stored(&env, &stream).await, ["next"]);
    assert_eq!(proxy.stats().op("PutRecord").resets_before_forward, 1);
}

#[tokio::test]
async fn reset_after_forward_takes_effect_unanswered() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    proxy.add_rule(Rule::new(Some("PutRecord"), Fault::ResetAfterForward).times(1));
    assert_eq!(
        put(&kinesis, &stream, "unanswered").await,
        Err("dispatch".into())
    );
    assert_eq!(stored(&env, &stream).await, ["unanswered"]);
    assert_eq!(proxy.stats().op("PutRecord").resets_after_forward, 1);
}

#[tokio::test]
async fn reset_mid_response_breaks_get_records() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    put(&env.kinesis, &stream, "payload").await.expect("put");
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    let cut = Fault::ResetMidResponse { after_bytes: 20 };
    proxy.add_rule(Rule::new(Some("GetRecords"), cut).times(1));
    let it = iterator(&env, &stream).await;
    let e = kinesis
        .get_records()
        .shard_iterator(&it)
        .send()
        .await
        .expect_err("cut off");
    eprintln!("GetRecords cut: {}", DisplayErrorContext(&e));
    assert!(
        matches!(e, SdkError::ResponseError(_) | SdkError::DispatchFailure(_)),
        "{e:?}"
    );
    let got = kinesis.get_records().shard_iterator(&it).send().await;
    assert_eq!(got.expect("whole again").records.len(), 1);
    assert_eq!(proxy.stats().op("GetRecords").resets_mid_response, 1);
}

/// Sends a raw ListStreams request and reads until the connection closes: (head, body bytes,
/// whether the body ended).
async fn raw_call(proxy: &FaultProxy) -> (String, Vec<u8>, bool) {
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    let req = "POST / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
               x-amz-target: Kinesis_20131202.ListStreams\r\n\
               content-type: application/x-amz-json-1.1\r\ncontent-length: 2\r\n\r\n{}";
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = tcp.read(&mut buf).await {
        raw.extend_from_slice(&buf[..n]);
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let (mut rest, mut body) = (&raw[split..], Vec::new());
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "));
    if let Some(length) = length {
        let ended = length.trim().parse() == Ok(rest.len());
        return (head, rest.to_vec(), ended);
    }
    // Chunked: "<hex>\r\n<data>\r\n" ... "0\r\n\r\n".
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).expect("hex"), 16);
        let len = len.expect("chunk size");
        if len == 0 {
            return (head, body, true);
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + len]);
        rest = &rest[(eol + 4 + len).min(rest.len())..];
    }
    (head, body, false)
}

#[tokio::test]
async fn reset_mid_response_sends_exactly_the_first_bytes() {
    let env = TestEnv::start().await;
    let (proxy, _) = kinesis_proxy(&env, 1);
    proxy.add_rule(Rule::all(Fault::ResetMidResponse { after_bytes: 10 }));
    let (head, body, ended) = raw_call(&proxy).await;
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!((body.len(), ended), (10, false));
    // A body shorter than the cut arrives whole, but without its end.
    proxy.set_rules(vec![Rule::all(Fault::ResetMidResponse {
        after_bytes: 1 << 20,
    })]);
    let (_, body, ended) = raw_call(&proxy).await;
    assert!(!body.is_empty());
    assert!(!ended);
    proxy.clear();
    let (_, whole, ended) = raw_call(&proxy).await;
    assert_eq!((whole, ended), (body, true));
}

#[tokio::test]
async fn latency_delays_the_call() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    let delay = Duration::from_millis(300);
    proxy.add_rule(Rule::new(
        Some("DescribeStreamSummary"),
        Fault::Latency(delay),
    ));
    let started = Instant::now();
    kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .expect("delayed, not failed");
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(proxy.stats().op("DescribeStreamSummary").latency, 1);
}

#[tokio::test]
async fn stall_times_out_until_released() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let (proxy, _) = kinesis_proxy(&env, 1);
    let conf = aws_sdk_kinesis::config::Builder::from(&env.sdk)
        .endpoint_url(proxy.endpoint())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_millis(300))
                .build(),
        )
        .build();
    let kinesis = aws_sdk_kinesis::Client::from_conf(conf);
    proxy.add_rule(Rule::new(Some("DescribeStreamSummary"), Fault::Stall));
    let e = kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .expect_err("stalled");
    assert!(matches!(e, SdkError::TimeoutError(_)), "{e:?}");
    assert_eq!(proxy.stats().op("DescribeStreamSummary").stalls, 1);

    // A call without a timeout stays held until the release closes its connection.
    let held = tokio::spawn({
        let kinesis = no_retries(&env, &proxy);
        let stream = stream.clone();
        async move {
            let r = kinesis.describe_stream_summary().stream_name(stream).send();
            r.await.map(drop)
        }
    });
    eventually(
        "the second call to stall",
        Duration::from_secs(5),
        || async { (proxy.stats().op("DescribeStreamSummary").stalls == 2).then_some(()) },
    )
    .await;
    proxy.clear();
    proxy.release_stalled();
    let released = tokio::time::timeout(Duration::from_secs(5), held).await;
    let e = released
        .expect("released")
        .expect("task")
        .expect_err("no answer");
    eprintln!("Stall released: {}", DisplayErrorContext(&e));
    assert!(matches!(e, SdkError::DispatchFailure(_)), "{e:?}");
    kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .expect("passes once the rule is gone");
}

#[tokio::test]
async fn rule_changes_apply_to_the_next_request_and_stats_add_up() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    let describe = || async {
        let r = kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await;
        r.map(drop)
            .map_err(|e| e.code().unwrap_or_default().to_owned())
    };
    assert_eq!(describe().await, Ok(()));
    proxy.set_rules(vec![Rule::new(
        Some("DescribeStreamSummary"),
        Fault::error("ResourceNotFoundException"),
    )]);
    assert_eq!(describe().await, Err("ResourceNotFoundException".into()));
    proxy.clear();
    assert_eq!(describe().await, Ok(()));
    proxy.add_rule(Rule::all(Fault::error("LimitExceededException")));
    assert_eq!(describe().await, Err("LimitExceededException".into()));
    proxy.add_rule(Rule::all(Fault::ResetBeforeForward));
    assert_eq!(
        describe().await,
        Err("LimitExceededException".into()),
        "first rule wins"
    );
    proxy.set_rules(vec![Rule::new(Some("ListShards"), Fault::throttle())]);
    assert_eq!(describe().await, Ok(()));
    let shards = kinesis.list_shards().stream_name(&stream).send().await;
    assert!(shards.is_err());

    let stats = proxy.stats();
    println!("{stats}");
    let d = stats.op("DescribeStreamSummary");
    assert_eq!((d.requests, d.errors, d.injected()), (6, 3, 3));
    assert_eq!(stats.op("ListShards").errors, 1);
    let total = stats.total();
    assert_eq!((total.requests, total.injected()), (7, 4));
    assert_eq!(stats.op("PutRecords"), OpStats::default());
    let table = stats.to_string();
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("operation"))
    );
    assert!(table.contains("DescribeStreamSummary") && table.contains("total"));
}

#[tokio::test]
async fn event_streams_flow_through_and_can_be_cut() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let summary = env
        .kinesis
        .describe_stream_summary()
        .stream_name(&stream)
        .send()
        .await
        .expect("describe");
    let stream_arn = summary
        .stream_description_summary
        .expect("summary")
        .stream_arn;
    let registered = env
        .kinesis
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name("fault-proxy")
        .send()
        .await
        .expect("register");
    let consumer_arn = registered.consumer.expect("consumer").consumer_arn;
    eventually(
        "the consumer to be ACTIVE",
        Duration::from_secs(10),
        || async {
            let d = env
                .kinesis
                .describe_stream_consumer()
                .consumer_arn(&consumer_arn)
                .send()
                .await
                .ok()?;
            let status = d.consumer_description?.consumer_status;
            (status == ConsumerStatus::Active).then_some(())
        },
    )
    .await;
    let (proxy, kinesis) = kinesis_proxy(&env, 1);
    let subscribe = || {
        kinesis
            .subscribe_to_shard()
            .consumer_arn(&consumer_arn)
            .shard_id("shardId-000000000000")
            .starting_position(
                StartingPosition::builder()
                    .r#type(ShardIteratorType::TrimHorizon)
                    .build()
                    .expect("position"),
            )
            .send()
    };

    // A record put after subscribing arrives while the response is still open.
    let mut out = subscribe().await.expect("subscribe through the proxy");
    put(&env.kinesis, &stream, "live").await.expect("put");
    let live = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match out.event_stream.recv().await {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(ev)))
                    if !ev.records.is_empty() =>
                {
                    return ev.records[0].data.clone();
                }
                Ok(Some(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the record within 10 s");
    assert_eq!(live.as_ref(), b"live");

    // Cut after the initial response and a little more: the subscription breaks off.
    proxy.add_rule(Rule::new(
        Some("SubscribeToShard"),
        Fault::ResetMidResponse { after_bytes: 400 },
    ));
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut out = subscribe().await.map_err(|e| format!("send: {e}"))?;
        loop {
            match out.event_stream.recv().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("recv: {}", DisplayErrorContext(&e))),
            }
        }
    })
    .await
    .expect("the cut within 10 s");
    eprintln!("SubscribeToShard cut: {ended:?}");
    assert!(
        ended.is_err(),
        "a cut subscription fails, it does not end cleanly"
    );
    assert_eq!(proxy.stats().op("SubscribeToShard").resets_mid_response, 1);
}
