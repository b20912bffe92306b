//! Where records go: flushes, wrong-shard stores after a reshard, throttles, per-key order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Duration;

use super::{
    Answer, FakeApi, config, one_shard, record, record_at, shard, shard_id, start, transient,
};
use crate::error::{AttemptOutcome, FailureReason};

/// Whether any user record of the call has this data.
fn holds(records: &[kinesis_core::KinesisRecord], data: &str) -> bool {
    super::Seen {
        at: tokio::time::Instant::now(),
        records: records.to_vec(),
    }
    .user_records()
    .iter()
    .any(|d| d == data)
}

#[tokio::test(start_paused = true)]
async fn a_flush_waits_for_exactly_the_records_sent_before_it() {
    // Calls are answered after 50 ms; a call holding "late" is never answered.
    let api = FakeApi::new(one_shard(), |_, records| {
        if holds(records, "late") {
            Answer::Never
        } else {
            Answer::After(Duration::from_millis(50), Box::new(Answer::Store))
        }
    });
    let mut cfg = config();
    // Records wait for company long enough that only the flush sends them.
    cfg.record_max_buffered_time = Duration::from_secs(1);
    let p = start(cfg, one_shard(), &api);
    let a = p.send(record("a", "early-1")).await.unwrap();
    let b = p.send(record("b", "early-2")).await.unwrap();
    let flush = p.flush();
    tokio::pin!(flush);
    // The flush is asked for (its command is sent) ...
    assert!(futures::poll!(&mut flush).is_pending());
    // ... and then another record comes.
    let mut late = p.send(record("c", "late")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut flush)
        .await
        .expect("the flush does not wait for a record sent after it")
        .unwrap();
    // What was sent before it is settled.
    assert!(futures::poll!(a).is_ready());
    assert!(futures::poll!(b).is_ready());
    assert!(futures::poll!(&mut late).is_pending());
}

