//! The Firehose driver through a scripted fake API, under Tokio's paused clock: no real sleeps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use kinesis_core::{AwsError, ErrorKind};
use tokio::time::Instant;

use super::api::{EntryOutcome, FirehoseApi};
use super::{FirehoseConfig, FirehoseProducer, FirehoseReceiptError};
use crate::error::{AttemptOutcome, FailureReason, SendError, TrySendErrorKind};

/// How the fake answers one call.
enum Answer {
    /// Every entry stored.
    Store,
    /// Entries at these positions fail with this code; the rest are stored.
    Fail(Vec<usize>, &'static str),
    /// The whole call fails.
    Error(ErrorKind, &'static str, bool),
    /// No answer, ever.
    Never,
}

type Script = Box<dyn FnMut(usize, &[Bytes]) -> Answer + Send>;

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    records: Vec<Bytes>,
}

struct Fake {
    script: Mutex<Script>,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    fn new(script: impl FnMut(usize, &[Bytes]) -> Answer + Send + 'static) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(Box::new(script)),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl FirehoseApi for Fake {
    fn put_record_batch(
        &self,
        _stream: Arc<str>,
        records: Vec<Bytes>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<EntryOutcome>, AwsError>> {
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(Seen {
                at: Instant::now(),
                records: records.clone(),
            });
            seen.len() - 1
        };
        let answer = (self.script.lock().unwrap())(n, &records);
        Box::pin(async move {
            match answer {
                Answer::Store => Ok((0..records.len())
                    .map(|i| EntryOutcome::Ok(format!("id-{n}-{i}").into()))
                    .collect()),
                Answer::Fail(at, code) => Ok((0..records.len())
                    .map(|i| {
                        if at.contains(&i) {
                            EntryOutcome::Failed {
                                code: code.into(),
                                message: "nope".into(),
                            }
                        } else {
                            EntryOutcome::Ok(format!("id-{n}-{i}").into())
                        }
                    })
                    .collect()),
                Answer::Error(kind, text, unknown) => {
                    let e = AwsError::other("PutRecordBatch", kind, text);
                    Err(if unknown { e.with_outcome_unknown() } else { e })
                }
                Answer::Never => std::future::pending().await,
            }
        })
    }
}

fn start(cfg: FirehoseConfig, api: &Arc<Fake>) -> FirehoseProducer {
    let api: Arc<dyn FirehoseApi> = Arc::clone(api) as Arc<dyn FirehoseApi>;
    FirehoseProducer::with_api(api, cfg)
}

fn rec(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

#[tokio::test(start_paused = true)]
async fn records_go_in_batches_within_the_limits_and_every_receipt_resolves() {
    let api = Fake::new(|_, _| Answer::Store);
    let cfg = FirehoseConfig {
        batch_max_records: 3,
        ..FirehoseConfig::default()
    };
    let p = start(cfg, &api);
    let mut receipts = Vec::new();
    for i in 0..7 {
        receipts.push(p.send(rec(&format!("r{i}"))).await.unwrap());
    }
    for r in receipts {
        let d = r.await.unwrap();
        assert_eq!(d.attempts, 1);
        assert!(!d.possible_duplicate);
    }
    let sizes: Vec<usize> = api.calls().iter().map(|c| c.records.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 7);
    assert!(sizes.iter().all(|&n| n <= 3), "{sizes:?}");
    assert_eq!(p.outstanding_records(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lone_record_waits_max_buffered_time_for_company_then_goes() {
    let api = Fake::new(|_, _| Answer::Store);
    let cfg = FirehoseConfig::default();
    let linger = cfg.max_buffered_time;
    let p = start(cfg, &api);
    let sent = Instant::now();
    p.send(rec("a")).await.unwrap().await.unwrap();
    let at = api.calls()[0].at - sent;
    assert!(
        at >= linger && at < linger + Duration::from_millis(10),
        "{at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_entries_alone_are_retried_after_a_pause_and_say_how_many_attempts() {
    let api = Fake::new(|n, _| {
        if n == 0 {
            Answer::Fail(vec![1], "ServiceUnavailableException")
        } else {
            Answer::Store
        }
    });
    let p = start(FirehoseConfig::default(), &api);
    let r = p
        .send_batch(vec![rec("a"), rec("b"), rec("c")])
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(r.all_delivered(), "{r:?}");
    assert_eq!(r.delivered, 3);
    let calls = api.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].records,
        vec![rec("b")],
        "only the failed entry again"
    );
    // ServiceUnavailableException is Firehose's throttle: at least the throttle step.
    let pause = calls[1].at - calls[0].at;
    assert!(pause >= Duration::from_millis(250), "{pause:?}");
}

#[tokio::test(start_paused = true)]
async fn errors_retrying_cannot_fix_fail_at_once_and_hand_the_record_back() {
    let api =
        Fake::new(|_, _| Answer::Error(ErrorKind::NotFound, "ResourceNotFoundException", false));
    let p = start(FirehoseConfig::default(), &api);
    let started = Instant::now();
    let err = p.send(rec("x")).await.unwrap().await.unwrap_err();
    let FirehoseReceiptError::Failed(e) = err else {
        panic!("expected a failure")
    };
    assert!(matches!(e.reason, FailureReason::Rejected(_)), "{e:?}");
    assert_eq!(e.record, rec("x"));
    assert_eq!(e.attempts, 1);
    assert_eq!(api.calls().len(), 1, "no retry");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_record_that_keeps_failing_expires_at_its_ttl_with_every_attempt_listed() {
    let api = Fake::new(|_, _| Answer::Error(ErrorKind::Transient, "connection reset", true));
    let cfg = FirehoseConfig::default();
    let ttl = cfg.record_ttl;
    let p = start(cfg, &api);
    let sent = Instant::now();
    let err = p.send(rec("x")).await.unwrap().await.unwrap_err();
    let took = sent.elapsed();
    let FirehoseReceiptError::Failed(e) = err else {
        panic!("expected a failure")
    };
    let FailureReason::Expired { last_error, .. } = &e.reason else {
        panic!("expected Expired, got {:?}", e.reason)
    };
    assert!(
        last_error
            .as_deref()
            .is_some_and(|t| t.contains("connection reset"))
    );
    assert!(took <= ttl, "{took:?}");
    assert!(e.attempts >= 3, "{}", e.attempts);
    assert_eq!(e.attempt_log.len(), e.attempts as usize);
    assert!(
        e.attempt_log
            .iter()
            .all(|a| matches!(a.outcome, AttemptOutcome::CallFailed(_)))
    );
    // Pauses grow between whole-call failures.
    let at: Vec<Duration> = api.calls().windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(at.last() > at.first(), "{at:?}");
}

#[tokio::test(start_paused = true)]
async fn a_call_with_an_unknown_outcome_is_retried_and_marked_possible_duplicate() {
    let api = Fake::new(|n, _| {
        if n == 0 {
            Answer::Error(ErrorKind::Transient, "timeout", true)
        } else {
            Answer::Store
        }
    });
    let p = start(FirehoseConfig::default(), &api);
    let d = p.send(rec("x")).await.unwrap().await.unwrap();
    assert_eq!(d.attempts, 2);
    assert!(d.possible_duplicate);
}

#[tokio::test(start_paused = true)]
async fn joined_records_travel_as_one_firehose_record_back_to_back() {
    let api = Fake::new(|_, _| Answer::Store);
    let cfg = FirehoseConfig {
        join_records_up_to: 10,
        ..FirehoseConfig::default()
    };
    let p = start(cfg, &api);
    let r = p
        .send_batch(vec![
            rec("aaa\n"),
            rec("bbb\n"),
            rec("ccc\n"),
            rec("0123456789abc\n"),
        ])
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(r.delivered, 4);
    let records: Vec<Bytes> = api.calls().into_iter().flat_map(|c| c.records).collect();
    assert_eq!(
        records,
        vec![rec("aaa\nbbb\n"), rec("ccc\n"), rec("0123456789abc\n")],
        "joined up to 10 bytes; a larger record alone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_buffer_holds_send_back_and_try_send_refuses() {
    let api = Fake::new(|_, _| Answer::Never);
    let cfg = FirehoseConfig {
        max_buffered_bytes: super::firehose_buffer_cost(super::FIREHOSE_MAX_RECORD_BYTES),
        ..FirehoseConfig::default()
    };
    let big = Bytes::from(vec![b'x'; super::FIREHOSE_MAX_RECORD_BYTES]);
    let p = start(cfg, &api);
    let _first = p.send(big.clone()).await.unwrap();
    let refused = p.try_send(rec("y")).unwrap_err();
    assert_eq!(refused.kind, TrySendErrorKind::Full);
    assert_eq!(refused.record, rec("y"));
    let waits = tokio::time::timeout(Duration::from_secs(5), p.send(rec("z"))).await;
    assert!(waits.is_err(), "send waits while the buffer is full");
    let too_big = p
        .send(Bytes::from(vec![0; super::FIREHOSE_MAX_RECORD_BYTES + 1]))
        .await
        .unwrap_err();
    assert!(matches!(too_big, SendError::RecordTooLarge { .. }));
}

#[tokio::test(start_paused = true)]
async fn flush_returns_once_what_was_sent_before_it_is_settled() {
    let api = Fake::new(|_, _| Answer::Store);
    let cfg = FirehoseConfig {
        max_buffered_time: Duration::from_secs(60),
        ..FirehoseConfig::default()
    };
    let p = start(cfg, &api);
    let r = p.send(rec("a")).await.unwrap();
    let t = Instant::now();
    p.flush().await;
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "flush sends at once"
    );
    assert_eq!(p.outstanding_records(), 0);
    r.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_at_its_deadline_handing_back_what_is_unsettled() {
    let api = Fake::new(|_, _| Answer::Never);
    let cfg = FirehoseConfig {
        max_in_flight_requests: 1,
        batch_max_records: 1,
        ..FirehoseConfig::default()
    };
    let p = start(cfg, &api);
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(p.send(rec(&format!("r{i}"))).await.unwrap());
    }
    let t = Instant::now();
    let report = p.shutdown(Duration::from_secs(2)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2010),
        "{took:?}"
    );
    assert_eq!(report.in_flight, vec![rec("r0")]);
    let mut unsent = report.undelivered.clone();
    unsent.sort();
    assert_eq!(unsent, vec![rec("r1"), rec("r2")]);
    let reasons: Vec<String> = futures::future::join_all(receipts)
        .await
        .into_iter()
        .map(|r| match r {
            Err(FirehoseReceiptError::Failed(e)) => format!("{:?}", e.reason),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(reasons, ["Unknown", "Cancelled", "Cancelled"]);
    assert!(matches!(p.send(rec("late")).await, Err(SendError::Closed)));
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_settles_every_record() {
    let api = Fake::new(|_, _| Answer::Never);
    let p = start(FirehoseConfig::default(), &api);
    let r = p.send(rec("a")).await.unwrap();
    drop(p);
    let FirehoseReceiptError::Failed(e) = r.await.unwrap_err() else {
        panic!("expected a failure")
    };
    assert!(matches!(
        e.reason,
        FailureReason::Cancelled | FailureReason::Unknown
    ));
    assert_eq!(e.record, rec("a"));
}
