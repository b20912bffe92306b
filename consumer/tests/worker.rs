//! Workers against the embedded Kinesis and DynamoDB emulators.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kinesis_consumer::{
    Checkpointer, Consumer, ConsumerConfig, InitialPosition, LeaseStore, ProcessorError,
    RecordBatch, Retrieval, ShardProcessor,
};
use kinesis_core::{Checkpoint, PartitionKey, ShardId, UserRecord};
use kinesis_producer::Producer;
use kinesis_testkit::{TestEnv, eventually, unique_name};

#[derive(Debug, Clone)]
enum Event {
    Record {
        shard: String,
        data: String,
        at: Checkpoint,
    },
    Ended {
        shard: String,
    },
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Event>>>);

impl Sink {
    /// Notes every record of a batch.
    fn record(&self, batch: &RecordBatch) {
        let mut v = self.0.lock().unwrap();
        for r in &batch.records {
            v.push(Event::Record {
                shard: batch.shard_id.to_string(),
                data: String::from_utf8(r.data.to_vec()).unwrap(),
                at: r.checkpoint(),
            });
        }
    }

    fn data(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::Record { data, .. } => Some(data.clone()),
                Event::Ended { .. } => None,
            })
            .collect()
    }
    fn distinct(&self) -> usize {
        self.data().into_iter().collect::<HashSet<_>>().len()
    }
}

struct Collect {
    sink: Sink,
}

impl ShardProcessor for Collect {
    async fn process(
        &mut self,
        batch: RecordBatch,
        cp: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        self.sink.record(&batch);
        cp.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, cp: &mut Checkpointer) -> Result<(), ProcessorError> {
        self.sink.0.lock().unwrap().push(Event::Ended {
            shard: cp.shard_id().to_string(),
        });
        cp.checkpoint().await?;
        Ok(())
    }
}

fn fan_out() -> Retrieval {
    Retrieval::FanOut {
        consumer_name: None,
        deregister_on_shutdown: false,
    }
}

/// Runs a scenario once with polling and once with enhanced fan-out.
macro_rules! both_modes {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn polling() {
                super::$name(kinesis_consumer::Retrieval::Polling).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fan_out() {
                super::$name(super::fan_out()).await;
            }
        }
    };
}

fn config(app: &str, mode: &Retrieval) -> ConsumerConfig {
    ConsumerConfig {
        retrieval: mode.clone(),
        initial_position: InitialPosition::TrimHorizon,
        failover_time: Duration::from_secs(2),
        renew_interval: Duration::from_millis(400),
        taker_interval: Duration::from_millis(300),
        shard_sync_interval: Duration::from_millis(300),
        idle_time_between_reads: Duration::from_millis(50),
        parent_poll_interval: Duration::from_millis(100),
        ..ConsumerConfig::new(app)
    }
}

async fn worker(env: &TestEnv, stream: &str, cfg: ConsumerConfig, sink: &Sink) -> Consumer {
    let sink = sink.clone();
    Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        stream,
        cfg,
        move |_: &ShardId| Collect { sink: sink.clone() },
    )
    .build()
    .await
    .unwrap()
}

async fn produce(env: &TestEnv, stream: &str, from: usize, n: usize) {
    let p = Producer::builder(env.kinesis.clone(), stream)
        .build()
        .await
        .unwrap();
    for i in from..from + n {
        let r = UserRecord::new(
            PartitionKey::new(format!("k{}", i % 97)).unwrap(),
            None,
            Bytes::from(format!("r{i}")),
        );
        drop(p.send(r).await.unwrap()); // the receipt; shutdown() below waits for delivery
    }
    let report = p.shutdown(Duration::from_secs(10)).await;
    assert!(report.undelivered.is_empty() && report.in_flight.is_empty());
}

