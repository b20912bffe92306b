//! `kinesis-agent`: tails log files and ships their lines to Kinesis (`kinesisStream`) or
//! Amazon Data Firehose (`deliveryStream`) through the producers, checkpointing only what the
//! destination acknowledged.
//!
//! ```text
//!   control (signals) ─ Stop / Reload(config) ─► run_controlled
//!                                                 │ one Store task owns the checkpoint file
//!   per flow: Tailer ─ batches (≤ unsettled budget) ─► Producer / FirehoseProducer::send_batch
//!                                                        │ one receipt per batch (waits when full)
//!             acker: per (flow, file), in order, the offset below which every batch is
//!                    acknowledged ─► Store::advance ─► checkpoint file (atomic, versioned)
//! ```
//!
//! Metrics: Prometheus `/metrics` (`httpListenAddress`, the `agent_*` names) and CloudWatch
//! (`cloudwatch.*`, on by default as in the Kinesis Agent, its names per `Destination`) at once,
//! through one `metrics_util` fan-out ([`cloudwatch`]); the last CloudWatch window is sent at
//! a stop, within the drain time.
//!
//! At-least-once: after a crash, lines after the last checkpoint are read and sent again. A
//! reload starts the new flows' producers first (retrying transient failures) while the old
//! flows keep running, then drains the old flows and starts the new ones from the store.
//!
//! ```no_run
//! # async fn demo(cfg: kinesis_agent::config::AgentConfig) -> Result<(), kinesis_agent::AgentError> {
//! let (control, rx) = tokio::sync::mpsc::channel(8);
//! let agent = tokio::spawn(kinesis_agent::run_controlled(cfg, None, rx, std::time::Duration::from_secs(10), || {}));
//! // ... later: a new configuration, then stop.
//! control.send(kinesis_agent::Control::Stop).await.ok();
//! agent.await.ok();
//! # Ok(()) }
//! ```

pub(crate) mod acks;
pub mod checkpoint;
pub mod cloudwatch;
pub mod config;
pub mod credentials;
pub mod ec2meta;
pub(crate) mod flow;
pub mod fswatch;
pub mod http;
pub mod identity;
pub mod jsonc;
pub mod lines;
pub mod process;
pub(crate) mod progress;
pub(crate) mod records;
pub(crate) mod sink;
pub mod store;
pub mod tail;
pub(crate) mod telemetry;

use std::future::Future;
use std::time::Duration;

use kinesis_core::sdk::AwsOptions;
use kinesis_core::{BackoffConfig, ErrorKind};
use kinesis_producer::Producer;
use kinesis_producer::firehose::FirehoseProducer;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::config::{AgentConfig, DestinationKind};
use crate::flow::{FlowOptions, FlowRun};
use crate::sink::Sink;
use crate::store::Store;

/// Running the agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The checkpoint file could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointFileError),
    /// The `/health` and `/metrics` listener could not start.
    #[error("cannot listen on {0}: {1}")]
    Http(std::net::SocketAddr, std::io::Error),
    /// A producer could not start (stream missing, no access, ...).
    #[error("flow {stream}: {source}")]
    Producer {
        /// The flow's stream.
        stream: String,
        /// The cause.
        source: kinesis_producer::BuildError,
    },
    /// A Firehose producer could not start (its configuration).
    #[error("flow to delivery stream {stream}: {source}")]
    Firehose {
        /// The flow's delivery stream.
        stream: String,
        /// The cause.
        source: kinesis_producer::ConfigError,
    },
}

/// What a running agent is told.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control {
    /// Apply this configuration (SIGHUP).
    Reload(Box<AgentConfig>),
    /// Stop: no more reading, deliver what was read (up to the drain time), write the final
    /// checkpoints (SIGTERM).
    Stop,
}

/// Runs the agent until `shutdown` resolves, then stops reading, waits up to `drain` for what
/// was sent, and writes the final checkpoints.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> Result<(), AgentError> {
    with_shutdown(cfg, None, shutdown, drain).await
}

