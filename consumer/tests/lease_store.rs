//! The lease table against the embedded DynamoDB emulator: KCL schema, fencing, races.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use kinesis_consumer::{Lease, LeaseStore, StoreError};
use kinesis_core::{Checkpoint, HashKey, HashKeyRange, SequenceNumber};
use kinesis_testkit::{TestEnv, unique_name};

async fn store(env: &TestEnv) -> LeaseStore {
    let s = LeaseStore::new(env.dynamodb.clone(), unique_name("app"));
    s.ensure_table(true, Duration::from_secs(30)).await.unwrap();
    s
}

fn seq(s: &str, sub: u64) -> Checkpoint {
    Checkpoint::Sequence {
        sequence_number: SequenceNumber::parse(s).unwrap(),
        sub_sequence_number: sub,
    }
}

#[tokio::test]
async fn items_are_written_in_the_kcl_schema() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    // ensure_table twice is fine.
    s.ensure_table(true, Duration::from_secs(5)).await.unwrap();
    let mut l = Lease::new("shardId-000000000002", Checkpoint::TrimHorizon);
    l.parent_shard_ids = vec!["shardId-000000000000".into(), "shardId-000000000001".into()];
    l.hash_key_range = Some(HashKeyRange::new(HashKey(10), HashKey(20)).unwrap());
    assert!(s.create_if_not_exists(&l).await.unwrap());
    assert!(
        !s.create_if_not_exists(&l).await.unwrap(),
        "second create is a no-op"
    );
    let taken = s.take(&l, "worker-1").await.unwrap();
    s.checkpoint(
        &taken,
        "worker-1",
        &seq(
            "49590338271490256608559692538361571095921575989136588898",
            3,
        ),
    )
    .await
    .unwrap();

    let items = s.raw_items().await.unwrap();
    assert_eq!(items.len(), 1);
    let it = &items[0];
    assert_eq!(
        it["leaseKey"],
        AttributeValue::S("shardId-000000000002".into())
    );
    assert_eq!(it["leaseOwner"], AttributeValue::S("worker-1".into()));
    assert_eq!(it["leaseCounter"], AttributeValue::N("2".into()));
    assert_eq!(
        it["checkpoint"],
        AttributeValue::S("49590338271490256608559692538361571095921575989136588898".into())
    );
    assert_eq!(
        it["checkpointSubSequenceNumber"],
        AttributeValue::N("3".into())
    );
    assert_eq!(
        it["ownerSwitchesSinceCheckpoint"],
        AttributeValue::N("0".into())
    );
    let AttributeValue::Ss(parents) = &it["parentShardId"] else {
        panic!("parentShardId must be SS")
    };
    assert_eq!(parents.len(), 2);
    assert_eq!(it["startingHashKey"], AttributeValue::S("10".into()));
    assert_eq!(it["endingHashKey"], AttributeValue::S("20".into()));
    assert!(!it.contains_key("pendingCheckpoint"));
}

#[tokio::test]
async fn a_table_with_another_key_schema_is_refused() {
    let env = TestEnv::start().await;
    let name = unique_name("other");
    env.dynamodb
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let err = LeaseStore::new(env.dynamodb.clone(), &name)
        .ensure_table(false, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongSchema { .. }), "{err}");
}

#[tokio::test]
async fn fencing_a_zombie_cannot_renew_or_checkpoint() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    let l = Lease::new("shardId-000000000000", Checkpoint::TrimHorizon);
    s.create_if_not_exists(&l).await.unwrap();
    let a = s.take(&l, "a").await.unwrap();
    // b steals it (as seen at a's counter).
    let b = s.take(&a, "b").await.unwrap();
    assert_eq!(b.owner_switches_since_checkpoint, 2, "unowned → a → b");
    // a is now a zombie: every write fails with Conflict.
    assert!(matches!(
        s.renew(&a, "a").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.checkpoint(&a, "a", &seq("5", 0)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.release(&a, "a").await,
        Err(StoreError::Conflict(_))
    ));
    // b works, and its counter advances.
    let c = s.renew(&b, "b").await.unwrap();
    assert_eq!(c, b.lease_counter + 1);
    let stored = s.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(stored.lease_owner.as_deref(), Some("b"));
    assert_eq!(stored.lease_counter, c);
}

#[tokio::test]
async fn racing_takers_one_wins() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    let l = Lease::new("shardId-000000000000", Checkpoint::Latest);
    s.create_if_not_exists(&l).await.unwrap();
    let results = futures::future::join_all((0..8).map(|i| {
        let (s, l) = (s.clone(), l.clone());
        async move { s.take(&l, &format!("w{i}")).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, StoreError::Conflict(_)))
    );
}

#[tokio::test]
async fn release_frees_the_lease_and_prepare_then_checkpoint() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    let l = Lease::new("shardId-000000000000", Checkpoint::TrimHorizon);
    s.create_if_not_exists(&l).await.unwrap();
    let mut a = s.take(&l, "a").await.unwrap();
    a.lease_counter = s
        .prepare_checkpoint(&a, "a", &seq("7", 1), Some(b"state"))
        .await
        .unwrap();
    let got = s.get(&a.lease_key).await.unwrap().unwrap();
    assert_eq!(got.pending_checkpoint, Some(seq("7", 1)));
    assert_eq!(got.pending_checkpoint_state.as_deref(), Some(&b"state"[..]));
    assert_eq!(
        got.checkpoint,
        Checkpoint::TrimHorizon,
        "prepare does not move the checkpoint"
    );
    a.lease_counter = s.checkpoint(&a, "a", &seq("7", 1)).await.unwrap();
    let got = s.get(&a.lease_key).await.unwrap().unwrap();
    assert_eq!(
        (got.checkpoint, got.pending_checkpoint),
        (seq("7", 1), None)
    );
    s.release(&a, "a").await.unwrap();
    let got = s.get(&a.lease_key).await.unwrap().unwrap();
    assert_eq!(got.lease_owner, None);
    // Anyone can take a released lease at once.
    s.take(&got, "b").await.unwrap();
}

#[tokio::test]
async fn only_finished_leases_are_deleted_and_foreign_items_are_skipped() {
    let env = TestEnv::start().await;
    let s = store(&env).await;
    let l = Lease::new("shardId-000000000000", Checkpoint::TrimHorizon);
    s.create_if_not_exists(&l).await.unwrap();
    assert!(!s.delete_finished(&l.lease_key).await.unwrap());
    let a = s.take(&l, "a").await.unwrap();
    s.checkpoint(&a, "a", &Checkpoint::ShardEnd).await.unwrap();
    // A KCL 3.5 single-table item that is not a lease.
    env.dynamodb
        .put_item()
        .table_name(s.table())
        .item("leaseKey", AttributeValue::S("Leader".into()))
        .item("entityType", AttributeValue::S("LEADER".into()))
        .send()
        .await
        .unwrap();
    let leases = s.list().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert!(leases[0].is_finished());
    assert!(s.delete_finished(&l.lease_key).await.unwrap());
    assert!(s.list().await.unwrap().is_empty());
}