both_modes!(consumes_kpl_aggregates_and_resumes_from_sub_sequence_checkpoints);
async fn consumes_kpl_aggregates_and_resumes_from_sub_sequence_checkpoints(mode: Retrieval) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let app = unique_name("app");
    produce(&env, &stream, 0, 3_000).await;
    let sink = Sink::default();
    let w = worker(&env, &stream, config(&app, &mode), &sink).await;
    if matches!(mode, Retrieval::FanOut { .. }) {
        let consumers = env
            .kinesis
            .list_stream_consumers()
            .stream_arn(stream_arn(&env, &stream).await)
            .send()
            .await
            .unwrap();
        let names: Vec<&str> = consumers
            .consumers()
            .iter()
            .map(|c| c.consumer_name())
            .collect();
        assert_eq!(
            names,
            vec![app.as_str()],
            "reading through a registered stream consumer"
        );
    }
    eventually("all 3,000 records", Duration::from_secs(30), || async {
        (sink.distinct() == 3_000).then_some(())
    })
    .await;
    assert_eq!(sink.data().len(), 3_000, "no duplicates in one owner's run");
    // Checkpoints are inside aggregates: (sequence number, sub-sequence number > 0).
    let store = LeaseStore::new(env.dynamodb.clone(), &app);
    let leases = store.list().await.unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases.iter().any(|l| matches!(l.checkpoint, Checkpoint::Sequence { sub_sequence_number, .. } if sub_sequence_number > 0)), "{leases:?}");
    w.shutdown(Duration::from_secs(10)).await;
    // Leases released on graceful shutdown.
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .all(|l| l.lease_owner.is_none())
    );

    // A new worker resumes after the checkpoints: only new records arrive.
    let sink2 = Sink::default();
    let w2 = worker(&env, &stream, config(&app, &mode), &sink2).await;
    produce(&env, &stream, 3_000, 50).await;
    eventually("the 50 new records", Duration::from_secs(30), || async {
        (sink2.distinct() == 50).then_some(())
    })
    .await;
    assert!(
        sink2
            .data()
            .iter()
            .all(|d| d[1..].parse::<usize>().unwrap() >= 3_000),
        "nothing re-delivered"
    );
    w2.shutdown(Duration::from_secs(10)).await;
}

both_modes!(three_workers_balance_eight_shards_and_survive_a_crash);
async fn three_workers_balance_eight_shards_and_survive_a_crash(mode: Retrieval) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(8).await;
    let app = unique_name("app");
    // A sink per worker: a shard that changed hands shows in two of them.
    let sinks = [Sink::default(), Sink::default(), Sink::default()];
    let distinct = || {
        sinks
            .iter()
            .flat_map(Sink::data)
            .collect::<HashSet<_>>()
            .len()
    };
    let a = worker(&env, &stream, config(&app, &mode), &sinks[0]).await;
    eventually("a holds all 8", Duration::from_secs(20), || async {
        (a.held_shards().len() == 8).then_some(())
    })
    .await;
    let b = worker(&env, &stream, config(&app, &mode), &sinks[1]).await;
    let c = worker(&env, &stream, config(&app, &mode), &sinks[2]).await;
    eventually("balance 3/3/2", Duration::from_secs(20), || async {
        let mut n = vec![
            a.held_shards().len(),
            b.held_shards().len(),
            c.held_shards().len(),
        ];
        n.sort_unstable();
        (n == vec![2, 3, 3]).then_some(())
    })
    .await;
    produce(&env, &stream, 0, 2_000).await;
    eventually("records flowing", Duration::from_secs(20), || async {
        (distinct() == 2_000).then_some(())
    })
    .await;

    // c crashes: no shutdown, leases not released.
    let c_shards = c.held_shards();
    drop(c);
    let store = LeaseStore::new(env.dynamodb.clone(), &app);
    let at_crash: HashMap<String, Checkpoint> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.lease_key, l.checkpoint))
        .collect();
    let started = tokio::time::Instant::now();
    eventually("c's shards taken over", Duration::from_secs(20), || async {
        let held: HashSet<String> = a.held_shards().into_iter().chain(b.held_shards()).collect();
        c_shards.iter().all(|s| held.contains(s)).then_some(())
    })
    .await;
    // Failover time (2 s) plus a taker interval or two, not the KCL's many cycles.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    produce(&env, &stream, 2_000, 2_000).await;
    eventually(
        "every record after the crash",
        Duration::from_secs(30),
        || async { (distinct() == 4_000).then_some(()) },
    )
    .await;
    // A record delivered twice (the same data at the same position: the same data at two
    // positions was stored twice by the producer, which is not the consumer's doing) is on a
    // shard that changed hands — c's, or one whose lease expired under load and moved — and,
    // on c's shards, after the checkpoint c left.
    let mut holders: HashMap<String, HashSet<usize>> = HashMap::new();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for (w, sink) in sinks.iter().enumerate() {
        for e in sink.0.lock().unwrap().iter() {
            if let Event::Record { shard, data, at } = e {
                holders.entry(shard.clone()).or_default().insert(w);
                *seen.entry((data.clone(), at.to_string())).or_default() += 1;
            }
        }
    }
    for sink in &sinks {
        for e in sink.0.lock().unwrap().iter() {
            if let Event::Record { shard, data, at } = e
                && seen[&(data.clone(), at.to_string())] > 1
            {
                assert!(
                    holders[shard].len() > 1,
                    "duplicate {data} on {shard}, which one worker read all along"
                );
                if c_shards.contains(shard) {
                    assert!(
                        at > &at_crash[shard],
                        "duplicate {data} at {at}, not after the checkpoint {}",
                        at_crash[shard]
                    );
                }
            }
        }
    }
    a.shutdown(Duration::from_secs(10)).await;
    b.shutdown(Duration::from_secs(10)).await;
}

