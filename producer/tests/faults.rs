//! The producer through a fault proxy: connections lost before and after the service stored a
//! call, stalled calls, rejected calls, and entries rejected at random (#10 items 8 and 10).
//!
//! Every test reads the stream back: a receipt that says delivered must be there, and a record
//! stored twice must say `possible_duplicate`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use kinesis_core::{PartitionKey, UserRecord};
use kinesis_producer::{Delivered, FailureReason, Producer, ProducerConfig, ReceiptError};
use kinesis_testkit::{Fault, FaultyClients, Rule, TestEnv, read_stream};

fn record(i: usize) -> UserRecord {
    UserRecord::new(
        PartitionKey::new(format!("key-{}", i % 997)).unwrap(),
        None,
        Bytes::from(format!("record-{i:06}-{}", "x".repeat(60))),
    )
}

fn index_of(data: &[u8]) -> usize {
    std::str::from_utf8(&data[7..13]).unwrap().parse().unwrap()
}

struct Setup {
    env: TestEnv,
    stream: String,
    faults: FaultyClients,
}

async fn setup(shards: i32, seed: u64) -> Option<Setup> {
    let env = TestEnv::start().await;
    let stream = env.create_stream(shards).await;
    let faults = env.fault_proxies(seed).await?;
    Some(Setup {
        env,
        stream,
        faults,
    })
}

async fn producer(s: &Setup, cfg: ProducerConfig) -> Producer {
    Producer::builder(s.faults.kinesis.clone(), &s.stream)
        .config(cfg)
        .build()
        .await
        .unwrap()
}

/// Sends records `0..n` and waits for every receipt.
async fn send(p: &Producer, n: usize) -> Vec<Result<Delivered, ReceiptError>> {
    let mut receipts = Vec::with_capacity(n);
    for i in 0..n {
        receipts.push(p.send(record(i)).await.unwrap());
    }
    join_all(receipts).await
}

