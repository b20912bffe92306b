//! `kinesis top`: a live view of a stream and a consumer application, refreshed every second.
//!
//! ```text
//!   every refresh (1 s)                         Collector (I/O)
//!     Scan lease table ─────────────────────┐
//!     lag::probe() per leased shard ────────┼─► Observation ─► Sampler::update (pure) ─► Snapshot
//!     tail GetRecords per open shard ───────┤      counters seen over time ─► liveness
//!     ListShards (every 10th refresh) ──────┘      tail reads ─► incoming records/s, bytes/s
//!                                                  checkpoint changes ─► per worker ckpt/s
//!   Snapshot ─► draw() (ratatui: header, shards table, workers table)   q / Esc / Ctrl-C quit
//! ```
//!
//! Where the numbers come from, and what they cost:
//! - **Incoming rate per shard**: an iterator per open shard started at LATEST when `top`
//!   starts, read once per refresh; records and bytes that arrived since the last read, over
//!   the time between the reads. Exact (Kinesis records, a KPL aggregate counts once), but it
//!   reads each new record once more: the read throughput of one more polling consumer (of the
//!   shard's 2 MiB/s and 5 calls/s, shared by every polling application). `--no-incoming`
//!   turns it off. CloudWatch's IncomingRecords is free but per minute, too coarse for a
//!   1-second view; sequence numbers are not counts.
//! - **Lag**: `lag`'s probe, one GetShardIterator + GetRecords (Limit 10) at each checkpoint.
//! - **Alive**: a lease's owner is alive while its counter changed within `--interval` (default:
//!   the KCL's failover time) — the KCL's own expiry rule, judged by watching; `?` until `top`
//!   has watched that long.
//! - **Worker throughput**: checkpoint changes per second over the last 10 s (sequence numbers
//!   cannot be subtracted into record counts), and the incoming rate of the shards it holds.
//!
//! When stdout is not a terminal, `top` prints `lag`'s output once and exits.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use clap::Args;
use kinesis_consumer::{Lease, LeaseStore};
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::shard_map::{Shard, list_shards};
use kinesis_core::{AwsError, Checkpoint, StreamRef};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use tokio::time::Instant;

use crate::lag::{self, Behind, ShardLag};
use crate::leases::{Liveness, list_leases};

/// Refresh period.
const REFRESH: Duration = Duration::from_secs(1);
/// ListShards every this many refreshes (resharding is rare; the call is rate-limited).
const LIST_SHARDS_EVERY: u64 = 10;
/// The window of the per-worker checkpoint rate.
const CHECKPOINT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Application name (the lease table's name).
    #[arg(long)]
    app: String,
    /// Stream name or ARN.
    #[arg(long)]
    stream: String,
    /// How long a lease counter must stand still before its owner counts as not alive (default:
    /// the KCL's failover time). Without a terminal: `lag --interval`.
    #[arg(long, default_value = crate::leases::DEFAULT_INTERVAL, value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Do not read the shards' new records to measure incoming rates (that reading costs one
    /// more polling reader's share of each shard's read throughput).
    #[arg(long)]
    no_incoming: bool,
}

/// What one refresh fetched.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub(crate) at: Instant,
    pub(crate) shards: Vec<Shard>,
    pub(crate) leases: Vec<Lease>,
    pub(crate) probes: HashMap<String, Result<Option<Behind>, String>>,
    /// Per open shard: records and bytes read from its tail since the previous read.
    pub(crate) tails: HashMap<String, TailRead>,
    /// Errors of this refresh (shown, not fatal).
    pub(crate) errors: Vec<String>,
}

/// One read of a shard's tail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TailRead {
    pub(crate) records: usize,
    pub(crate) bytes: u64,
    /// Time since the previous read (`None`: the first read, no rate yet).
    pub(crate) over: Option<Duration>,
}

/// A shard in the view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShardView {
    pub(crate) lag: ShardLag,
    pub(crate) records_per_s: Option<f64>,
    pub(crate) bytes_per_s: Option<f64>,
}

/// A worker in the view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerView {
    pub(crate) id: String,
    pub(crate) leases: usize,
    pub(crate) alive: Liveness,
    pub(crate) checkpoints_per_s: f64,
    pub(crate) incoming_records_per_s: Option<f64>,
    pub(crate) max_behind_ms: Option<i64>,
}