both_modes!(graceful_shutdown_hands_leases_over_at_once);
async fn graceful_shutdown_hands_leases_over_at_once(mode: Retrieval) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(4).await;
    let app = unique_name("app");
    // A long failover time: a handover that waited for expiry would take 30 s.
    let cfg = ConsumerConfig {
        failover_time: Duration::from_secs(30),
        renew_interval: Duration::from_secs(1),
        ..config(&app, &mode)
    };
    let sink = Sink::default();
    let a = worker(&env, &stream, cfg.clone(), &sink).await;
    eventually("a holds all", Duration::from_secs(20), || async {
        (a.held_shards().len() == 4).then_some(())
    })
    .await;
    let b = worker(&env, &stream, cfg, &sink).await;
    eventually("b gets its share", Duration::from_secs(20), || async {
        (b.held_shards().len() == 2).then_some(())
    })
    .await;
    let started = tokio::time::Instant::now();
    // No deadline at all ("as long as it takes"): it used to panic adding it to the clock.
    a.shutdown(Duration::MAX).await;
    eventually("b holds all", Duration::from_secs(10), || async {
        (b.held_shards().len() == 4).then_some(())
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "handover took {:?}",
        started.elapsed()
    );
    b.shutdown(Duration::from_secs(10)).await;
}

both_modes!(after_a_split_parents_finish_before_children_start);
async fn after_a_split_parents_finish_before_children_start(mode: Retrieval) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    produce(&env, &stream, 0, 500).await;
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
    produce(&env, &stream, 500, 500).await;
    let sink = Sink::default();
    let w = worker(&env, &stream, config(&app, &mode), &sink).await;
    eventually("all 1,000", Duration::from_secs(30), || async {
        (sink.distinct() == 1_000).then_some(())
    })
    .await;
    let events = sink.0.lock().unwrap().clone();
    let parent_end = events
        .iter()
        .position(|e| matches!(e, Event::Ended { shard } if shard == "shardId-000000000000"))
        .expect("parent ended");
    for (i, e) in events.iter().enumerate() {
        if let Event::Record { shard, .. } = e
            && shard != "shardId-000000000000"
        {
            assert!(i > parent_end, "child record {e:?} before the parent ended");
        }
    }
    let mut per_shard: HashMap<String, usize> = HashMap::new();
    for e in &events {
        if let Event::Record { shard, .. } = e {
            *per_shard.entry(shard.clone()).or_default() += 1;
        }
    }
    assert_eq!(per_shard.values().sum::<usize>(), 1_000);
    w.shutdown(Duration::from_secs(10)).await;
}