/// Every record delivered and in the stream; the records stored more than once are exactly the
/// ones whose receipts say `possible_duplicate` when `exact`, a subset of them otherwise.
/// Returns how many receipts say it.
async fn check_all_delivered(
    s: &Setup,
    outcomes: &[Result<Delivered, ReceiptError>],
    exact: bool,
) -> usize {
    let n = outcomes.len();
    let mut flagged = HashSet::new();
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            Ok(d) => {
                if d.possible_duplicate {
                    flagged.insert(i);
                }
            }
            Err(e) => panic!("record {i} failed: {e}"),
        }
    }
    let read = read_stream(&s.env.kinesis, &s.stream).await.unwrap();
    let mut copies: HashMap<usize, usize> = HashMap::new();
    for r in &read.records {
        *copies.entry(index_of(&r.data)).or_default() += 1;
    }
    let missing: Vec<usize> = (0..n).filter(|i| !copies.contains_key(i)).collect();
    assert!(missing.is_empty(), "not in the stream: {missing:?}");
    let twice: HashSet<usize> = copies
        .iter()
        .filter(|&(_, &c)| c > 1)
        .map(|(&i, _)| i)
        .collect();
    let unflagged: Vec<_> = twice
        .difference(&flagged)
        .map(|&i| {
            let d = outcomes[i].as_ref().unwrap();
            let at: Vec<_> = read
                .records
                .iter()
                .filter(|r| index_of(&r.data) == i)
                .map(|r| (r.shard_id.to_string(), r.sequence_number.to_string()))
                .collect();
            (i, d.attempts, d.sequence_number.to_string(), at)
        })
        .collect();
    assert!(
        unflagged.is_empty(),
        "stored twice without possible_duplicate (index, attempts, receipt, copies): {unflagged:?}"
    );
    if exact {
        assert_eq!(twice, flagged, "flagged records are the ones stored twice");
    }
    // Every receipt points at a copy of its own record.
    let at: HashMap<_, _> = read
        .records
        .iter()
        .map(|r| {
            (
                (r.sequence_number.clone(), r.sub_sequence_number),
                index_of(&r.data),
            )
        })
        .collect();
    for (i, o) in outcomes.iter().enumerate() {
        let d = o.as_ref().unwrap();
        let key = (d.sequence_number.clone(), d.sub_sequence_number);
        assert_eq!(
            at.get(&key),
            Some(&i),
            "receipt of record {i} points elsewhere"
        );
    }
    flagged.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_the_service_stored_the_call_is_retried_and_flagged() {
    let Some(s) = setup(4, 1).await else { return };
    let p = producer(&s, ProducerConfig::default()).await;
    s.faults
        .kinesis_proxy
        .add_rule(Rule::new(Some("PutRecords"), Fault::ResetAfterForward).times(1));
    let outcomes = send(&p, 5_000).await;
    p.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        s.faults
            .kinesis_proxy
            .stats()
            .op("PutRecords")
            .resets_after_forward,
        1
    );
    // The call was stored, then its connection lost: its records are in the stream twice, and
    // exactly those say so.
    let flagged = check_all_delivered(&s, &outcomes, true).await;
    assert!(flagged > 0, "the reset call's records are flagged");
    let retried = outcomes
        .iter()
        .filter(|o| o.as_ref().unwrap().attempts > 1)
        .count();
    assert_eq!(
        retried, flagged,
        "only the reset call's records were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lists_its_possible_duplicates() {
    let Some(s) = setup(2, 5).await else { return };
    let p = producer(&s, ProducerConfig::default()).await;
    s.faults
        .kinesis_proxy
        .add_rule(Rule::new(Some("PutRecords"), Fault::ResetAfterForward).times(1));
    let batch: Vec<UserRecord> = (0..2_000).map(record).collect();
    let outcome = p.send_batch(batch).await.unwrap().await.unwrap();
    p.shutdown(Duration::from_secs(10)).await;
    assert!(outcome.all_delivered(), "{:?}", outcome.failed);
    assert_eq!(outcome.delivered, 2_000);
    let read = read_stream(&s.env.kinesis, &s.stream).await.unwrap();
    let mut copies: HashMap<usize, usize> = HashMap::new();
    for r in &read.records {
        *copies.entry(index_of(&r.data)).or_default() += 1;
    }
    assert_eq!(copies.len(), 2_000, "every record in the stream");
    let mut twice: Vec<usize> = copies
        .into_iter()
        .filter(|&(_, c)| c > 1)
        .map(|(i, _)| i)
        .collect();
    twice.sort_unstable();
    assert!(!twice.is_empty());
    assert_eq!(outcome.possible_duplicates, twice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_before_forwarding_is_retried() {
    let Some(s) = setup(4, 2).await else { return };
    let p = producer(&s, ProducerConfig::default()).await;
    s.faults
        .kinesis_proxy
        .add_rule(Rule::new(Some("PutRecords"), Fault::ResetBeforeForward).times(3));
    let outcomes = send(&p, 5_000).await;
    p.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        s.faults
            .kinesis_proxy
            .stats()
            .op("PutRecords")
            .resets_before_forward,
        3
    );
    // Never stored before the retry; the client cannot know, so the flag may be set.
    check_all_delivered(&s, &outcomes, false).await;
    let retried = outcomes
        .iter()
        .filter(|o| o.as_ref().unwrap().attempts > 1)
        .count();
    assert!(retried > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_call_times_out_and_is_retried() {
    let Some(s) = setup(4, 3).await else { return };
    let cfg = ProducerConfig {
        request_timeout: Duration::from_millis(500),
        ..ProducerConfig::default()
    };
    let p = producer(&s, cfg).await;
    s.faults
        .kinesis_proxy
        .add_rule(Rule::new(Some("PutRecords"), Fault::Stall).times(2));
    let outcomes = send(&p, 5_000).await;
    p.shutdown(Duration::from_secs(10)).await;
    s.faults.kinesis_proxy.release_stalled();
    assert_eq!(s.faults.kinesis_proxy.stats().op("PutRecords").stalls, 2);
    let flagged = check_all_delivered(&s, &outcomes, false).await;
    // A timed-out call may have been stored: its records say so.
    assert!(flagged > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_calls_still_fail_fast() {
    let Some(s) = setup(2, 4).await else { return };
    let p = producer(&s, ProducerConfig::default()).await;
    // Access denied and invalid requests, injected; then the stream itself deleted.
    for code in ["AccessDeniedException", "ValidationException"] {
        s.faults
            .kinesis_proxy
            .set_rules(vec![Rule::new(Some("PutRecords"), Fault::error(code))]);
        let started = Instant::now();
        let outcomes = send(&p, 200).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{code}: not fast"
        );
        for o in outcomes {
            let e = o.unwrap_err();
            assert!(
                matches!(e.reason(), Some(FailureReason::Rejected(_))),
                "{code}: {e}"
            );
        }
    }
    s.faults.kinesis_proxy.clear();
    s.env.delete_stream(&s.stream).await;
    let started = Instant::now();
    let outcomes = send(&p, 200).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "deleted: not fast"
    );
    for o in outcomes {
        let e = o.unwrap_err();
        let Some(FailureReason::Rejected(aws)) = e.reason() else {
            panic!("deleted stream: {e}");
        };
        assert_eq!(aws.kind(), kinesis_core::ErrorKind::NotFound, "{aws}");
        let ReceiptError::Failed(pe) = &e else {
            unreachable!()
        };
        assert_eq!(pe.attempts, 1);
    }
    p.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_faults_lose_nothing_and_flag_every_duplicate() {
    // Calls that time out (latency over the request timeout; the proxy forwards them anyway),
    // calls stored and then cut, and entries failed at random, aggregated and not.
    for seed in 0..3u64 {
        let Some(s) = setup(8, 100 + seed).await else {
            return;
        };
        let cfg = ProducerConfig {
            aggregation: seed != 1,
            request_timeout: Duration::from_millis(300),
            ..ProducerConfig::default()
        };
        let p = producer(&s, cfg).await;
        let proxy = &s.faults.kinesis_proxy;
        let late = Fault::Latency(Duration::from_millis(400));
        proxy.add_rule(Rule::new(Some("PutRecords"), late).probability(0.1));
        proxy.add_rule(Rule::new(Some("PutRecords"), Fault::ResetAfterForward).probability(0.05));
        proxy.add_rule(Rule::new(
            Some("PutRecords"),
            Fault::PartialFailure {
                fraction: 0.3,
                code: "InternalFailure".into(),
            },
        ));
        let outcomes = send(&p, 10_000).await;
        p.shutdown(Duration::from_secs(10)).await;
        let flagged = check_all_delivered(&s, &outcomes, false).await;
        eprintln!("seed {seed}: {flagged} flagged\n{}", proxy.stats());
    }
}

/// Attempts per record, as `attempts → records`.
fn attempts_histogram(outcomes: &[Result<Delivered, ReceiptError>]) -> BTreeMap<u32, usize> {
    let mut h = BTreeMap::new();
    for o in outcomes {
        let a = match o {
            Ok(d) => d.attempts,
            Err(ReceiptError::Failed(e)) => e.attempts,
            Err(_) => 0,
        };
        *h.entry(a).or_default() += 1;
    }
    h
}

/// 50,000 plain records (one entry each: every entry's fate is one record's) into 32 shards
/// while the proxy fails `fraction` of the PutRecords entries at random with `code` (not
/// stored, as Kinesis does), with the default TTL. Returns records expired and attempts.
async fn partial_failures(fraction: f64, code: &str, seed: u64) -> (usize, BTreeMap<u32, usize>) {
    const N: usize = 50_000;
    let Some(s) = setup(32, seed).await else {
        return (0, BTreeMap::new());
    };
    let cfg = ProducerConfig {
        aggregation: false,
        ..ProducerConfig::default()
    };
    let p = producer(&s, cfg).await;
    s.faults.kinesis_proxy.add_rule(Rule::new(
        Some("PutRecords"),
        Fault::PartialFailure {
            fraction,
            code: code.to_owned(),
        },
    ));
    let started = Instant::now();
    let outcomes = send(&p, N).await;
    let elapsed = started.elapsed();
    let stats = p.stats();
    p.shutdown(Duration::from_secs(10)).await;
    let histogram = attempts_histogram(&outcomes);
    let expired = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o.as_ref().err().and_then(ReceiptError::reason),
                Some(FailureReason::Expired { .. })
            )
        })
        .count();
    let flagged = outcomes
        .iter()
        .filter(|o| o.as_ref().is_ok_and(|d| d.possible_duplicate))
        .count();
    eprintln!(
        "{code} at {:.0} %: {expired} of {N} expired, {elapsed:.1?}, {} calls, {flagged} flagged, attempts {histogram:?}\n{}",
        fraction * 100.0,
        stats.put_records_calls,
        s.faults.kinesis_proxy.stats()
    );
    if expired == 0 {
        // Not exact: a whole call can time out on a loaded machine and be flagged, stored or not.
        check_all_delivered(&s, &outcomes, false).await;
    }
    (expired, histogram)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_of_entries_failing_expire_nothing() {
    let (expired, _) = partial_failures(0.3, "ProvisionedThroughputExceededException", 30).await;
    assert_eq!(expired, 0);
    let (expired, _) = partial_failures(0.3, "InternalFailure", 31).await;
    assert_eq!(expired, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_entries_failing_expire_nothing() {
    let (expired, _) = partial_failures(0.5, "ProvisionedThroughputExceededException", 50).await;
    assert_eq!(expired, 0);
    let (expired, _) = partial_failures(0.5, "InternalFailure", 51).await;
    assert_eq!(expired, 0);
}

/// A throttled ListShards at start-up is retried by `build`, a missing stream is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_retries_a_throttled_list_shards() {
    let Some(s) = setup(1, 21).await else {
        return;
    };
    // More throttles than one call's SDK attempts: the first ListShards call fails.
    s.faults
        .kinesis_proxy
        .add_rule(Rule::new(Some("ListShards"), Fault::error("LimitExceededException")).times(5));
    let p = producer(&s, ProducerConfig::default()).await;
    assert_eq!(
        s.faults.kinesis_proxy.stats().op("ListShards").injected(),
        5
    );
    let out = send(&p, 10).await;
    assert!(out.iter().all(Result::is_ok));
    let missing = Producer::builder(s.faults.kinesis.clone(), "no-such-stream")
        .build()
        .await;
    assert!(missing.is_err(), "a missing stream fails at once");
}

/// `(when, retries, put_records_in_flight)` of a producer, every 10 ms, until stopped.
struct InFlightSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, u64, u64)>>,
}

impl InFlightSampler {
    fn start(p: &Producer) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (p, flag) = (p.clone(), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut every = tokio::time::interval(Duration::from_millis(10));
            while !flag.load(Ordering::Relaxed) {
                every.tick().await;
                let st = p.stats();
                samples.push((Instant::now(), st.retries, st.put_records_in_flight));
            }
            samples
        });
        Self { stop, task }
    }

    async fn stop(self) -> Vec<(Instant, u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// An endpoint that serves PutRecords one at a time, 100 ms each (kinesis-mock is one thread;
/// a service near its limit queues): about ten calls fit in the 1 s request timeout. With more
/// in flight the last ones time out, and are served all the same after the client gave up (as
/// kinesis-mock stores them), ahead of whatever comes next. Sending the same again, as many at
/// once, times out again until the TTL is gone (the regression `.ci/external` found in
/// `delivery.rs`): the producer must send fewer at once while calls time out, and deliver every
/// record within a TTL that leaves room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_too_slow_for_the_calls_in_flight_gets_fewer_and_expires_nothing() {
    const N: usize = 24_000;
    let Some(s) = setup(16, 40).await else { return };
    if s.env.backend() != kinesis_testkit::Backend::InProcess {
        // The timings assume a backend that answers in milliseconds, not one as slow as the
        // endpoint modelled here (kinesis-mock).
        eprintln!("skipped: calibrated for the embedded emulator");
        return;
    }
    let timeout = Duration::from_secs(1);
    let cfg = ProducerConfig {
        // One entry per record, 500 per call: 48 calls, 24 of them at once at first.
        aggregation: false,
        request_timeout: timeout,
        record_ttl: Duration::from_secs(20),
        ..ProducerConfig::default()
    };
    let p = producer(&s, cfg).await;
    let proxy = &s.faults.kinesis_proxy;
    proxy.one_at_a_time("PutRecords");
    proxy.add_rule(Rule::new(
        Some("PutRecords"),
        Fault::Latency(Duration::from_millis(100)),
    ));
    let sampler = InFlightSampler::start(&p);
    let started = Instant::now();
    let outcomes = send(&p, N).await;
    let elapsed = started.elapsed();
    let samples = sampler.stop().await;
    let stats = p.stats();
    p.shutdown(Duration::from_secs(10)).await;
    proxy.clear();
    let histogram = attempts_histogram(&outcomes);
    let expired = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o.as_ref().err().and_then(ReceiptError::reason),
                Some(FailureReason::Expired { .. })
            )
        })
        .count();
    // Calls in flight from two timeouts after the first one (calls sent before the producer
    // could react time out too) until every receipt resolved.
    let first_retry = samples.iter().find(|&&(_, retries, _)| retries > 0);
    let later: Vec<u64> = first_retry.map_or_else(Vec::new, |&(t, _, _)| {
        samples
            .iter()
            .filter(|&&(at, _, _)| at >= t + 2 * timeout)
            .map(|&(_, _, n)| n)
            .collect()
    });
    let peak_later = later.iter().copied().max().unwrap_or(0);
    let peak = samples.iter().map(|&(_, _, n)| n).max().unwrap_or(0);
    eprintln!(
        "{expired} of {N} expired, {elapsed:.1?}, {} calls, {} retries, attempts {histogram:?}, \
         in flight: peak {peak}, {peak_later} after the first timeouts ({} samples)\n{}",
        stats.put_records_calls,
        stats.retries,
        later.len(),
        proxy.stats()
    );
    assert!(
        first_retry.is_some(),
        "no call timed out: the endpoint was not too slow"
    );
    assert_eq!(expired, 0, "records expired although the TTL left room");
    assert!(
        peak_later <= 10,
        "calls in flight stayed at {peak_later} while calls timed out (at most 10 fit in the timeout)"
    );
    check_all_delivered(&s, &outcomes, false).await;
}