/// What is drawn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) app: String,
    pub(crate) stream: String,
    pub(crate) refreshes: u64,
    pub(crate) shards: Vec<ShardView>,
    pub(crate) workers: Vec<WorkerView>,
    pub(crate) errors: Vec<String>,
}

/// Liveness of an owned lease from watching it: its counter last changed `since_change` ago
/// (`None`: no change seen yet), we have watched for `watched`.
pub(crate) fn liveness_over_time(
    owned: bool,
    since_change: Option<Duration>,
    watched: Duration,
    failover: Duration,
) -> Liveness {
    match since_change {
        _ if !owned => Liveness::Free,
        Some(d) if d <= failover => Liveness::Alive,
        _ if watched >= failover => Liveness::NotAlive,
        _ => Liveness::Unknown,
    }
}

/// Turns observations into snapshots: remembers counters, checkpoints and their changes.
#[derive(Debug)]
pub(crate) struct Sampler {
    app: String,
    stream: String,
    failover: Duration,
    started: Option<Instant>,
    refreshes: u64,
    /// Per lease: the counter last seen and when it was first seen to change.
    counters: HashMap<String, (u64, Option<Instant>)>,
    checkpoints: HashMap<String, Checkpoint>,
    /// Checkpoint changes seen: when, by which owner.
    moves: VecDeque<(Instant, String)>,
}

impl Sampler {
    pub(crate) fn new(app: &str, stream: &str, failover: Duration) -> Self {
        Self {
            app: app.to_string(),
            stream: stream.to_string(),
            failover,
            started: None,
            refreshes: 0,
            counters: HashMap::new(),
            checkpoints: HashMap::new(),
            moves: VecDeque::new(),
        }
    }

    pub(crate) fn update(&mut self, obs: Observation) -> Snapshot {
        let now = obs.at;
        let started = *self.started.get_or_insert(now);
        self.refreshes += 1;
        let mut alive = HashMap::new();
        for l in &obs.leases {
            let changed_at = match self.counters.get(&l.lease_key) {
                Some((c, at)) if *c == l.lease_counter => *at,
                Some(_) => Some(now),
                // First seen after the start: it appeared, someone wrote it.
                None if now > started => Some(now),
                None => None,
            };
            self.counters
                .insert(l.lease_key.clone(), (l.lease_counter, changed_at));
            if let Some(prev) = self
                .checkpoints
                .insert(l.lease_key.clone(), l.checkpoint.clone())
                && prev != l.checkpoint
                && let Some(o) = &l.lease_owner
            {
                self.moves.push_back((now, o.clone()));
            }
            alive.insert(
                l.lease_key.clone(),
                liveness_over_time(
                    l.lease_owner.is_some(),
                    changed_at.map(|t| now.saturating_duration_since(t)),
                    now.saturating_duration_since(started),
                    self.failover,
                ),
            );
        }
        while self
            .moves
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > CHECKPOINT_WINDOW)
        {
            self.moves.pop_front();
        }
        let mut rows = lag::assemble(&obs.shards, None, &obs.leases, &obs.probes);
        for r in &mut rows {
            if let Some(a) = alive.get(&r.shard_id) {
                r.alive = *a;
            }
        }
        let shards: Vec<ShardView> = rows
            .into_iter()
            .map(|lag| {
                let rate = obs.tails.get(&lag.shard_id).and_then(|t| {
                    let secs = t.over?.as_secs_f64();
                    (secs > 0.0).then(|| (t.records as f64 / secs, t.bytes as f64 / secs))
                });
                ShardView {
                    lag,
                    records_per_s: rate.map(|r| r.0),
                    bytes_per_s: rate.map(|r| r.1),
                }
            })
            .collect();
        let window = now
            .saturating_duration_since(started)
            .clamp(REFRESH, CHECKPOINT_WINDOW)
            .as_secs_f64();
        let mut workers: HashMap<String, WorkerView> = HashMap::new();
        for s in &shards {
            let Some(owner) = s.lag.lease.as_ref().and_then(|l| l.lease_owner.clone()) else {
                continue;
            };
            let w = workers.entry(owner.clone()).or_insert_with(|| WorkerView {
                id: owner.clone(),
                leases: 0,
                alive: Liveness::Unknown,
                checkpoints_per_s: self.moves.iter().filter(|(_, o)| *o == owner).count() as f64
                    / window,
                incoming_records_per_s: None,
                max_behind_ms: None,
            });
            w.leases += 1;
            // A worker is alive if any of its leases is.
            w.alive = match (w.alive, s.lag.alive) {
                (Liveness::Alive, _) | (_, Liveness::Alive) => Liveness::Alive,
                (Liveness::NotAlive, _) | (_, Liveness::NotAlive) => Liveness::NotAlive,
                _ => Liveness::Unknown,
            };
            if let Some(r) = s.records_per_s {
                *w.incoming_records_per_s.get_or_insert(0.0) += r;
            }
            if let Some(b) = &s.lag.behind {
                w.max_behind_ms = Some(w.max_behind_ms.unwrap_or(0).max(b.millis_behind_latest));
            }
        }
        let mut workers: Vec<WorkerView> = workers.into_values().collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot {
            app: self.app.clone(),
            stream: self.stream.clone(),
            refreshes: self.refreshes,
            shards,
            workers,
            errors: obs.errors,
        }
    }
}

