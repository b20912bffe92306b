//! The consumer's loss paths under injected faults (issue #10, §3 items 1–6): each test drives a
//! worker through the testkit's fault proxy into the situation that lost data or stranded a
//! shard before, and checks that nothing is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kinesis_consumer::{
    Checkpointer, Consumer, ConsumerConfig, InitialPosition, LeaseStore, ProcessorError,
    RecordBatch, Retrieval, ShardProcessor,
};
use kinesis_core::{Checkpoint, ShardId};
use kinesis_testkit::{Fault, FaultyClients, Rule, TestEnv, eventually, unique_name};
use tokio::time::Instant;

/// One thing a processor saw: (worker tag, shard, what, when).
type Entry = (&'static str, String, String, Instant);

/// What processors saw, across workers.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Entry>>>);

impl Log {
    fn push(&self, who: &'static str, shard: &str, what: impl Into<String>) {
        self.0
            .lock()
            .unwrap()
            .push((who, shard.to_string(), what.into(), Instant::now()));
    }
    fn records(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, _, w, _)| w.strip_prefix("record ").map(str::to_string))
            .collect()
    }
    fn first(&self, who: &str, what: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(w, _, e, _)| *w == who && e == what)
            .map(|e| e.3)
    }
    fn has(&self, data: &str) -> bool {
        self.records().iter().any(|r| r == data)
    }
}

/// Hooks that panic (once, across instances) where a test asks.
#[derive(Clone, Default)]
struct Panics {
    initialize: Arc<AtomicUsize>,
    shutdown_requested: Arc<AtomicUsize>,
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

struct Recorder {
    who: &'static str,
    log: Log,
    panics: Panics,
}

impl ShardProcessor for Recorder {
    async fn initialize(&mut self, shard_id: &ShardId, _: &Checkpoint) {
        self.log.push(self.who, shard_id.as_str(), "initialize");
        assert!(
            !take_one(&self.panics.initialize),
            "initialize panics (injected)"
        );
    }

    async fn process(
        &mut self,
        batch: RecordBatch,
        cp: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        for r in &batch.records {
            let data = String::from_utf8_lossy(&r.data).into_owned();
            self.log
                .push(self.who, batch.shard_id.as_str(), format!("record {data}"));
        }
        cp.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, cp: &mut Checkpointer) {
        self.log
            .push(self.who, cp.shard_id().as_str(), "shutdown_requested");
        assert!(
            !take_one(&self.panics.shutdown_requested),
            "shutdown_requested panics (injected)"
        );
    }

    async fn lease_lost(&mut self) {
        self.log.push(self.who, "", "lease_lost");
    }
}

fn config(app: &str) -> ConsumerConfig {
    ConsumerConfig {
        initial_position: InitialPosition::TrimHorizon,
        failover_time: Duration::from_secs(2),
        renew_interval: Duration::from_millis(400),
        taker_interval: Duration::from_millis(300),
        shard_sync_interval: Duration::from_millis(500),
        idle_time_between_reads: Duration::from_millis(50),
        parent_poll_interval: Duration::from_millis(100),
        ..ConsumerConfig::new(app)
    }
}

async fn start(
    kinesis: &aws_sdk_kinesis::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    stream: &str,
    cfg: ConsumerConfig,
    who: &'static str,
    log: &Log,
    panics: &Panics,
) -> Consumer {
    let (log, panics) = (log.clone(), panics.clone());
    Consumer::builder(
        kinesis.clone(),
        dynamodb.clone(),
        stream,
        cfg,
        move |_: &ShardId| Recorder {
            who,
            log: log.clone(),
            panics: panics.clone(),
        },
    )
    .build()
    .await
    .unwrap()
}

async fn put(env: &TestEnv, stream: &str, data: &str, key: &str) {
    env.kinesis
        .put_record()
        .stream_name(stream)
        .partition_key(key)
        .data(aws_sdk_kinesis::primitives::Blob::new(
            data.as_bytes().to_vec(),
        ))
        .send()
        .await
        .unwrap();
}

async fn proxies(env: &TestEnv, seed: u64) -> Option<FaultyClients> {
    let f = env.fault_proxies(seed).await;
    if f.is_none() {
        eprintln!("skipped: no fault proxy on this backend");
    }
    f
}

/// Waits until `op` has had at least `n` faults injected on `proxy`.
async fn injected(proxy: &kinesis_testkit::FaultProxy, op: &str, n: u64, secs: u64) {
    eventually(
        &format!("{n} faults injected on {op}"),
        Duration::from_secs(secs),
        || async { (proxy.stats().op(op).injected() >= n).then_some(()) },
    )
    .await;
}

/// Item 1: a stop requested while GetShardIterator is being retried is a stop, not the shard's
/// end. Before the fix both open shards were checkpointed SHARD_END.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_get_shard_iterator_is_throttled_ends_no_open_shard() {
    let env = TestEnv::start().await;
    let Some(f) = proxies(&env, 1).await else {
        return;
    };
    let stream = env.create_stream(2).await;
    let app = unique_name("app");
    let log = Log::default();
    f.kinesis_proxy
        .add_rule(Rule::new(Some("GetShardIterator"), Fault::throttle()));
    let w = start(
        &f.kinesis,
        &f.dynamodb,
        &stream,
        config(&app),
        "a",
        &log,
        &Panics::default(),
    )
    .await;
    eventually("both leases held", Duration::from_secs(20), || async {
        (w.held_shards().len() == 2).then_some(())
    })
    .await;
    injected(&f.kinesis_proxy, "GetShardIterator", 4, 20).await;
    w.shutdown(Duration::from_secs(10)).await;
    let leases = LeaseStore::new(env.dynamodb.clone(), &app)
        .list()
        .await
        .unwrap();
    assert_eq!(leases.len(), 2);
    for l in &leases {
        assert_ne!(
            l.checkpoint,
            Checkpoint::ShardEnd,
            "open shard ended: {l:?}"
        );
        assert_eq!(l.lease_owner, None, "released at shutdown: {l:?}");
    }
    // And the application still reads what comes next.
    put(&env, &stream, "after", "k").await;
    let w = start(
        &env.kinesis,
        &env.dynamodb,
        &stream,
        config(&app),
        "b",
        &log,
        &Panics::default(),
    )
    .await;
    eventually(
        "the record put after the stop",
        Duration::from_secs(20),
        || async { log.has("after").then_some(()) },
    )
    .await;
    w.shutdown(Duration::from_secs(10)).await;
}