#[tokio::test(start_paused = true)]
async fn an_aggregate_stored_on_a_shard_not_owning_its_keys_is_sent_again() {
    const HALF: u128 = u128::MAX / 2;
    // The producer still believes in one shard; the stream split it in two.
    let split = vec![
        shard("shardId-000000000000", 0, u128::MAX, false),
        shard("shardId-000000000001", 0, HALF, true),
        shard("shardId-000000000002", HALF + 1, u128::MAX, true),
    ];
    let api = FakeApi::new(split, |n, _| {
        if n == 0 {
            // The whole aggregate lands on the lower child: the upper key is outside it.
            Answer::StoreOn("shardId-000000000001")
        } else {
            Answer::Store
        }
    });
    let p = start(config(), one_shard(), &api);
    let low = p.send(record_at(1, "low")).await.unwrap();
    let high = p.send(record_at(u128::MAX - 1, "high")).await.unwrap();
    let (low, high) = (low.await.unwrap(), high.await.unwrap());
    assert!(api.list_calls() >= 1, "the map is refreshed");
    let calls = api.calls();
    assert_eq!(
        calls[0].user_records(),
        ["low", "high"],
        "one aggregate at first"
    );
    // Sent again, each to the shard that owns its key, flagged: the first copy is in the stream
    // (a KCL consumer drops it whole).
    for (d, shard) in [
        (&low, "shardId-000000000001"),
        (&high, "shardId-000000000002"),
    ] {
        assert_eq!(d.shard_id, shard_id(shard));
        assert!(d.possible_duplicate, "{d:?}");
        assert_eq!(d.attempts, 2);
    }
    assert_ne!(
        low.sequence_number, high.sequence_number,
        "not one aggregate again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_entry_slows_its_shard_and_is_retried() {
    let api = FakeApi::new(one_shard(), |n, _| {
        if n == 0 {
            Answer::FailEntries("ProvisionedThroughputExceededException")
        } else {
            Answer::Store
        }
    });
    let p = start(config(), one_shard(), &api);
    let d = p.send(record("a", "r0")).await.unwrap().await.unwrap();
    assert_eq!(d.attempts, 2);
    assert_eq!(api.calls().len(), 2);
    let scales = p
        .probe(|d| {
            d.buffers
                .shards
                .values()
                .filter_map(|s| s.limiter.as_ref().map(crate::limiter::ShardLimiter::scale))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    assert_eq!(scales.len(), 1);
    assert!(scales[0] < 0.8, "the shard's rate is cut: {scales:?}");
}

#[tokio::test(start_paused = true)]
async fn with_fail_if_throttled_a_throttled_record_fails() {
    let api = FakeApi::new(one_shard(), |_, _| {
        Answer::FailEntries("ProvisionedThroughputExceededException")
    });
    let mut cfg = config();
    cfg.fail_if_throttled = true;
    let p = start(cfg, one_shard(), &api);
    let err = p.send(record("a", "r0")).await.unwrap().await.unwrap_err();
    match err.reason() {
        Some(FailureReason::Throttled(text)) => {
            assert!(
                text.contains("ProvisionedThroughputExceededException"),
                "{text}"
            );
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert_eq!(api.calls().len(), 1, "not retried");
}

/// Sends r0, then (while r0's first call is in flight, to fail) r1 and r2 of the same key;
/// returns the user records of every call, in order.
async fn order_across_a_retry(preserve_order: bool) -> Vec<Vec<String>> {
    let failed = Arc::new(AtomicBool::new(false));
    let api = FakeApi::new(one_shard(), {
        let failed = Arc::clone(&failed);
        move |_, records| {
            if holds(records, "r0") && !failed.swap(true, Ordering::Relaxed) {
                Answer::After(
                    Duration::from_millis(50),
                    Box::new(Answer::Error(transient())),
                )
            } else {
                Answer::Store
            }
        }
    });
    let mut cfg = config();
    cfg.preserve_order = preserve_order;
    let p = start(cfg, one_shard(), &api);
    let r0 = p.send(record("k", "r0")).await.unwrap();
    // r0 goes after record_max_buffered_time (10 ms); its call fails at 60 ms.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(api.calls().len(), 1, "r0 is in flight");
    let r1 = p.send(record("k", "r1")).await.unwrap();
    let r2 = p.send(record("k", "r2")).await.unwrap();
    for r in [r0, r1, r2] {
        r.await.unwrap();
    }
    api.calls().iter().map(super::Seen::user_records).collect()
}

#[tokio::test(start_paused = true)]
async fn with_preserve_order_a_retried_record_goes_before_later_ones_of_its_key() {
    let calls = order_across_a_retry(true).await;
    let flat: Vec<&str> = calls.iter().flatten().map(String::as_str).collect();
    assert_eq!(flat, ["r0", "r0", "r1", "r2"], "calls: {calls:?}");
    // Without it, the later records do not wait for the retry (so the test above means
    // something).
    let calls = order_across_a_retry(false).await;
    let flat: Vec<&str> = calls.iter().flatten().map(String::as_str).collect();
    assert_eq!(flat, ["r0", "r1", "r2", "r0"], "calls: {calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_throttled_then_expired_record_lists_its_throttled_attempts() {
    let api = FakeApi::new(one_shard(), |_, _| {
        Answer::FailEntries("ProvisionedThroughputExceededException")
    });
    let mut cfg = config();
    cfg.record_ttl = Duration::from_secs(1);
    let p = start(cfg, one_shard(), &api);
    let err = p.send(record("a", "r0")).await.unwrap().await.unwrap_err();
    assert!(
        matches!(err.reason(), Some(FailureReason::Expired { .. })),
        "{err:?}"
    );
    let crate::ReceiptError::Failed(e) = err else {
        unreachable!()
    };
    assert!(e.attempts > 1, "retried: {}", e.attempts);
    assert_eq!(e.attempt_log.len(), e.attempts as usize);
    for a in &e.attempt_log {
        assert_eq!(
            a.error_code(),
            Some("ProvisionedThroughputExceededException"),
            "{a:?}"
        );
        assert!(
            matches!(&a.outcome, AttemptOutcome::EntryFailed { message, .. } if &**message == "scripted")
        );
    }
    let starts: Vec<Duration> = e.attempt_log.iter().map(|a| a.started).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
    // The TTL is checked as a record enters the collector, where it may wait up to
    // record_max_buffered_time (10 ms) more: the last attempt can start that late.
    assert!(
        *starts.last().unwrap() < Duration::from_millis(1010),
        "{:?}",
        &starts[starts.len() - 3..]
    );
}
