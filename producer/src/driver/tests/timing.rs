//! Time: TTL expiry, the backoff between whole-call failures, shutdown at its deadline.

use tokio::time::{Duration, Instant};

use super::{
    Answer, FakeApi, Seen, config, one_shard, record, sorted_data, start, transient, until_a_call,
};
use crate::error::{AttemptOutcome, FailureReason};
use crate::receipt::ReceiptError;

#[tokio::test(start_paused = true)]
async fn a_record_that_keeps_failing_expires_at_its_ttl_with_the_last_error() {
    let api = FakeApi::new(one_shard(), |_, _| Answer::Error(transient()));
    let cfg = config();
    let (ttl, max_pause) = (cfg.record_ttl, cfg.retry_max_delay);
    let p = start(cfg, one_shard(), &api);
    let sent = Instant::now();
    let receipt = p.send(record("a", "r0")).await.unwrap();
    let err = receipt.await.unwrap_err();
    let took = sent.elapsed();
    let Some(FailureReason::Expired {
        elapsed,
        last_error,
    }) = err.reason()
    else {
        panic!("expected Expired, got {err:?}");
    };
    // It fails when the next attempt would come after the TTL: within one pause of it, and
    // never after it.
    assert!(
        *elapsed <= ttl && *elapsed + max_pause >= ttl,
        "{elapsed:?}"
    );
    assert!(took <= ttl + Duration::from_millis(10), "{took:?}");
    assert!(
        last_error
            .as_deref()
            .is_some_and(|e| e.contains("connection reset by peer")),
        "{last_error:?}"
    );
    let ReceiptError::Failed(e) = err else {
        unreachable!()
    };
    assert_eq!(e.attempts as usize, api.calls().len());
    assert!(e.attempts >= 3, "retried until the TTL: {}", e.attempts);
    // Every attempt is on the failure, as the calls went.
    assert_eq!(e.attempt_log.len(), e.attempts as usize);
    for (a, call) in e.attempt_log.iter().zip(api.calls()) {
        assert_eq!(a.started, call.at - sent, "{a:?}");
        assert!(
            matches!(&a.outcome, AttemptOutcome::CallFailed(err) if err.to_string().contains("connection reset")),
            "{a:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn whole_call_failures_are_retried_after_growing_jittered_pauses() {
    const FAILURES: usize = 6;
    let api = FakeApi::new(one_shard(), |n, _| {
        if n < FAILURES {
            Answer::Error(transient())
        } else {
            Answer::Store
        }
    });
    let mut cfg = config();
    cfg.record_ttl = Duration::from_secs(60);
    cfg.retry_min_delay = Duration::from_millis(100);
    cfg.retry_max_delay = Duration::from_millis(1600);
    let (min, max) = (cfg.retry_min_delay, cfg.retry_max_delay);
    let p = start(cfg, one_shard(), &api);
    let d = p.send(record("a", "r0")).await.unwrap().await.unwrap();
    assert_eq!(d.attempts as usize, FAILURES + 1);
    let calls = api.calls();
    assert_eq!(calls.len(), FAILURES + 1);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    // The n-th pause is drawn in [step/2, step), step = min × 2^n capped at max; the driver
    // sends a due retry within two ticks (5 ms each).
    let tick = Duration::from_millis(11);
    for (n, gap) in gaps.iter().enumerate() {
        let step = (min * 2u32.pow(n as u32)).min(max);
        assert!(
            *gap >= step / 2 && *gap < step + tick,
            "pause {n}: {gap:?} not in [{:?}, {step:?}) ({gaps:?})",
            step / 2
        );
    }
    // Growing: the last pause is several times the first.
    assert!(gaps[FAILURES - 1] > gaps[0] * 4, "{gaps:?}");
    // Jittered: not exactly the steps (equal jitter draws the upper half at random).
    let on_steps = gaps
        .iter()
        .enumerate()
        .filter(|(n, g)| {
            let half = (min * 2u32.pow(*n as u32)).min(max) / 2;
            g.abs_diff(half) < tick
        })
        .count();
    assert!(on_steps < gaps.len(), "no jitter: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_at_its_deadline_handing_back_what_is_unsettled() {
    let api = FakeApi::new(one_shard(), |_, _| Answer::Never);
    let mut cfg = config();
    // One plain record per call, one call at a time: one record in flight, the rest unsent.
    cfg.aggregation = false;
    cfg.collection_max_count = 1;
    cfg.max_in_flight_requests = 1;
    let p = start(cfg, one_shard(), &api);
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(p.send(record("a", &format!("r{i}"))).await.unwrap());
    }
    let started = Instant::now();
    let report = p.shutdown(Duration::from_secs(2)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(2) + Duration::from_millis(10),
        "{took:?}"
    );
    assert_eq!(sorted_data(&report.in_flight), ["r0"]);
    assert_eq!(sorted_data(&report.undelivered), ["r1", "r2"]);
    assert_eq!((report.delivered, report.failed), (0, 3));
    let outcomes = futures::future::join_all(receipts).await;
    let reasons: Vec<String> = outcomes
        .iter()
        .map(|o| format!("{:?}", o.as_ref().unwrap_err().reason().unwrap()))
        .collect();
    assert_eq!(reasons, ["Unknown", "Cancelled", "Cancelled"]);
    // The record in flight lists its unanswered attempt; the others were never sent.
    let logs: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let Err(ReceiptError::Failed(e)) = o else {
                unreachable!()
            };
            e.attempt_log
                .iter()
                .map(|a| format!("{:?} {:?}", a.outcome, a.duration))
                .collect()
        })
        .collect();
    assert_eq!(logs, [vec!["NoAnswer 2s".to_owned()], vec![], vec![]]);
    assert_eq!(api.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn outstanding_records_and_the_oldest_age_follow_records_until_they_settle() {
    // The first call fails as a whole (a retry after a pause), later ones are answered after
    // 500 ms.
    let api = FakeApi::new(one_shard(), |n, _| {
        if n == 0 {
            Answer::Error(transient())
        } else {
            Answer::After(Duration::from_millis(500), Box::new(Answer::Store))
        }
    });
    let p = start(config(), one_shard(), &api);
    assert_eq!((p.outstanding_records(), p.oldest_record_age()), (0, None));
    let started = Instant::now();
    let one = p.send(record("a", "r0")).await.unwrap();
    let batch = p
        .send_batch(vec![record("b", "r1"), record("c", "r2")])
        .await
        .unwrap();
    assert_eq!(
        p.outstanding_records(),
        3,
        "counted as soon as send returns"
    );
    // Stuck: the first call failed, the retry is in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.calls().len(), 2, "retried");
    assert_eq!(p.outstanding_records(), 3);
    let age = p.oldest_record_age().expect("records are unsettled");
    let waited = started.elapsed();
    assert!(
        age >= waited && age <= waited + Duration::from_millis(110),
        "{age:?} vs {waited:?}"
    );
    one.await.unwrap();
    assert_eq!(batch.await.unwrap().delivered, 2);
    assert_eq!((p.outstanding_records(), p.oldest_record_age()), (0, None));
    // Records that are never answered stay counted until shutdown hands them back.
    let api = FakeApi::new(one_shard(), |_, _| Answer::Never);
    let p = start(config(), one_shard(), &api);
    let stuck = p.send(record("a", "r0")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(p.outstanding_records(), 1);
    let age = p.oldest_record_age().unwrap();
    assert!(
        age >= Duration::from_secs(2) && age <= Duration::from_millis(2110),
        "{age:?}"
    );
    let q = p.clone();
    let report = p.shutdown(Duration::from_millis(10)).await;
    assert_eq!(report.in_flight.len(), 1);
    assert!(stuck.await.is_err());
    assert_eq!((q.outstanding_records(), q.oldest_record_age()), (0, None));
}

/// An aggregate's members point into its buffer while buffered; a record handed back (failed,
/// or in a shutdown report) owns its data, so a caller keeping it does not keep the aggregate.
#[tokio::test(start_paused = true)]
async fn records_handed_back_from_an_aggregate_own_their_data() {
    let api = FakeApi::new(one_shard(), |_, _| Answer::FailEntries("InternalFailure"));
    let p = start(config(), one_shard(), &api);
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(p.send(record("a", &format!("r{i}"))).await.unwrap());
    }
    for (i, r) in receipts.into_iter().enumerate() {
        let ReceiptError::Failed(e) = r.await.unwrap_err() else {
            panic!("expected a failure")
        };
        assert_eq!(e.record.data, format!("r{i}").as_bytes());
        assert!(e.record.data.is_unique(), "owns its data");
    }
    assert!(
        api.calls()
            .iter()
            .any(|c| c.records.iter().any(|kr| kr.user_records == 3)),
        "they went as one aggregate"
    );

    let api = FakeApi::new(one_shard(), |_, _| Answer::Never);
    let p = start(config(), one_shard(), &api);
    let mut receipts = Vec::new();
    for i in 0..3 {
        receipts.push(p.send(record("a", &format!("r{i}"))).await.unwrap());
    }
    until_a_call(&api).await;
    let report = p.shutdown(Duration::from_millis(100)).await;
    assert_eq!(sorted_data(&report.in_flight), ["r0", "r1", "r2"]);
    for r in &report.in_flight {
        assert!(r.data.is_unique(), "owns its data");
    }
    drop(receipts);
}

/// An aggregate's members travel in a call without their data (it is in the aggregate's
/// bytes): every outcome but storage gives each its own back first — sent again after a failed
/// call or failed entries, failed back to the caller (rejected; throttled with
/// `fail_if_throttled`), handed back by a shutdown. Checked by the data itself, not by counts.
#[tokio::test(start_paused = true)]
async fn members_in_a_call_get_their_own_data_back_on_every_outcome_but_storage() {
    let data = |i: usize| format!("rec-{i}");
    let records = || (0..5).map(|i| record(&format!("k{i}"), &data(i)));
    let want: Vec<String> = (0..5).map(data).collect();

    // Sent again: the call fails whole, then every entry fails, then it is stored.
    let api = FakeApi::new(one_shard(), |n, _| match n {
        0 => Answer::Error(transient()),
        1 => Answer::FailEntries("InternalFailure"),
        _ => Answer::Store,
    });
    let p = start(config(), one_shard(), &api);
    let outcome = p.send_batch(records().collect()).await.unwrap();
    assert!(outcome.await.unwrap().all_delivered());
    let calls = api.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.records.len() == 1), "one aggregate");
    for c in &calls {
        assert_eq!(
            c.user_records(),
            want,
            "each attempt carries every record's data"
        );
    }

    // Failed back to the caller: a call rejected, entries throttled with fail_if_throttled.
    let rejected = || {
        kinesis_core::AwsError::other(
            "PutRecords",
            kinesis_core::ErrorKind::Invalid,
            "request rejected",
        )
    };
    for throttled in [false, true] {
        let api = FakeApi::new(one_shard(), move |_, _| {
            if throttled {
                Answer::FailEntries("ProvisionedThroughputExceededException")
            } else {
                Answer::Error(rejected())
            }
        });
        let mut cfg = config();
        cfg.fail_if_throttled = true;
        let p = start(cfg, one_shard(), &api);
        let mut receipts = Vec::new();
        for r in records() {
            receipts.push(p.send(r).await.unwrap());
        }
        let mut back = Vec::new();
        for r in receipts {
            let ReceiptError::Failed(e) = r.await.unwrap_err() else {
                panic!("expected a failure")
            };
            back.push(String::from_utf8_lossy(&e.record.data).into_owned());
        }
        assert_eq!(back, want, "throttled: {throttled}");
        assert_eq!(api.calls()[0].records[0].user_records, 5, "one aggregate");
    }

    // Handed back by a shutdown while the call is in flight.
    let api = FakeApi::new(one_shard(), |_, _| Answer::Never);
    let p = start(config(), one_shard(), &api);
    let batch = p.send_batch(records().collect()).await.unwrap();
    until_a_call(&api).await;
    let report = p.shutdown(Duration::from_millis(100)).await;
    assert_eq!(sorted_data(&report.in_flight), want);
    drop(batch);
}