/// Item 2 (polling): an iterator that expires before any record was read, on a shard read from
/// LATEST, is replaced by one at the time reading began, not by a later LATEST that skips what
/// arrived meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterator_at_latest_skips_nothing() {
    let env = TestEnv::start().await;
    let Some(f) = proxies(&env, 2).await else {
        return;
    };
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let log = Log::default();
    let cfg = ConsumerConfig {
        initial_position: InitialPosition::Latest,
        ..config(&app)
    };
    let w = start(
        &f.kinesis,
        &f.dynamodb,
        &stream,
        cfg,
        "a",
        &log,
        &Panics::default(),
    )
    .await;
    eventually("reading", Duration::from_secs(20), || async {
        (f.kinesis_proxy.stats().op("GetRecords").requests >= 2).then_some(())
    })
    .await;
    f.kinesis_proxy.add_rule(Rule::new(
        Some("GetRecords"),
        Fault::error("ExpiredIteratorException"),
    ));
    injected(&f.kinesis_proxy, "GetRecords", 1, 10).await;
    put(&env, &stream, "in-the-gap", "k").await;
    // A new iterator is fetched after the record arrived (and expires again).
    let iterators = f.kinesis_proxy.stats().op("GetShardIterator").requests;
    eventually(
        "a new iterator after the put",
        Duration::from_secs(10),
        || async {
            (f.kinesis_proxy.stats().op("GetShardIterator").requests > iterators + 1).then_some(())
        },
    )
    .await;
    f.kinesis_proxy.clear();
    eventually(
        "the record put while iterators expired",
        Duration::from_secs(20),
        || async { log.has("in-the-gap").then_some(()) },
    )
    .await;
    w.shutdown(Duration::from_secs(10)).await;
}

/// Item 2 (fan-out): a subscription from LATEST that breaks before any record resumes at the
/// service's continuation, not at a new LATEST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_resubscription_at_latest_skips_nothing() {
    let env = TestEnv::start().await;
    let Some(f) = proxies(&env, 3).await else {
        return;
    };
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let log = Log::default();
    let cfg = ConsumerConfig {
        initial_position: InitialPosition::Latest,
        retrieval: Retrieval::FanOut {
            consumer_name: None,
            deregister_on_shutdown: false,
        },
        ..config(&app)
    };
    // The first session breaks after its first events; later ones are refused until cleared.
    f.kinesis_proxy.set_rules(vec![
        Rule::new(
            Some("SubscribeToShard"),
            Fault::ResetMidResponse { after_bytes: 1_500 },
        )
        .times(1),
        Rule::new(Some("SubscribeToShard"), Fault::internal()),
    ]);
    let w = start(
        &f.kinesis,
        &f.dynamodb,
        &stream,
        cfg,
        "a",
        &log,
        &Panics::default(),
    )
    .await;
    injected(&f.kinesis_proxy, "SubscribeToShard", 2, 30).await;
    put(&env, &stream, "between-sessions", "k").await;
    let before = f.kinesis_proxy.stats().op("SubscribeToShard").injected();
    injected(&f.kinesis_proxy, "SubscribeToShard", before + 1, 30).await;
    f.kinesis_proxy.clear();
    eventually(
        "the record put between sessions",
        Duration::from_secs(30),
        || async { log.has("between-sessions").then_some(()) },
    )
    .await;
    w.shutdown(Duration::from_secs(10)).await;
}

