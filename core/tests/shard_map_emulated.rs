//! Shard map and error classification against the emulator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use kinesis_core::shard_map::ShardMap;
use kinesis_core::{AwsError, ErrorKind, ShardId, StreamRef, hash_key};
use kinesis_testkit::{TestEnv, eventually, wait_stream_active};

#[tokio::test]
async fn predicted_shard_matches_where_kinesis_puts_the_record() {
    let env = TestEnv::start().await;
    let name = env.create_stream(4).await;
    let map = ShardMap::load(&env.kinesis, &StreamRef::parse(&name).unwrap())
        .await
        .unwrap();
    assert_eq!(map.open_shards().count(), 4);
    assert!(map.gaps().is_empty());
    for i in 0..40 {
        let pk = format!("key-{i}");
        let out = env
            .kinesis
            .put_record()
            .stream_name(&name)
            .partition_key(&pk)
            .data(Blob::new(b"x".to_vec()))
            .send()
            .await
            .unwrap();
        let predicted = map.shard_for(hash_key(&pk)).unwrap();
        assert_eq!(out.shard_id(), predicted.shard_id.as_str(), "{pk}");
    }
}

#[tokio::test]
async fn lineage_after_split_and_merge() {
    let env = TestEnv::start().await;
    let name = env.create_stream(2).await;
    let stream = StreamRef::parse(&name).unwrap();
    let before = ShardMap::load(&env.kinesis, &stream).await.unwrap();
    let first = before.open_shards().next().unwrap().clone();
    let mid = first.hash_key_range.start().0 / 2 + first.hash_key_range.end().0 / 2;
    env.kinesis
        .split_shard()
        .stream_name(&name)
        .shard_to_split(first.shard_id.as_str())
        .new_starting_hash_key(mid.to_string())
        .send()
        .await
        .unwrap();
    wait_stream_active(&env.kinesis, &name, Duration::from_secs(30))
        .await
        .unwrap();
    let map = eventually("split visible", Duration::from_secs(30), || async {
        let m = ShardMap::load(&env.kinesis, &stream).await.unwrap();
        (m.open_shards().count() == 3).then_some(m)
    })
    .await;
    assert!(!map.get(&first.shard_id).unwrap().is_open());
    let children: Vec<ShardId> = map
        .children(&first.shard_id)
        .map(|s| s.shard_id.clone())
        .collect();
    assert_eq!(children.len(), 2);
    assert!(map.gaps().is_empty());

    // Merge the two children back.
    env.kinesis
        .merge_shards()
        .stream_name(&name)
        .shard_to_merge(children[0].as_str())
        .adjacent_shard_to_merge(children[1].as_str())
        .send()
        .await
        .unwrap();
    wait_stream_active(&env.kinesis, &name, Duration::from_secs(30))
        .await
        .unwrap();
    let map = eventually("merge visible", Duration::from_secs(30), || async {
        let m = ShardMap::load(&env.kinesis, &stream).await.unwrap();
        (m.open_shards().count() == 2).then_some(m)
    })
    .await;
    let merged: Vec<_> = map.children(&children[0]).collect();
    assert_eq!(merged.len(), 1);
    let parents: Vec<&ShardId> = merged[0].parents().collect();
    assert_eq!(parents.len(), 2);
    assert!(parents.contains(&&children[0]) && parents.contains(&&children[1]));
    assert!(map.gaps().is_empty());
    // Every key still has an owner, and it is open.
    for i in 0..100 {
        let s = map.shard_for(hash_key(&format!("k{i}"))).unwrap();
        assert!(s.is_open());
    }
}

#[tokio::test]
async fn real_errors_are_classified() {
    let env = TestEnv::start().await;
    let missing = StreamRef::parse("no-such-stream").unwrap();
    let err = ShardMap::load(&env.kinesis, &missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(!err.is_retryable());
    assert_eq!(err.code(), Some("ResourceNotFoundException"));
    assert!(err.to_string().contains("ListShards"), "{err}");

    let name = env.create_stream(1).await;
    let again = env
        .kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(1)
        .send()
        .await;
    let err = AwsError::new("CreateStream", again.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::ResourceInUse, "{err}");

    let bad = env
        .kinesis
        .get_shard_iterator()
        .stream_name(&name)
        .shard_id("shardId-000000000000")
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::AtSequenceNumber)
        .send()
        .await;
    let err = AwsError::new("GetShardIterator", bad.unwrap_err());
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    // Bind a port, then free it: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sdk = kinesis_testkit::local_sdk_config();
    let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(conf);
    let err = client.list_streams().send().await.unwrap_err();
    assert_eq!(
        kinesis_core::classify::classify(&err),
        ErrorKind::Transient,
        "{err:?}"
    );
}