/// Through the proxy: a call stored by the service, its connection lost after (an unknown
/// outcome), and the producer shut down while the retry waits out its backoff. Those records
/// are in the stream: the shutdown must not hand them back as never sent (`Cancelled`,
/// `undelivered`) but as `Unknown`, `in_flight`, flagged — every one of them read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stored_before_a_lost_connection_are_not_handed_back_as_never_sent() {
    let Some(s) = setup(2, 11).await else { return };
    let cfg = ProducerConfig {
        // The retry waits far longer than the shutdown's deadline.
        retry_min_delay: Duration::from_secs(20),
        retry_max_delay: Duration::from_secs(30),
        ..ProducerConfig::default()
    };
    let p = producer(&s, cfg).await;
    s.faults
        .kinesis_proxy
        .add_rule(Rule::new(Some("PutRecords"), Fault::ResetAfterForward).times(1));
    let mut receipts = Vec::new();
    for i in 0..50 {
        receipts.push(p.send(record(i)).await.unwrap());
    }
    let until = Instant::now() + Duration::from_secs(20);
    while s
        .faults
        .kinesis_proxy
        .stats()
        .op("PutRecords")
        .resets_after_forward
        == 0
    {
        assert!(Instant::now() < until, "the call was never reset");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = p.shutdown(Duration::from_millis(300)).await;
    assert!(
        report.undelivered.is_empty(),
        "{} handed back as never sent",
        report.undelivered.len()
    );
    let outcomes = join_all(receipts).await;
    let mut unknown = HashSet::new();
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            Ok(_) => {}
            Err(ReceiptError::Failed(e)) => {
                assert!(
                    matches!(e.reason, FailureReason::Unknown),
                    "{i}: {:?}",
                    e.reason
                );
                assert!(e.possible_duplicate, "{i}");
                assert_eq!(index_of(&e.record.data), i);
                unknown.insert(i);
            }
            Err(e) => panic!("{i}: {e:?}"),
        }
    }
    assert!(
        !unknown.is_empty(),
        "the reset call's records wait for their retry"
    );
    let in_flight: HashSet<usize> = report.in_flight.iter().map(|r| index_of(&r.data)).collect();
    assert_eq!(in_flight, unknown);
    // They are in the stream: "never sent" would have been false.
    let read = read_stream(&s.env.kinesis, &s.stream).await.unwrap();
    let stored: HashSet<usize> = read.records.iter().map(|r| index_of(&r.data)).collect();
    assert!(
        unknown.is_subset(&stored),
        "{:?}",
        unknown.difference(&stored)
    );
}