/// Item 3: a panic in `initialize` releases the lease (the shard is read by a fresh
/// processor); before the fix the task died, its lease was renewed forever and never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_initialize_does_not_strand_the_shard() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    put(&env, &stream, "r1", "k").await;
    let log = Log::default();
    let panics = Panics::default();
    panics.initialize.store(1, Ordering::SeqCst);
    let w = start(
        &env.kinesis,
        &env.dynamodb,
        &stream,
        config(&app),
        "a",
        &log,
        &panics,
    )
    .await;
    eventually("read after the panic", Duration::from_secs(20), || async {
        log.has("r1").then_some(())
    })
    .await;
    assert_eq!(
        panics.initialize.load(Ordering::SeqCst),
        0,
        "the panic happened"
    );
    w.shutdown(Duration::from_secs(10)).await;
}

/// Item 3: a panic in `shutdown_requested` still releases the lease at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_shutdown_requested_still_releases_the_lease() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let log = Log::default();
    let panics = Panics::default();
    panics.shutdown_requested.store(1, Ordering::SeqCst);
    let w = start(
        &env.kinesis,
        &env.dynamodb,
        &stream,
        config(&app),
        "a",
        &log,
        &panics,
    )
    .await;
    eventually("lease held", Duration::from_secs(20), || async {
        (w.held_shards().len() == 1).then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        panics.shutdown_requested.load(Ordering::SeqCst),
        0,
        "the panic happened"
    );
    let leases = LeaseStore::new(env.dynamodb.clone(), &app)
        .list()
        .await
        .unwrap();
    assert_eq!(leases[0].lease_owner, None, "released: {leases:?}");
}

/// Item 4: when the closed parent's lease cannot be created but its children's can, the
/// children wait: a parent without a lease would count as done and its children would start
/// first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_wait_for_a_parent_whose_lease_creation_failed() {
    let env = TestEnv::start().await;
    let Some(f) = proxies(&env, 4).await else {
        return;
    };
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    for i in 0..20 {
        put(&env, &stream, &format!("parent-{i}"), &format!("k{i}")).await;
    }
    env.kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((u128::MAX / 2).to_string())
        .send()
        .await
        .unwrap();
    kinesis_testkit::wait_stream_active(&env.kinesis, &stream, Duration::from_secs(30))
        .await
        .unwrap();
    for i in 0..20 {
        put(&env, &stream, &format!("child-{i}"), &format!("k{i}")).await;
    }
    // The first lease created is the parent's (parents come first): fail it, SDK retries
    // included.
    f.dynamodb_proxy
        .add_rule(Rule::new(Some("PutItem"), Fault::throttle()).times(3));
    let log = Log::default();
    let cfg = ConsumerConfig {
        shard_sync_interval: Duration::from_secs(2),
        ..config(&app)
    };
    let w = start(
        &f.kinesis,
        &f.dynamodb,
        &stream,
        cfg,
        "a",
        &log,
        &Panics::default(),
    )
    .await;
    eventually("all 40 records", Duration::from_secs(30), || async {
        (log.records().len() >= 40).then_some(())
    })
    .await;
    assert_eq!(f.dynamodb_proxy.stats().op("PutItem").injected(), 3);
    let records = log.records();
    let last_parent = records
        .iter()
        .rposition(|r| r.starts_with("parent-"))
        .unwrap();
    let first_child = records
        .iter()
        .position(|r| r.starts_with("child-"))
        .unwrap();
    assert!(
        last_parent < first_child,
        "a child was read before its parent: {records:?}"
    );
    w.shutdown(Duration::from_secs(10)).await;
}

/// Worker "a", through fault proxies, holding the lease of a one-shard stream.
struct Holding {
    env: TestEnv,
    f: FaultyClients,
    stream: String,
    app: String,
    log: Log,
    a: Consumer,
}

async fn worker_a_holding_the_lease(seed: u64) -> Option<Holding> {
    let env = TestEnv::start().await;
    let f = proxies(&env, seed).await?;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let log = Log::default();
    let a = start(
        &f.kinesis,
        &f.dynamodb,
        &stream,
        config(&app),
        "a",
        &log,
        &Panics::default(),
    )
    .await;
    eventually("a holds the lease", Duration::from_secs(20), || async {
        (a.held_shards().len() == 1).then_some(())
    })
    .await;
    Some(Holding {
        env,
        f,
        stream,
        app,
        log,
        a,
    })
}