/// Review: records waiting to go again after a call with no readable outcome (they may be in
/// the stream) were handed back at shutdown as never sent (`Cancelled`, `undelivered`): a
/// caller sending them again would make duplicates nothing flags. They are `Unknown`,
/// `in_flight`; records never attempted stay `Cancelled`.
#[tokio::test(start_paused = true)]
async fn records_that_may_be_stored_are_not_handed_back_as_never_sent() {
    // The first call fails with its outcome unknown; the retry waits out the call backoff
    // (100 ms), and the shutdown's deadline comes first.
    let api = FakeApi::new(one_shard(), |n, _| {
        if n == 0 {
            Answer::Error(transient().with_outcome_unknown())
        } else {
            Answer::Never
        }
    });
    let mut cfg = config();
    cfg.max_in_flight_requests = 1;
    let p = start(cfg, one_shard(), &api);
    let mut maybe = Vec::new();
    for i in 0..3 {
        maybe.push(p.send(record("a", &format!("m{i}"))).await.unwrap());
    }
    until_a_call(&api).await;
    let report = p.shutdown(Duration::from_millis(20)).await;
    assert_eq!(api.calls().len(), 1, "the retry had not gone");
    assert_eq!(sorted_data(&report.in_flight), ["m0", "m1", "m2"]);
    assert!(report.undelivered.is_empty(), "{:?}", report.undelivered);
    for r in maybe {
        let ReceiptError::Failed(e) = r.await.unwrap_err() else {
            panic!("expected a failure")
        };
        assert!(matches!(e.reason, FailureReason::Unknown), "{:?}", e.reason);
        assert!(e.possible_duplicate);
    }

    // Expired after such an attempt: the failure says it may be stored; after attempts known
    // not to have been applied, it does not.
    for unknown_first in [true, false] {
        let api = FakeApi::new(one_shard(), move |n, _| {
            if n == 0 && unknown_first {
                Answer::Error(transient().with_outcome_unknown())
            } else {
                Answer::Error(transient())
            }
        });
        let p = start(config(), one_shard(), &api);
        let r = p.send(record("a", "x")).await.unwrap();
        let ReceiptError::Failed(e) = r.await.unwrap_err() else {
            panic!("expected a failure")
        };
        assert!(
            matches!(e.reason, FailureReason::Expired { .. }),
            "{:?}",
            e.reason
        );
        assert_eq!(e.possible_duplicate, unknown_first);
        assert!(e.attempts > 1);
    }
}