/// Through the proxy: the service stores a whole call, and its answer comes back with one entry
/// for many records (`Fault::ShortAnswer`). The records past the answer's end must not be left
/// unresolved (a flush hanging, buffer space held) nor counted delivered: the whole call's
/// outcome is unknown, every record is sent again and flagged, and every record read back twice
/// is one of the flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_answer_through_the_proxy_sends_every_record_again_flagged() {
    let Some(s) = setup(1, 12).await else { return };
    let cfg = ProducerConfig {
        // One entry per user record, so the call holds many and the answer one.
        aggregation: false,
        ..ProducerConfig::default()
    };
    let p = producer(&s, cfg).await;
    s.faults
        .kinesis_proxy
        .add_rule(Rule::new(Some("PutRecords"), Fault::ShortAnswer { keep: 1 }).times(1));
    let mut receipts = Vec::new();
    for i in 0..30 {
        receipts.push(p.send(record(i)).await.unwrap());
    }
    tokio::time::timeout(Duration::from_secs(30), p.flush())
        .await
        .expect("the flush is answered")
        .unwrap();
    assert_eq!(
        s.faults
            .kinesis_proxy
            .stats()
            .op("PutRecords")
            .short_answers,
        1
    );
    let mut flagged = HashSet::new();
    for (i, o) in join_all(receipts).await.into_iter().enumerate() {
        let d = o.unwrap_or_else(|e| panic!("{i}: {e:?}"));
        if d.possible_duplicate {
            flagged.insert(i);
        }
    }
    assert!(
        flagged.len() >= 2,
        "the cut call's records are flagged: {flagged:?}"
    );
    let read = read_stream(&s.env.kinesis, &s.stream).await.unwrap();
    let mut times = std::collections::HashMap::new();
    for r in &read.records {
        *times.entry(index_of(&r.data)).or_insert(0) += 1;
    }
    for i in 0..30 {
        match times.get(&i).copied().unwrap_or(0) {
            0 => panic!("{i} lost"),
            1 => {}
            _ => assert!(flagged.contains(&i), "{i} stored twice, not flagged"),
        }
    }
    // The cut call was stored whole and sent again: its records are in the stream twice.
    assert!(times.values().any(|&n| n > 1), "{times:?}");
    p.shutdown(Duration::from_secs(5)).await;
}