/// Fails its first call with a panic, its second with an error, then works.
struct Flaky {
    calls: Arc<Mutex<usize>>,
    sink: Sink,
}

impl ShardProcessor for Flaky {
    async fn process(
        &mut self,
        batch: RecordBatch,
        cp: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        let n = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c
        };
        match n {
            1 => panic!("boom"),
            2 => return Err("transient failure".into()),
            _ => {}
        }
        self.sink.record(&batch);
        cp.checkpoint().await?;
        Ok(())
    }
}

both_modes!(a_failing_or_panicking_processor_gets_the_batch_again);
async fn a_failing_or_panicking_processor_gets_the_batch_again(mode: Retrieval) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    produce(&env, &stream, 0, 200).await;
    let sink = Sink::default();
    let calls = Arc::new(Mutex::new(0));
    let (s, c) = (sink.clone(), Arc::clone(&calls));
    let w = Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        &stream,
        config(&app, &mode),
        move |_: &ShardId| Flaky {
            calls: Arc::clone(&c),
            sink: s.clone(),
        },
    )
    .build()
    .await
    .unwrap();
    eventually(
        "all 200 after two failures",
        Duration::from_secs(30),
        || async { (sink.distinct() == 200).then_some(()) },
    )
    .await;
    assert!(*calls.lock().unwrap() >= 3);
    assert_eq!(
        sink.data().len(),
        200,
        "the failed batch was not processed twice, nor skipped"
    );
    w.shutdown(Duration::from_secs(10)).await;
}

both_modes!(closure_entry_point_and_zombie_fencing);
async fn closure_entry_point_and_zombie_fencing(mode: Retrieval) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    produce(&env, &stream, 0, 100).await;
    let got = Arc::new(Mutex::new(0usize));
    let g = Arc::clone(&got);
    let w = Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        &stream,
        config(&app, &mode),
        kinesis_consumer::with_fn(move |batch: RecordBatch| {
            let g = Arc::clone(&g);
            async move {
                *g.lock().unwrap() += batch.records.len();
                Ok::<(), ProcessorError>(())
            }
        }),
    )
    .build()
    .await
    .unwrap();
    eventually("100 records", Duration::from_secs(30), || async {
        (*got.lock().unwrap() == 100).then_some(())
    })
    .await;
    // Someone else takes the lease: the worker's next write is refused and it lets go.
    let store = LeaseStore::new(env.dynamodb.clone(), &app);
    let lease = eventually("checkpointed", Duration::from_secs(10), || async {
        store
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|l| matches!(l.checkpoint, Checkpoint::Sequence { .. }))
    })
    .await;
    let stolen = store.take(&lease, "intruder").await.unwrap();
    eventually("worker lets go", Duration::from_secs(10), || async {
        w.held_shards().is_empty().then_some(())
    })
    .await;
    let now = store.get(&lease.lease_key).await.unwrap().unwrap();
    assert_eq!(now.lease_owner.as_deref(), Some("intruder"));
    assert_eq!(
        now.checkpoint, stolen.checkpoint,
        "the zombie wrote nothing after losing the lease"
    );
    drop(w);
}