/// The I/O half: fetches one [`Observation`] per call.
#[derive(Debug)]
struct Collector {
    kinesis: aws_sdk_kinesis::Client,
    store: LeaseStore,
    stream: StreamRef,
    incoming: bool,
    shards: Vec<Shard>,
    calls: u64,
    /// Per open shard: the tail iterator and when it was last read.
    tails: HashMap<String, (String, Instant)>,
}

impl Collector {
    async fn observe(&mut self) -> anyhow::Result<Observation> {
        let mut errors = Vec::new();
        if self.calls.is_multiple_of(LIST_SHARDS_EVERY) {
            match list_shards(&self.kinesis, &self.stream).await {
                Ok(s) => self.shards = s,
                Err(e) if self.calls == 0 => return Err(e.into()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.calls += 1;
        let leases = list_leases(&self.store).await?;
        let probes = lag::probe_all(&self.kinesis, &self.stream, &self.shards, &leases).await;
        let mut tails = HashMap::new();
        if self.incoming {
            let open: Vec<String> = self
                .shards
                .iter()
                .filter(|s| s.is_open())
                .map(|s| s.shard_id.as_str().to_string())
                .collect();
            self.tails.retain(|k, _| open.contains(k));
            for shard in open {
                match self.read_tail(&shard).await {
                    Ok(t) => {
                        tails.insert(shard, t);
                    }
                    Err(e) => {
                        self.tails.remove(&shard);
                        errors.push(format!("{shard}: {e}"));
                    }
                }
            }
        }
        Ok(Observation {
            at: Instant::now(),
            shards: self.shards.clone(),
            leases,
            probes,
            tails,
            errors,
        })
    }

    /// Reads what arrived on `shard` since the last read (an iterator at LATEST the first time).
    async fn read_tail(&mut self, shard: &str) -> Result<TailRead, AwsError> {
        let (it, last) = match self.tails.remove(shard) {
            Some((it, at)) => (it, Some(at)),
            None => {
                let req = self
                    .kinesis
                    .get_shard_iterator()
                    .shard_id(shard)
                    .shard_iterator_type(ShardIteratorType::Latest);
                let out = kinesis_core::with_stream!(req, &self.stream)
                    .send()
                    .await
                    .map_err(|e| AwsError::new("GetShardIterator", e))?;
                let it = out.shard_iterator().unwrap_or_default().to_string();
                self.tails.insert(shard.to_string(), (it, Instant::now()));
                return Ok(TailRead {
                    records: 0,
                    bytes: 0,
                    over: None,
                });
            }
        };
        let out = self
            .kinesis
            .get_records()
            .shard_iterator(it)
            .send()
            .await
            .map_err(|e| AwsError::new("GetRecords", e))?;
        let now = Instant::now();
        if let Some(next) = out.next_shard_iterator() {
            self.tails
                .insert(shard.to_string(), (next.to_string(), now));
        }
        Ok(TailRead {
            records: out.records().len(),
            bytes: out
                .records()
                .iter()
                .map(|r| r.data().as_ref().len() as u64)
                .sum(),
            over: last.map(|t| now.saturating_duration_since(t)),
        })
    }
}

fn rate_text(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// Draws a snapshot into a frame.
pub(crate) fn draw(frame: &mut ratatui::Frame<'_>, snap: &Snapshot) {
    let [head, shards_area, workers_area, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(2),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let head_text = format!(
        "kinesis top — stream {}  app {}  refresh #{}{}",
        snap.stream,
        snap.app,
        snap.refreshes,
        snap.errors
            .first()
            .map_or_else(String::new, |e| format!("  error: {e}"))
    );
    frame.render_widget(Paragraph::new(head_text), head);

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let shard_rows = snap.shards.iter().map(|s| {
        let owner = s
            .lag
            .lease
            .as_ref()
            .and_then(|l| l.lease_owner.clone())
            .unwrap_or_else(|| "-".into());
        Row::new(vec![
            s.lag.shard_id.clone(),
            owner,
            lag::alive_text(s.lag.alive).to_string(),
            rate_text(s.records_per_s),
            rate_text(s.bytes_per_s.map(|b| b / 1024.0)),
            lag::behind_text(&s.lag),
            lag::records_text(&s.lag),
            match s.lag.state {
                lag::State::Finished => "SHARD_END".to_string(),
                lag::State::NoLease => "no lease".to_string(),
                lag::State::Leased => lag::checkpoint_text(&s.lag),
            },
        ])
    });
    let shards = Table::new(
        shard_rows,
        [
            Constraint::Length(22),
            Constraint::Length(24),
            Constraint::Length(5),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new([
            "SHARD",
            "OWNER",
            "ALIVE",
            "IN REC/S",
            "IN KB/S",
            "BEHIND",
            "RECORDS",
            "CHECKPOINT",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" shards "));
    frame.render_widget(shards, shards_area);

    let worker_rows = snap.workers.iter().map(|w| {
        Row::new(vec![
            w.id.clone(),
            w.leases.to_string(),
            lag::alive_text(w.alive).to_string(),
            format!("{:.2}", w.checkpoints_per_s),
            rate_text(w.incoming_records_per_s),
            w.max_behind_ms
                .map_or_else(|| "-".into(), lag::format_millis),
        ])
    });
    let workers = Table::new(
        worker_rows,
        [
            Constraint::Length(24),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new([
            "WORKER",
            "LEASES",
            "ALIVE",
            "CKPT/S",
            "IN REC/S",
            "MAX BEHIND",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" workers "));
    frame.render_widget(workers, workers_area);
    frame.render_widget(Line::from("q quits"), foot);
}

/// Leaves raw mode and the alternate screen however `top` ends (return, error or panic:
/// ratatui's panic hook restores too).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Keys from crossterm's blocking reader, on their own thread, into the async loop. Returns
/// when the receiver is gone.
fn spawn_key_reader(tx: tokio::sync::mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(ev) => {
                        if tx.blocking_send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {
                    if tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
}

fn is_quit(ev: &Event) -> bool {
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => {
            matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

pub(crate) async fn run(args: TopArgs, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let stream = StreamRef::parse(&args.stream).map_err(|e| anyhow::anyhow!("--stream: {e}"))?;
    let config = sdk::load(opts).await;
    let kinesis = sdk::kinesis_client(&config, opts);
    let store = LeaseStore::new(sdk::dynamodb_client(&config, opts), args.app.clone());
    if !std::io::stdout().is_terminal() {
        let rows = lag::collect(&kinesis, &store, &stream, args.interval).await?;
        lag::print(&rows, lag::Output::Json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut collector = Collector {
        kinesis,
        store,
        stream,
        incoming: !args.no_incoming,
        shards: Vec::new(),
        calls: 0,
        tails: HashMap::new(),
    };
    let mut sampler = Sampler::new(&args.app, &args.stream, args.interval);
    // The first observation before the screen changes: a wrong app or stream is a plain error.
    let mut snap = sampler.update(collector.observe().await?);

    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init()?;
    let (tx, mut keys) = tokio::sync::mpsc::channel(16);
    spawn_key_reader(tx);
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        terminal.draw(|f| draw(f, &snap))?;
        tokio::select! {
            ev = keys.recv() => match ev {
                Some(ev) if is_quit(&ev) => break,
                Some(_) => {}
                None => break,
            },
            _ = tick.tick() => {
                snap = match collector.observe().await {
                    Ok(obs) => sampler.update(obs),
                    Err(e) => Snapshot { errors: vec![format!("{e:#}")], ..snap },
                };
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kinesis_core::{HashKeyRange, SequenceNumber, ShardId};
    use ratatui::backend::TestBackend;

    fn shard(id: &str) -> Shard {
        Shard {
            shard_id: ShardId::new(id).unwrap(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            hash_key_range: HashKeyRange::FULL,
            starting_sequence_number: SequenceNumber::parse("1").unwrap(),
            ending_sequence_number: None,
        }
    }

    fn lease(id: &str, owner: &str, counter: u64, cp: &str) -> Lease {
        let mut l = Lease::new(
            id,
            Checkpoint::Sequence {
                sequence_number: SequenceNumber::parse(cp).unwrap(),
                sub_sequence_number: 0,
            },
        );
        l.lease_owner = Some(owner.to_string());
        l.lease_counter = counter;
        l
    }

    fn obs(at: Instant, leases: Vec<Lease>, tail: Option<TailRead>) -> Observation {
        Observation {
            at,
            shards: vec![shard("shardId-0"), shard("shardId-1")],
            leases,
            probes: HashMap::from([(
                "shardId-0".to_string(),
                Ok(Some(Behind {
                    millis_behind_latest: 1500,
                    records: 4,
                    exact: true,
                    next_record_age: None,
                })),
            )]),
            tails: tail
                .map(|t| HashMap::from([("shardId-0".to_string(), t)]))
                .unwrap_or_default(),
            errors: Vec::new(),
        }
    }

    /// The I/O half against the embedded emulators: the lease, the lag probe at its
    /// checkpoint, and the records that arrived at the tail between two refreshes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collector_reads_leases_lag_and_what_arrives_at_the_tail() {
        let env = kinesis_testkit::TestEnv::start().await;
        let stream = env.create_stream(1).await;
        let store = LeaseStore::new(env.dynamodb.clone(), kinesis_testkit::unique_name("app"));
        store
            .ensure_table(false, Duration::from_secs(30))
            .await
            .unwrap();
        let shard = "shardId-000000000000";
        store
            .create_if_not_exists(&Lease::new(shard, Checkpoint::TrimHorizon))
            .await
            .unwrap();
        let mut c = Collector {
            kinesis: env.kinesis.clone(),
            store,
            stream: StreamRef::parse(&stream).unwrap(),
            incoming: true,
            shards: Vec::new(),
            calls: 0,
            tails: HashMap::new(),
        };
        let first = c.observe().await.unwrap();
        assert_eq!(first.shards.len(), 1);
        assert_eq!(first.tails[shard].over, None, "the tail starts at LATEST");
        let b = first.probes[shard].as_ref().unwrap().as_ref().unwrap();
        assert_eq!((b.records, b.exact), (0, true));

        for i in 0..3 {
            env.kinesis
                .put_record()
                .stream_name(&stream)
                .partition_key(format!("k{i}"))
                .data(aws_sdk_kinesis::primitives::Blob::new(vec![b'x'; 100]))
                .send()
                .await
                .unwrap();
        }
        let second = c.observe().await.unwrap();
        let t = second.tails[shard];
        assert_eq!((t.records, t.bytes), (3, 300));
        assert!(t.over.is_some_and(|d| d > Duration::ZERO));
        let b = second.probes[shard].as_ref().unwrap().as_ref().unwrap();
        assert_eq!((b.records, b.exact), (3, true), "3 behind TRIM_HORIZON");
        assert_eq!(second.leases.len(), 1);
        assert!(second.errors.is_empty(), "{:?}", second.errors);
        // Nothing new: the tail reads nothing more.
        assert_eq!(c.observe().await.unwrap().tails[shard].records, 0);
    }

    #[test]
    fn liveness_needs_a_change_within_the_failover_time() {
        let f = Duration::from_secs(10);
        let s = Duration::from_secs;
        use Liveness::*;
        for (owned, since, watched, want) in [
            (false, None, s(60), Free),
            (true, None, s(3), Unknown),
            (true, Some(s(2)), s(3), Alive),
            (true, Some(s(10)), s(30), Alive),
            (true, Some(s(11)), s(30), NotAlive),
            (true, None, s(10), NotAlive),
        ] {
            assert_eq!(
                liveness_over_time(owned, since, watched, f),
                want,
                "{since:?} {watched:?}"
            );
        }
    }

    #[test]
    fn sampler_turns_counters_tails_and_checkpoints_into_rates() {
        let t0 = Instant::now();
        let mut s = Sampler::new("app", "orders", Duration::from_secs(3));
        let first = s.update(obs(t0, vec![lease("shardId-0", "w1", 5, "100")], None));
        assert_eq!(
            first.shards[0].lag.alive,
            Liveness::Unknown,
            "not watched yet"
        );
        assert_eq!(first.shards[0].records_per_s, None);
        assert_eq!(first.shards[1].lag.state, lag::State::NoLease);

        // 2 s later: renewed and checkpointed; the tail saw 10 records, 2,000 bytes.
        let tail = TailRead {
            records: 10,
            bytes: 2_000,
            over: Some(Duration::from_secs(2)),
        };
        let t1 = t0 + Duration::from_secs(2);
        let snap = s.update(obs(
            t1,
            vec![lease("shardId-0", "w1", 7, "200")],
            Some(tail),
        ));
        let v = &snap.shards[0];
        assert_eq!(v.lag.alive, Liveness::Alive);
        assert_eq!((v.records_per_s, v.bytes_per_s), (Some(5.0), Some(1_000.0)));
        let w = &snap.workers[0];
        assert_eq!(
            (w.id.as_str(), w.leases, w.alive),
            ("w1", 1, Liveness::Alive)
        );
        assert_eq!(w.checkpoints_per_s, 0.5, "one checkpoint move in 2 s");
        assert_eq!(w.incoming_records_per_s, Some(5.0));
        assert_eq!(w.max_behind_ms, Some(1500));

        // Then nothing moves for longer than the failover time: not alive.
        let t2 = t1 + Duration::from_secs(4);
        let snap = s.update(obs(t2, vec![lease("shardId-0", "w1", 7, "200")], None));
        assert_eq!(snap.shards[0].lag.alive, Liveness::NotAlive);
        assert_eq!(snap.workers[0].alive, Liveness::NotAlive);
    }

    #[test]
    fn draws_shards_and_workers() {
        let t0 = Instant::now();
        let mut s = Sampler::new("app", "orders", Duration::from_secs(3));
        s.update(obs(t0, vec![lease("shardId-0", "w1", 5, "100")], None));
        let tail = TailRead {
            records: 10,
            bytes: 4_096,
            over: Some(Duration::from_secs(2)),
        };
        let snap = s.update(obs(
            t0 + Duration::from_secs(2),
            vec![lease("shardId-0", "w1", 6, "200")],
            Some(tail),
        ));
        let mut terminal = ratatui::Terminal::new(TestBackend::new(120, 16)).unwrap();
        terminal.draw(|f| draw(f, &snap)).unwrap();
        let buf = terminal.backend().buffer();
        let lines: Vec<String> = (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect();
        let find = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle:?} not drawn:\n{}", lines.join("\n")))
        };
        assert!(lines[0].starts_with("kinesis top — stream orders  app app  refresh #2"));
        let header = find("IN REC/S");
        let row = find("shardId-0 ");
        assert!(row > header);
        // The cells between the block's borders.
        let cells = |line: &str| -> Vec<String> {
            line.trim_matches(|c| c == '│' || c == ' ')
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            cells(&lines[row]),
            ["shardId-0", "w1", "yes", "5.0", "2.0", "1s", "4", "200/0"],
            "{}",
            lines[row]
        );
        let col = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(col(&lines[header], "OWNER"), col(&lines[row], "w1"));
        let unleased = &lines[find("shardId-1")];
        assert!(unleased.contains("no lease"), "{unleased}");
        let w = find("WORKER");
        assert_eq!(
            cells(&lines[w + 1]),
            ["w1", "1", "yes", "0.50", "5.0", "1s"],
            "{}",
            lines[w + 1]
        );
        assert_eq!(lines.last().unwrap().trim_end(), "q quits");
    }
}
