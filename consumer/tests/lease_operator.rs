//! The operator's writes to the lease table (`kinesis leases reset|release|delete-table`)
//! against the embedded DynamoDB emulator: fenced by the counter only, whoever holds the lease.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use kinesis_consumer::{Lease, LeaseStore, StoreError};
use kinesis_core::{Checkpoint, SequenceNumber};
use kinesis_testkit::{TestEnv, unique_name};

async fn store(env: &TestEnv) -> LeaseStore {
    let s = LeaseStore::new(env.dynamodb.clone(), unique_name("app"));
    s.ensure_table(false, Duration::from_secs(30))
        .await
        .unwrap();
    s
}

fn seq(s: &str, sub: u64) -> Checkpoint {
    Checkpoint::Sequence {
        sequence_number: SequenceNumber::parse(s).unwrap(),
        sub_sequence_number: sub,
    }
}

#[tokio::test]
async fn reset_moves_the_checkpoint_frees_the_lease_and_fences_the_owner() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    let l = Lease::new("shardId-000000000000", Checkpoint::TrimHorizon);
    s.create_if_not_exists(&l).await.unwrap();
    let mut a = s.take(&l, "a").await.unwrap();
    a.lease_counter = s
        .prepare_checkpoint(&a, "a", &seq("9", 2), None)
        .await
        .unwrap();
    a.lease_counter = s.checkpoint(&a, "a", &seq("7", 1)).await.unwrap();
    a.lease_counter = s
        .prepare_checkpoint(&a, "a", &seq("9", 2), Some(b"st"))
        .await
        .unwrap();
    let held = s.get(&l.lease_key).await.unwrap().unwrap();

    let next = s.reset_checkpoint(&held, &seq("3", 0)).await.unwrap();
    let got = s.get(&l.lease_key).await.unwrap().unwrap();
    assert_eq!(got.lease_counter, next);
    assert_eq!(next, held.lease_counter + 1);
    assert_eq!(got.checkpoint, seq("3", 0));
    assert_eq!(got.lease_owner, None, "freed: the next worker starts there");
    assert_eq!(
        (got.pending_checkpoint, got.pending_checkpoint_state),
        (None, None)
    );
    // The old owner is fenced out.
    assert!(matches!(
        s.checkpoint(&a, "a", &seq("10", 0)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.renew(&a, "a").await,
        Err(StoreError::Conflict(_))
    ));
    // A reset from a stale read fails and changes nothing.
    assert!(matches!(
        s.reset_checkpoint(&held, &Checkpoint::Latest).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.get(&l.lease_key).await.unwrap().unwrap().checkpoint,
        seq("3", 0)
    );
    // Sentinels too.
    let got = s.get(&l.lease_key).await.unwrap().unwrap();
    s.reset_checkpoint(&got, &Checkpoint::Latest).await.unwrap();
    assert_eq!(
        s.get(&l.lease_key).await.unwrap().unwrap().checkpoint,
        Checkpoint::Latest
    );
}

#[tokio::test]
async fn evict_frees_a_lease_whoever_holds_it_unless_it_moved() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    let l = Lease::new("shardId-000000000001", Checkpoint::TrimHorizon);
    s.create_if_not_exists(&l).await.unwrap();
    let a = s.take(&l, "a").await.unwrap();
    let renewed = s.renew(&a, "a").await.unwrap();
    // Read before the renewal: refused, nothing changed.
    assert!(matches!(s.evict(&a).await, Err(StoreError::Conflict(_))));
    let got = s.get(&l.lease_key).await.unwrap().unwrap();
    assert_eq!(
        (got.lease_owner.as_deref(), got.lease_counter),
        (Some("a"), renewed)
    );
    // Read now: freed, counter bumped, the checkpoint kept.
    assert_eq!(s.evict(&got).await.unwrap(), renewed + 1);
    let after = s.get(&l.lease_key).await.unwrap().unwrap();
    assert_eq!(after.lease_owner, None);
    assert_eq!(after.checkpoint, Checkpoint::TrimHorizon);
    // A missing lease is a conflict, not a new item.
    let ghost = Lease::new("shardId-000000000099", Checkpoint::TrimHorizon);
    assert!(matches!(
        s.evict(&ghost).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.get(&ghost.lease_key).await.unwrap().is_none());
}

#[tokio::test]
async fn delete_table_deletes_it_and_a_missing_table_is_an_error() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    s.create_if_not_exists(&Lease::new("shardId-000000000000", Checkpoint::Latest))
        .await
        .unwrap();
    s.delete_table().await.unwrap();
    assert!(s.list().await.is_err(), "the table is gone");
    let Err(StoreError::Aws(e)) = s.delete_table().await else {
        panic!("deleting a missing table must fail");
    };
    assert_eq!(e.kind(), kinesis_core::ErrorKind::NotFound);
}