/// Review: an answer with fewer entries than the call's records dropped the records past its
/// end (their receipts never resolved, their buffer space held, a flush waiting forever). Now
/// the whole call's outcome is unknown: every record is sent again, flagged.
#[tokio::test(start_paused = true)]
async fn a_short_answer_sends_every_record_again_flagged() {
    let api = FakeApi::new(one_shard(), |n, _| {
        if n == 0 {
            Answer::StoreFirst(1)
        } else {
            Answer::Store
        }
    });
    let mut cfg = config();
    // Plain records, three to a call: the answer holds only the first.
    cfg.aggregation = false;
    let p = start(cfg, one_shard(), &api);
    let outcome = p
        .send_batch((0..3).map(|i| record("a", &format!("s{i}"))).collect())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome)
        .await
        .expect("every record settles")
        .unwrap();
    assert!(outcome.all_delivered());
    assert_eq!(outcome.possible_duplicates, [0, 1, 2]);
    let calls = api.calls();
    assert_eq!(calls[0].records.len(), 3, "one call of three");
    let again: Vec<String> = calls[1..].iter().flat_map(Seen::user_records).collect();
    assert_eq!(again, ["s0", "s1", "s2"]);
    tokio::time::timeout(Duration::from_secs(1), p.flush())
        .await
        .expect("a flush is answered")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_producer_refreshes_its_map_once_per_interval() {
    // Review: while the idle refresh ran, the idle timer (still at the old due time) fired again
    // and asked for another: two ListShards per interval.
    let api = FakeApi::new(one_shard(), |_, _| Answer::Store);
    api.script_lists(
        (0..10)
            .map(|_| (Duration::from_millis(100), Ok(one_shard())))
            .collect(),
    );
    let mut cfg = config();
    cfg.shard_map_refresh_interval = Duration::from_secs(10);
    let p = start(cfg, one_shard(), &api);
    p.send(record("a", "r0")).await.unwrap().await.unwrap();
    let start = Instant::now();
    for interval in 1..=3 {
        tokio::time::sleep_until(
            start + Duration::from_secs(10 * interval) + Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            api.list_calls(),
            interval as usize,
            "after {interval} intervals"
        );
    }
}