both_modes!(after_a_merge_both_parents_finish_before_the_child_starts);
async fn after_a_merge_both_parents_finish_before_the_child_starts(mode: Retrieval) {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let app = unique_name("app");
    produce(&env, &stream, 0, 400).await;
    env.kinesis
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge("shardId-000000000000")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await
        .unwrap();
    kinesis_testkit::wait_stream_active(&env.kinesis, &stream, Duration::from_secs(30))
        .await
        .unwrap();
    produce(&env, &stream, 400, 400).await;
    let sink = Sink::default();
    let w = worker(&env, &stream, config(&app, &mode), &sink).await;
    eventually("all 800", Duration::from_secs(30), || async {
        (sink.distinct() == 800).then_some(())
    })
    .await;
    let events = sink.0.lock().unwrap().clone();
    let end = |s: &str| {
        events
            .iter()
            .position(|e| matches!(e, Event::Ended { shard } if shard == s))
            .unwrap()
    };
    let last_parent_end = end("shardId-000000000000").max(end("shardId-000000000001"));
    let first_child = events
        .iter()
        .position(|e| matches!(e, Event::Record { shard, .. } if shard == "shardId-000000000002"))
        .unwrap();
    assert!(
        first_child > last_parent_end,
        "child started before both parents ended"
    );
    // The finished parents' leases are cleaned up once the child has moved on.
    let store = LeaseStore::new(env.dynamodb.clone(), &app);
    eventually("parents cleaned up", Duration::from_secs(20), || async {
        let keys: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.lease_key)
            .collect();
        (keys == vec!["shardId-000000000002".to_string()]).then_some(())
    })
    .await;
    w.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_subscriptions_expire_and_resume_without_gap_or_duplicate() {
    // Sessions of 300 ms instead of 5 minutes: many re-subscriptions during the run.
    let env = TestEnv::with_options(kinesis_testkit::EmulatorOptions {
        subscribe_session: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let stream = env.create_stream(2).await;
    let app = unique_name("app");
    let sink = Sink::default();
    let w = worker(&env, &stream, config(&app, &fan_out()), &sink).await;
    for wave in 0..4 {
        produce(&env, &stream, wave * 300, 300).await;
        let want = (wave + 1) * 300;
        eventually("wave delivered", Duration::from_secs(30), || async {
            (sink.distinct() == want).then_some(())
        })
        .await;
    }
    assert_eq!(
        sink.data().len(),
        1_200,
        "no duplicates across re-subscriptions"
    );
    w.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_applications_each_receive_everything() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(2).await;
    let (s1, s2) = (Sink::default(), Sink::default());
    let w1 = worker(&env, &stream, config(&unique_name("app"), &fan_out()), &s1).await;
    let w2 = worker(
        &env,
        &stream,
        config(&unique_name("app"), &Retrieval::Polling),
        &s2,
    )
    .await;
    produce(&env, &stream, 0, 1_000).await;
    eventually("both applications", Duration::from_secs(30), || async {
        (s1.distinct() == 1_000 && s2.distinct() == 1_000).then_some(())
    })
    .await;
    w1.shutdown(Duration::from_secs(10)).await;
    w2.shutdown(Duration::from_secs(10)).await;
}

async fn stream_arn(env: &TestEnv, stream: &str) -> String {
    let out = env
        .kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    out.stream_description_summary()
        .unwrap()
        .stream_arn()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_over_tls_uses_http2() {
    let env = TestEnv::with_options(kinesis_testkit::EmulatorOptions {
        tls: true,
        ..Default::default()
    })
    .await;
    if env.emulators().is_none() {
        eprintln!("skipped: needs the embedded emulator's TLS endpoint");
        return;
    }
    let stream = env.create_stream(2).await;
    let app = unique_name("app");
    produce(&env, &stream, 0, 500).await;
    let sink = Sink::default();
    let w = worker(&env, &stream, config(&app, &fan_out()), &sink).await;
    eventually("all 500 over TLS", Duration::from_secs(30), || async {
        (sink.distinct() == 500).then_some(())
    })
    .await;
    assert!(
        env.emulators()
            .unwrap()
            .kinesis_endpoint()
            .starts_with("https://")
    );
    assert!(
        env.emulators().unwrap().served_http2(),
        "ALPN negotiated HTTP/2, as with AWS"
    );
    w.shutdown(Duration::from_secs(10)).await;
}

/// Blocks on its first batch until released.
struct Stuck {
    gate: Arc<tokio::sync::Semaphore>,
    sink: Sink,
}

impl ShardProcessor for Stuck {
    async fn process(
        &mut self,
        batch: RecordBatch,
        cp: &mut Checkpointer,
    ) -> Result<(), ProcessorError> {
        // Each batch needs a permit: none are given until the test releases the gate.
        self.gate.acquire().await?.forget();
        self.sink.record(&batch);
        cp.checkpoint().await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_memory_stays_bounded_while_the_processor_is_slow() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("app");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let sink = Sink::default();
    let (g, s) = (Arc::clone(&gate), sink.clone());
    let cfg = ConsumerConfig {
        fan_out_max_buffered_events: 2,
        ..config(&app, &fan_out())
    };
    let w = Consumer::builder(
        env.kinesis.clone(),
        env.dynamodb.clone(),
        &stream,
        cfg,
        move |_: &ShardId| Stuck {
            gate: Arc::clone(&g),
            sink: s.clone(),
        },
    )
    .build()
    .await
    .unwrap();
    eventually("lease taken", Duration::from_secs(20), || async {
        (!w.held_shards().is_empty()).then_some(())
    })
    .await;
    // A producer that keeps writing (the emulator pushes an event every 200 ms) and a stuck
    // processor: the subscription must stop at the bound instead of reading on.
    let waves = std::sync::atomic::AtomicUsize::new(0);
    eventually("buffer full", Duration::from_secs(30), || async {
        let wave = waves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        produce(&env, &stream, wave * 100, 100).await;
        (w.fan_out_buffer_high_water() >= 2).then_some(())
    })
    .await;
    // A few more waves while it is full: still bounded.
    for _ in 0..3 {
        let wave = waves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        produce(&env, &stream, wave * 100, 100).await;
    }
    assert!(
        w.fan_out_buffer_high_water() <= 2,
        "{}",
        w.fan_out_buffer_high_water()
    );
    let total = waves.load(std::sync::atomic::Ordering::SeqCst) * 100;
    gate.add_permits(1_000_000);
    eventually(
        "everything once released",
        Duration::from_secs(30),
        || async { (sink.distinct() == total).then_some(()) },
    )
    .await;
    assert!(w.fan_out_buffer_high_water() <= 2);
    assert_eq!(sink.data().len(), total);
    w.shutdown(Duration::from_secs(10)).await;
}

/// A lease whose key is not a shard id (a multi-stream KCL table's
/// `account:stream:epoch:shardId`) is never taken: taking it would bump its counter and leave it
/// unrun and unrenewed, changing hands forever. The stream's own shard is read as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_is_not_a_shard_is_left_alone() {
    let env = TestEnv::start().await;
    let stream = env.create_stream(1).await;
    let app = unique_name("foreign-key");
    let store = LeaseStore::new(env.dynamodb.clone(), &app);
    store
        .ensure_table(true, Duration::from_secs(10))
        .await
        .unwrap();
    let foreign = "123456789012:other-stream:1700000000:shardId-000000000000";
    assert!(
        store
            .create_if_not_exists(&kinesis_consumer::Lease::new(
                foreign,
                Checkpoint::TrimHorizon
            ))
            .await
            .unwrap()
    );
    let before = store.get(foreign).await.unwrap().unwrap();
    let sink = Sink::default();
    let w = worker(&env, &stream, config(&app, &Retrieval::Polling), &sink).await;
    produce(&env, &stream, 0, 100).await;
    eventually("the stream's records", Duration::from_secs(30), || async {
        (sink.distinct() == 100).then_some(())
    })
    .await;
    // Many take rounds (300 ms apart) have run by now.
    let after = store.get(foreign).await.unwrap().unwrap();
    assert_eq!(
        after.lease_owner, None,
        "never taken: before {before:?}, after {after:?}"
    );
    assert_eq!(after.lease_counter, before.lease_counter, "never bumped");
    w.shutdown(Duration::from_secs(10)).await;
}