/// Item 5: a lease-table scan slower than the failover time does not delay renewal: no other
/// worker may judge the lease expired while this one reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_scan_does_not_starve_renewal() {
    let Some(Holding {
        env,
        f,
        stream,
        app,
        log,
        a,
    }) = worker_a_holding_the_lease(5).await
    else {
        return;
    };
    f.dynamodb_proxy.add_rule(Rule::new(
        Some("Scan"),
        Fault::Latency(Duration::from_secs(3)),
    ));
    let b = start(
        &env.kinesis,
        &env.dynamodb,
        &stream,
        config(&app),
        "b",
        &log,
        &Panics::default(),
    )
    .await;
    // Three slow scans by a (over 6 s, three failover times): b never gets the lease.
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.dynamodb_proxy.stats().op("Scan").injected() < 3 {
        assert!(
            b.held_shards().is_empty(),
            "b took a's lease while a was alive"
        );
        assert!(Instant::now() < deadline, "scans did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.held_shards().len(), 1);
    f.dynamodb_proxy.clear();
    b.shutdown(Duration::from_secs(10)).await;
    a.shutdown(Duration::from_secs(10)).await;
}

/// Item 5: a worker whose renewals hang stops processing the shard before another worker may
/// take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_renew_stops_before_another_takes_over() {
    let Some(Holding {
        env,
        f,
        stream,
        app,
        log,
        a,
    }) = worker_a_holding_the_lease(6).await
    else {
        return;
    };
    f.dynamodb_proxy
        .add_rule(Rule::new(Some("UpdateItem"), Fault::Stall));
    let b = start(
        &env.kinesis,
        &env.dynamodb,
        &stream,
        config(&app),
        "b",
        &log,
        &Panics::default(),
    )
    .await;
    eventually("b takes over", Duration::from_secs(30), || async {
        log.first("b", "initialize").map(|_| ())
    })
    .await;
    let b_started = log.first("b", "initialize").unwrap();
    let a_stopped = log
        .first("a", "lease_lost")
        .expect("a was told it lost the lease");
    assert!(
        a_stopped < b_started,
        "a stopped {a_stopped:?}, b started {b_started:?}"
    );
    f.dynamodb_proxy.release_stalled();
    f.dynamodb_proxy.clear();
    b.shutdown(Duration::from_secs(10)).await;
    drop(a);
}

/// Item 6: one unreadable item in the lease table does not stop taking and syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_lease_item_is_skipped() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let store = LeaseStore::new(env.dynamodb.clone(), &app);
    store
        .ensure_table(false, Duration::from_secs(30))
        .await
        .unwrap();
    env.dynamodb
        .put_item()
        .table_name(&app)
        .item("leaseKey", AttributeValue::S("garbage".into()))
        .item("leaseCounter", AttributeValue::S("not a number".into()))
        .send()
        .await
        .unwrap();
    put(&env, &stream, "r1", "k").await;
    let log = Log::default();
    let w = start(
        &env.kinesis,
        &env.dynamodb,
        &stream,
        config(&app),
        "a",
        &log,
        &Panics::default(),
    )
    .await;
    eventually(
        "read despite the bad item",
        Duration::from_secs(20),
        || async { log.has("r1").then_some(()) },
    )
    .await;
    w.shutdown(Duration::from_secs(10)).await;
}

/// A call that never answers (a dead peer that keeps the connection open) is given up after
/// `call_timeout` and retried: the shard goes on. Without a timeout the worker waited for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_call_is_given_up_after_call_timeout() {
    let env = TestEnv::start().await;
    let Some(f) = proxies(&env, 7).await else {
        return;
    };
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let log = Log::default();
    // The first GetRecords hangs, and is never released.
    f.kinesis_proxy
        .add_rule(Rule::new(Some("GetRecords"), Fault::Stall).times(1));
    put(&env, &stream, "r1", "k").await;
    let cfg = ConsumerConfig {
        call_timeout: Duration::from_secs(1),
        ..config(&app)
    };
    let w = start(
        &f.kinesis,
        &f.dynamodb,
        &stream,
        cfg,
        "a",
        &log,
        &Panics::default(),
    )
    .await;
    eventually(
        "read past the stalled call",
        Duration::from_secs(20),
        || async { log.has("r1").then_some(()) },
    )
    .await;
    assert_eq!(f.kinesis_proxy.stats().op("GetRecords").stalls, 1);
    w.shutdown(Duration::from_secs(10)).await;
}