/// [`run`] with a Kinesis client made by the caller (tests, custom credentials).
pub async fn run_with_client(
    cfg: AgentConfig,
    client: aws_sdk_kinesis::Client,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> Result<(), AgentError> {
    with_shutdown(cfg, Some(client), shutdown, drain).await
}

async fn with_shutdown(
    cfg: AgentConfig,
    client: Option<aws_sdk_kinesis::Client>,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> Result<(), AgentError> {
    let (tx, rx) = mpsc::channel(1);
    let agent = run_controlled(cfg, client, rx, drain, || {});
    tokio::pin!(agent);
    tokio::select! {
        r = &mut agent => return r,
        () = shutdown => {}
    }
    let _ = tx.send(Control::Stop).await;
    agent.await
}

async fn client_for(cfg: &AgentConfig) -> aws_sdk_kinesis::Client {
    let opts = AwsOptions {
        region: cfg.kinesis_region.clone(),
        endpoint_url: cfg.kinesis_endpoint.clone(),
        profile: None,
    };
    let sdk = kinesis_core::sdk::load(&opts).await;
    // The configuration's identity (static keys, an assumed role), as for every client.
    let sdk = credentials::apply(&cfg.credentials, sdk).await;
    let client = kinesis_core::sdk::kinesis_client(&sdk, &opts);
    // Every call gives up after CALL_TIMEOUT (the producer's PutRecords use its own, shorter
    // request timeout): a stalled connection cannot hold a flow's start (ListShards) forever.
    let conf = client
        .config()
        .to_builder()
        .timeout_config(
            client
                .config()
                .timeout_config()
                .map(|t| t.to_builder())
                .unwrap_or_default()
                .operation_attempt_timeout(CALL_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

/// Longest a Kinesis call made by the agent may take (an attempt; the SDK retries).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The Firehose client, for flows with `deliveryStream`: the region of `kinesis.region`, the
/// endpoint of `firehose.endpoint` (else `AWS_ENDPOINT_URL_FIREHOSE`, `AWS_ENDPOINT_URL`, the
/// region's), and the agent's one identity. With `metered`, its PutRecordBatch calls count
/// for `ServiceErrors`.
async fn firehose_client_for(cfg: &AgentConfig, metered: bool) -> aws_sdk_firehose::Client {
    let opts = AwsOptions {
        region: cfg.kinesis_region.clone(),
        // Not on the shared configuration: STS (assumeRoleARN) must not go to Firehose's
        // endpoint.
        endpoint_url: None,
        profile: None,
    };
    let mut sdk = kinesis_core::sdk::load(&opts).await;
    if sdk.region().is_none() && cfg.firehose_endpoint.is_some() {
        sdk = sdk
            .into_builder()
            .region(aws_types::region::Region::from_static(
                kinesis_core::sdk::LOCAL_FALLBACK_REGION,
            ))
            .build();
    }
    let sdk = credentials::apply(&cfg.credentials, sdk).await;
    let mut b = aws_sdk_firehose::config::Builder::from(&sdk);
    if let Some(e) = &cfg.firehose_endpoint {
        b = b.endpoint_url(e);
    }
    if metered {
        b = b.interceptor(cloudwatch::PutRecordsCalls);
    }
    aws_sdk_firehose::Client::from_conf(b.build())
}

fn has_firehose(cfg: &AgentConfig) -> bool {
    cfg.flows
        .iter()
        .any(|f| f.kind == DestinationKind::DeliveryStream)
}

/// Pauses between attempts to start a flow whose stream cannot be reached.
const START_BACKOFF: BackoffConfig =
    BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(30));

enum Built {
    Ready(Vec<Sink>),
    Stopped,
    Failed(AgentError),
}

/// Starts a producer per flow, retrying transient failures (throttling, a stream still being
/// created, the network) until they work or a `Stop` comes; failures retrying cannot fix
/// (no such stream, no permission, an invalid configuration) end it. A Firehose producer
/// starts without a call (a delivery stream that is missing or closed to us fails its
/// records, which are sent again, backing off, with a warning).
async fn build_producers(
    cfg: &AgentConfig,
    client: &aws_sdk_kinesis::Client,
    firehose: Option<&aws_sdk_firehose::Client>,
    control: &mut mpsc::Receiver<Control>,
    queued: &mut Option<Control>,
) -> Built {
    let mut producers = Vec::new();
    for flow in &cfg.flows {
        if flow.kind == DestinationKind::DeliveryStream {
            let Some(fh) = firehose else {
                return Built::Failed(AgentError::Firehose {
                    stream: flow.stream.clone(),
                    source: kinesis_producer::ConfigError {
                        field: "client",
                        reason: "no Firehose client (a bug)".into(),
                    },
                });
            };
            match FirehoseProducer::builder(fh.clone(), &flow.stream)
                .config(sink::firehose_config(flow, cfg))
                .build()
            {
                Ok(p) => producers.push(Sink::Firehose(p)),
                Err(source) => {
                    return Built::Failed(AgentError::Firehose {
                        stream: flow.stream.clone(),
                        source,
                    });
                }
            }
            continue;
        }
        let mut backoff = START_BACKOFF.build();
        loop {
            let build = Producer::builder(client.clone(), &flow.stream)
                .config(sink::producer_config(flow, cfg))
                .build();
            let result = tokio::select! {
                r = build => r,
                c = control.recv() => match c {
                    Some(Control::Reload(new)) => {
                        // Applied once this one is running (the newest wins).
                        *queued = Some(Control::Reload(new));
                        continue;
                    }
                    _ => return Built::Stopped,
                },
            };
            match result {
                Ok(p) => {
                    producers.push(Sink::Kinesis(p));
                    break;
                }
                Err(e)
                    if e.kind()
                        .is_some_and(|k| k.is_retryable() || k == ErrorKind::ResourceInUse)
                        || matches!(e, kinesis_producer::BuildError::NoOpenShard(_)) =>
                {
                    let pause = backoff.next_delay().unwrap_or(START_BACKOFF.max);
                    warn!(message = "Cannot start a flow yet; trying again.", stream = %flow.stream, error = %e, retry_in = ?pause);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        c = control.recv() => match c {
                            Some(Control::Reload(new)) => *queued = Some(Control::Reload(new)),
                            _ => return Built::Stopped,
                        },
                    }
                }
                Err(source) => {
                    return Built::Failed(AgentError::Producer {
                        stream: flow.stream.clone(),
                        source,
                    });
                }
            }
        }
    }
    Built::Ready(producers)
}

fn start_flows(cfg: &AgentConfig, producers: Vec<Sink>, store: &Store) -> Vec<FlowRun> {
    cfg.flows
        .iter()
        .zip(producers)
        .map(|(f, p)| {
            let opts = FlowOptions {
                poll: f
                    .tuning
                    .min_time_between_file_polls
                    .unwrap_or(cfg.poll_interval),
                ttl: cfg.checkpoint_ttl,
                report_every: cfg.status_reporting_period,
                report_metrics: cfg.log_emit_metrics,
            };
            FlowRun::start(f.clone(), p, store.clone(), opts)
        })
        .collect()
}

async fn stop_flows(flows: Vec<FlowRun>, drain: Duration) {
    let deadline = kinesis_core::clock::later(Instant::now(), drain);
    futures::future::join_all(flows.into_iter().map(|f| f.stop(deadline))).await;
}

async fn serve_http(cfg: &AgentConfig) -> Result<Option<http::ServerGuard>, AgentError> {
    match cfg.http_listen {
        Some(addr) => Ok(Some(
            http::serve(addr)
                .await
                .map_err(|e| AgentError::Http(addr, e))?,
        )),
        None => Ok(None),
    }
}

/// Longest the last CloudWatch window may hold a stop (within the drain time): a CloudWatch
/// that does not answer delays the exit by this much at most.
const LAST_METRICS_WITHIN: Duration = Duration::from_secs(5);

async fn stop_metrics(cloudwatch: Option<cloudwatch::Running>, within: Duration) {
    if let Some(c) = cloudwatch {
        c.shutdown(within).await;
    }
}

/// Runs the agent until `Stop` (or until every sender of `control` is gone), applying each
/// `Reload` on the way; `ready` is called once the first flows run. With `client`, every
/// flow uses it (tests); else one is made from the configuration's endpoint and region.
///
/// A reload whose flows cannot start (a failure retrying cannot fix) is logged and the
/// current flows keep running; a `Stop` that comes during a reload is kept and acted on.
pub async fn run_controlled(
    cfg: AgentConfig,
    client: Option<aws_sdk_kinesis::Client>,
    mut control: mpsc::Receiver<Control>,
    drain: Duration,
    ready: impl FnOnce() + Send,
) -> Result<(), AgentError> {
    let loaded = checkpoint::load(&cfg.checkpoint_file)?;
    let (store, _store_task) =
        Store::spawn(cfg.checkpoint_file.clone(), loaded, cfg.checkpoint_ttl);
    let mut http = serve_http(&cfg).await?;
    let cloudwatch = cloudwatch::start(&cfg).await;
    let metered = |c: aws_sdk_kinesis::Client| match &cloudwatch {
        Some(_) => cloudwatch::with_call_counts(&c),
        None => c,
    };
    let fixed = client.is_some();
    let mut client = metered(match client {
        Some(c) => c,
        None => client_for(&cfg).await,
    });
    let mut firehose = if has_firehose(&cfg) {
        Some(firehose_client_for(&cfg, cloudwatch.is_some()).await)
    } else {
        None
    };
    let mut queued = None;
    process::prepare(&cfg.flows).await;
    let mut flows =
        match build_producers(&cfg, &client, firehose.as_ref(), &mut control, &mut queued).await {
            Built::Ready(p) => start_flows(&cfg, p, &store),
            Built::Stopped => {
                stop_metrics(cloudwatch, drain.min(LAST_METRICS_WITHIN)).await;
                store.shutdown().await?;
                return Ok(());
            }
            Built::Failed(e) => {
                stop_metrics(cloudwatch, drain.min(LAST_METRICS_WITHIN)).await;
                let _ = store.shutdown().await;
                return Err(e);
            }
        };
    ready();
    let mut cfg = cfg;
    loop {
        let next = match queued.take() {
            Some(c) => Some(c),
            None => control.recv().await,
        };
        let new = match next {
            None | Some(Control::Stop) => break,
            Some(Control::Reload(new)) => *new,
        };
        if new.checkpoint_file != cfg.checkpoint_file {
            error!(message = "Reload refused: checkpointFile cannot change while the agent runs; restart it to move the checkpoints.", from = %cfg.checkpoint_file.display(), to = %new.checkpoint_file.display());
            continue;
        }
        let new_client = if fixed
            || (new.kinesis_endpoint == cfg.kinesis_endpoint
                && new.kinesis_region == cfg.kinesis_region)
        {
            client.clone()
        } else {
            metered(client_for(&new).await)
        };
        let new_firehose = match &firehose {
            Some(f)
                if new.firehose_endpoint == cfg.firehose_endpoint
                    && new.kinesis_region == cfg.kinesis_region
                    && new.credentials == cfg.credentials =>
            {
                Some(f.clone())
            }
            _ if has_firehose(&new) => Some(firehose_client_for(&new, cloudwatch.is_some()).await),
            _ => None,
        };
        if new.cloudwatch != cfg.cloudwatch {
            warn!(message = "Reload: cloudwatch.* settings changed; they apply after a restart.");
        }
        // The old flows keep running while the new ones' producers start.
        process::prepare(&new.flows).await;
        let producers = match build_producers(
            &new,
            &new_client,
            new_firehose.as_ref(),
            &mut control,
            &mut queued,
        )
        .await
        {
            Built::Ready(p) => p,
            Built::Stopped => break,
            Built::Failed(e) => {
                error!(message = "Reload failed: the new configuration's flows cannot start; keeping the current ones.", error = %e);
                continue;
            }
        };
        stop_flows(std::mem::take(&mut flows), drain).await;
        // A Stop sent while the old flows drained is still in the channel: nothing is lost.
        match control.try_recv() {
            Ok(Control::Stop) => break,
            Ok(c) => queued = Some(c),
            Err(_) => {}
        }
        if new.http_listen != cfg.http_listen {
            drop(http.take());
            http = serve_http(&new).await?;
        }
        flows = start_flows(&new, producers, &store);
        client = new_client;
        firehose = new_firehose;
        info!(message = "Configuration reloaded.", flows = new.flows.len());
        cfg = new;
    }
    info!(message = "Stopping: no more reading; delivering what was read.");
    let stop_at = kinesis_core::clock::later(Instant::now(), drain);
    // The flows drain first; the CloudWatch publisher sends the last window with what is left
    // (a fifth of the drain time kept back for it, at most 2 s), so the whole stop
    // stays within `drain`.
    let reserve = if cloudwatch.is_some() {
        (drain / 5).min(Duration::from_secs(2))
    } else {
        Duration::ZERO
    };
    stop_flows(flows, drain - reserve).await;
    let left = stop_at.saturating_duration_since(Instant::now());
    stop_metrics(cloudwatch, left.min(LAST_METRICS_WITHIN)).await;
    store.shutdown().await?;
    info!(message = "Stopped; checkpoints written.");
    Ok(())
}