/// An aggregate waits for its call without its MD5, its members' data moved into it: every way
/// out other than a call must give each member its own data back. Records held back by the
/// shard's rate limit (4 MB for one shard at 1.5 MB/s) sit in its queue as such aggregates; those
/// past their TTL expire from there, and a shutdown hands back what is left, each with the data
/// it was sent with.
#[tokio::test(start_paused = true)]
async fn records_leaving_aggregates_that_never_went_get_their_own_data_back() {
    let data = |i: usize| format!("{i:05}").repeat(2_000);
    let index = |d: &[u8]| -> usize { std::str::from_utf8(&d[..5]).unwrap().parse().unwrap() };
    for shutdown_early in [false, true] {
        let api = FakeApi::new(one_shard(), |_, _| Answer::Store);
        let mut cfg = config();
        cfg.record_ttl = Duration::from_millis(700);
        let p = start(cfg, one_shard(), &api);
        let mut receipts = Vec::new();
        for i in 0..400 {
            let key = format!("k{}", i % 7);
            receipts.push(p.send(record(&key, &data(i))).await.unwrap());
        }
        let report = if shutdown_early {
            Some(p.clone().shutdown(Duration::ZERO).await)
        } else {
            None
        };
        let (mut delivered, mut failed) = (0, 0);
        for (i, r) in receipts.into_iter().enumerate() {
            match r.await {
                Ok(_) => delivered += 1,
                Err(ReceiptError::Failed(e)) => {
                    assert_eq!(e.record.data, data(i).as_bytes(), "record {i}: {e}");
                    if !shutdown_early {
                        assert!(matches!(e.reason, FailureReason::Expired { .. }), "{e}");
                    }
                    failed += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(delivered + failed, 400);
        assert!(
            failed > 0,
            "some waited in the queue (shutdown early: {shutdown_early})"
        );
        if let Some(report) = report {
            let mut back: Vec<usize> = report
                .undelivered
                .iter()
                .chain(&report.in_flight)
                .map(|r| {
                    let i = index(&r.data);
                    assert_eq!(r.data, data(i).as_bytes());
                    i
                })
                .collect();
            back.sort_unstable();
            back.dedup();
            assert_eq!(back.len(), failed, "each failed record handed back once");
        } else {
            assert!(delivered > 0);
        }
    }
}
