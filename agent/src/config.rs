//! Agent configuration: a native TOML file, or the Java Kinesis Agent's `agent.json` as is.
//!
//! ```text
//!   agent.toml ──┐                         ┌─ flows: [Flow { file_pattern, stream, kind
//!                ├─► parse ─► validate ─► AgentConfig     (kinesisStream | deliveryStream),
//!   agent.json ──┘  (numbers as strings,    │              key, tuning, ... }]
//!                    unknown keys warned)   └─ checkpoint_file, kinesis/firehose endpoints,
//!                                              region, credentials, cloudwatch, log status
//! ```
//!
//! Both formats use the Kinesis Agent's key names (`flows`, `filePattern`, `kinesisStream` or
//! `deliveryStream`, `partitionKeyOption`, `initialPosition`, `maxBufferAgeMillis`, ...).
//! Invalid values fail with the key's path and the reason; unknown keys produce warnings, not
//! failures. Every Kinesis Agent key is honoured or refused with its reason (see agent/README.md's
//! table of the batching, retry, polling and logging keys).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Where a file without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// From its first byte.
    StartOfFile,
    /// From its end at discovery: only new lines (the Kinesis Agent's default).
    EndOfFile,
}

/// How a file is recognised across renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileIdentity {
    /// CRC32 of the first line (default): survives renames and copies (copytruncate).
    Content,
    /// Device and inode: survives renames and files whose first lines are identical, but a
    /// copytruncate copy is a new file (read again from its start).
    DevInode,
}

/// How a record's partition key is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKeyRule {
    /// Random keys (the Kinesis Agent's default): spreads load over the shards. The Kinesis
    /// Agent draws one per line; here one random key covers a run of lines of about one
    /// aggregate (50 KiB), so aggregates still land on random shards but carry one key each.
    Random,
    /// MD5 of the record's data, in hex: identical records go to the same shard.
    Deterministic,
    /// The value of this top-level field of a JSON record (random if absent).
    JsonField(String),
}

/// What happens to a record over the size limit (`oversizedRecords`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Oversized {
    /// Cut to the limit and end with `truncatedRecordTerminator` (the Kinesis Agent's way).
    #[default]
    Truncate,
    /// Sent whole, as consecutive records of at most the limit each (same partition key, in
    /// order within their aggregate); the file's checkpoint passes the line only when every
    /// part is delivered.
    Split,
}

/// Which service a flow ships to: the Kinesis Agent picks it by the key present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DestinationKind {
    /// A Kinesis data stream (`kinesisStream`), through the Kinesis producer.
    #[default]
    KinesisStream,
    /// An Amazon Data Firehose delivery stream (`deliveryStream`), through the Firehose
    /// producer.
    DeliveryStream,
}

/// The Kinesis Agent's per-flow batching, retry and polling keys. `Default` is the Kinesis
/// Agent's defaults (or ours, where a key is left to the producer: `None`).
#[derive(Debug, Clone)]
pub struct FlowTuning {
    /// Most records in one batch the flow hands the producer (`maxBufferSizeRecords`,
    /// 1..=500; 500, as the Kinesis Agent). For a delivery stream also the records of one
    /// `PutRecordBatch`.
    pub max_buffer_size_records: usize,
    /// Most data bytes in one batch the flow hands the producer (`maxBufferSizeBytes`;
    /// `None`: the Kinesis Agent's 5 MiB for a stream, 4 MiB for a delivery stream, which are
    /// also the maxima). For a delivery stream also the bytes of one `PutRecordBatch` (at least
    /// 1,000 KiB there: a call must hold the largest record).
    pub max_buffer_size_bytes: Option<usize>,
    /// First pause after a failed call (`retryInitialBackoffMillis`, 1..=60,000; `None`: the
    /// producer's 100 ms, the Kinesis Agent's default too).
    pub retry_initial_backoff: Option<Duration>,
    /// Longest pause after failed calls (`retryMaxBackoffMillis`, 1..=600,000; `None`: the
    /// producer's 5 s for a stream, 10 s for a delivery stream, the Kinesis Agent's).
    pub retry_max_backoff: Option<Duration>,
    /// Most batches the flow may have handed to its producer and not yet settled
    /// (`publishQueueCapacity`, 1..=10,000; 100 buffers, as the Kinesis Agent): reading waits
    /// at that many, as the Kinesis Agent's tailer waits on its full publish queue.
    pub publish_queue_capacity: usize,
    /// Lines matching this are not shipped (`fileFooterPattern`; their offset is checkpointed).
    pub file_footer_pattern: Option<regex::bytes::Regex>,
    /// Pause between polls of the flow's files when nothing was read
    /// (`minTimeBetweenFilePollsMillis`, 1..=60,000; `None`: the agent's `pollIntervalMillis`,
    /// 100 ms, the Kinesis Agent's default).
    pub min_time_between_file_polls: Option<Duration>,
    /// Joins consecutive records into one Firehose record of at most this many bytes
    /// (`aggregatedRecordSizeBytes`, delivery streams only, 0..=1,000 KiB; 0: off).
    pub aggregated_record_size_bytes: usize,
}

impl Default for FlowTuning {
    fn default() -> Self {
        Self {
            max_buffer_size_records: 500,
            max_buffer_size_bytes: None,
            retry_initial_backoff: None,
            retry_max_backoff: None,
            publish_queue_capacity: 100,
            file_footer_pattern: None,
            min_time_between_file_polls: None,
            aggregated_record_size_bytes: 0,
        }
    }
}

/// One file pattern shipped to one stream or delivery stream.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Glob of files to tail; `**` matches any depth.
    pub file_pattern: String,
    /// Destination: a stream (name or ARN) or a delivery stream's name, as `kind` says.
    pub stream: String,
    /// Which service `stream` is in.
    pub kind: DestinationKind,
    /// Partition key rule.
    pub partition_key: PartitionKeyRule,
    /// Start position of new files.
    pub initial_position: InitialPosition,
    /// Longest a record waits before it is sent (`maxBufferAgeMillis`, 1 s..15 min, KA default 60 s;
    /// we use the producer's 100 ms unless configured).
    pub max_buffer_age: Duration,
    /// A new record starts at a line matching this (`multiLineStartPattern`).
    pub multi_line_start_pattern: Option<String>,
    /// Lines skipped at the start of each file (`skipHeaderLines`).
    pub skip_header_lines: usize,
    /// Appended to a record truncated to the size limit (`truncatedRecordTerminator`).
    pub truncated_record_terminator: String,
    /// Records over `max_record_bytes`: truncated (default) or split (`oversizedRecords`:
    /// TRUNCATE or SPLIT).
    pub oversized: Oversized,
    /// Largest record, data + partition key (1 MiB, the API's default limit).
    pub max_record_bytes: usize,
    /// A partial last line waits this long for its newline, then is sent as is.
    pub partial_line_timeout: Duration,
    /// `dataProcessingOptions`, applied in order.
    pub processors: Vec<crate::process::Processor>,
    /// File identity (`fileIdentity`: CONTENT or DEVINODE).
    pub identity: FileIdentity,
    /// The Kinesis Agent's batching, retry and polling keys.
    pub tuning: FlowTuning,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The flows.
    pub flows: Vec<Flow>,
    /// Checkpoint file (`checkpointFile`). KA: `/var/run/aws-kinesis-agent/checkpoints`;
    /// default here `/var/lib/kinesis-agent/checkpoints.json` (survives reboots).
    pub checkpoint_file: PathBuf,
    /// Kinesis endpoint override (`kinesis.endpoint`).
    pub kinesis_endpoint: Option<String>,
    /// Region (`kinesis.region`).
    pub kinesis_region: Option<String>,
    /// How often files are polled for new data.
    pub poll_interval: Duration,
    /// Serve `/health` and Prometheus `/metrics` here (`httpListenAddress`); must be loopback.
    pub http_listen: Option<std::net::SocketAddr>,
    /// Checkpoint entries of files not seen for this long are dropped
    /// (`checkpointTimeToLiveDays`, 1..=365; 7 days, as the Kinesis Agent).
    pub checkpoint_ttl: Duration,
    /// CloudWatch metrics (`cloudwatch.*`).
    pub cloudwatch: CloudWatchConfig,
    /// The identity every client uses (`awsAccessKeyId`, `assumeRoleARN`, ...).
    pub credentials: CredentialsConfig,
    /// How long a stop (SIGTERM) may take to deliver what was read and write the last
    /// checkpoints (`shutdownTimeoutMillis`, 1,000..=600,000; 10 s, as the Kinesis Agent).
    pub shutdown_timeout: Duration,
    /// Firehose endpoint override (`firehose.endpoint`); without it, `AWS_ENDPOINT_URL_FIREHOSE`,
    /// then `AWS_ENDPOINT_URL`, then the region's (`kinesis.region`).
    pub firehose_endpoint: Option<String>,
    /// The periodic progress line per flow in the log (`log.statusReportingPeriodSeconds`, or
    /// `statusReportingPeriodSeconds`, 1..=86,400; 30 s, as the Kinesis Agent).
    pub status_reporting_period: Duration,
    /// Add the flow's counters to each progress line (`log.emitMetrics`; false, as the Kinesis
    /// Agent, which then dumps its internal counters).
    pub log_emit_metrics: bool,
    /// `maxSendingThreads` (1..=10,000): the Kinesis Agent's sender pool, so the calls it has in
    /// flight at once. Here calls are asynchronous (no thread per call); when set, it caps
    /// each producer's calls in flight (`None`: 24 for a stream, 8 for a delivery stream).
    pub max_sending_threads: Option<usize>,
}

/// The Kinesis Agent's credential keys (see [`crate::credentials`]). All empty by default: the
/// standard chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialsConfig {
    /// `awsAccessKeyId` and `awsSecretAccessKey` (both or neither); they take precedence over
    /// the standard chain, as in the Kinesis Agent.
    pub access_key: Option<(String, crate::credentials::Secret)>,
    /// `assumeRoleARN`: the role assumed over the base identity.
    pub assume_role_arn: Option<String>,
    /// `assumeRoleExternalId` (needs `assumeRoleARN`).
    pub assume_role_external_id: Option<crate::credentials::Secret>,
    /// `sts.endpoint`: where AssumeRole goes (needs `assumeRoleARN`).
    pub sts_endpoint: Option<String>,
}

/// The `cloudwatch.*` keys, with the Kinesis Agent's defaults (its `AgentConfiguration`):
/// metrics on, namespace `AWSKinesisAgent`, 30 s buffer, a queue of 10 000, no `Instance`
/// dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudWatchConfig {
    /// Publish metrics (`cloudwatch.emitMetrics`, default true).
    pub emit_metrics: bool,
    /// CloudWatch endpoint (`cloudwatch.endpoint`); without it, `AWS_ENDPOINT_URL_CLOUDWATCH`,
    /// then `AWS_ENDPOINT_URL`, then the region's endpoint. `kinesis.endpoint` is not used for
    /// CloudWatch.
    pub endpoint: Option<String>,
    /// Namespace (`cloudwatch.namespace`, default `AWSKinesisAgent`).
    pub namespace: String,
    /// How long samples gather before they are sent (`cloudwatch.metricsBufferTimeMillis`,
    /// 1 000..=60 000, default 30 000; CloudWatch's standard resolution is one minute, so a
    /// longer buffer would merge two minutes).
    pub buffer_time: Duration,
    /// Statistic sets that may wait unsent; past it the oldest are dropped
    /// (`cloudwatch.metricsQueueSize`, 1..=1 000 000, default 10 000).
    pub queue_size: usize,
    /// Add the `Instance` dimension to every metric: the EC2 instance id, or the host name off
    /// EC2 (`cloudwatch.tagInstance`, default false).
    pub tag_instance: bool,
}

impl Default for CloudWatchConfig {
    fn default() -> Self {
        Self {
            emit_metrics: true,
            endpoint: None,
            namespace: "AWSKinesisAgent".to_owned(),
            buffer_time: Duration::from_secs(30),
            queue_size: 10_000,
            tag_instance: false,
        }
    }
}

impl Flow {
    /// The stream, or `deliveryStream NAME`, as check-config shows it.
    pub fn destination_label(&self) -> String {
        match self.kind {
            DestinationKind::KinesisStream => self.stream.clone(),
            DestinationKind::DeliveryStream => format!("deliveryStream {}", self.stream),
        }
    }

    /// The largest batch, in data bytes, the flow hands its producer (`maxBufferSizeBytes`, or
    /// the Kinesis Agent's default for the destination).
    pub fn max_batch_bytes(&self) -> usize {
        self.tuning
            .max_buffer_size_bytes
            .unwrap_or(match self.kind {
                DestinationKind::KinesisStream => 5 * 1024 * 1024,
                DestinationKind::DeliveryStream => 4 * 1024 * 1024,
            })
    }

    /// The flow's key in the checkpoint file: its destination and file pattern.
    pub fn key(&self) -> crate::checkpoint::FlowKey {
        let prefix = match self.kind {
            DestinationKind::KinesisStream => "kinesis",
            // The Kinesis Agent's flow id prefix for Firehose flows.
            DestinationKind::DeliveryStream => "fh",
        };
        crate::checkpoint::FlowKey {
            destination: format!("{prefix}:{}", self.stream),
            file_pattern: self.file_pattern.clone(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// Where: `flows[0].maxBufferAgeMillis`, or the file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The configuration and the warnings found while reading it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: AgentConfig,
    /// Unknown keys and ignored settings.
    pub warnings: Vec<String>,
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The Kinesis Agent's configuration file, read when no `-c` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/aws-kinesis/agent.json";
/// The Kinesis Agent's directory of extra flow files.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/aws-kinesis/agent.d";

/// Reads a configuration file (TOML if it ends in `.toml`, else JSON: `agent.json`), with the
/// flows of the files in `agent.d` appended, as the Kinesis Agent appends those of
/// `/etc/aws-kinesis/agent.d/`: that directory, and `agent.d` beside the file when it is
/// elsewhere.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let mut dirs = vec![PathBuf::from(DEFAULT_CONFIG_DIR)];
    if let Some(beside) = path.parent().map(|p| p.join("agent.d"))
        && !dirs.contains(&beside)
    {
        dirs.push(beside);
    }
    load_with_dirs(path, &dirs)
}

fn read_value(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(path.display().to_string(), e.to_string()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let t: toml::Value =
            toml::from_str(&text).map_err(|e| err(path.display().to_string(), e.to_string()))?;
        serde_json::to_value(t).map_err(|e| err(path.display().to_string(), e.to_string()))
    } else {
        parse_json(&text).map_err(|reason| err(path.display().to_string(), reason))
    }
}

/// [`load`] with the flow directories given (those that do not exist are skipped).
///
/// Of each directory, the `*.json` (and `*.toml`) files are read in name order and their
/// `flows` appended after the main file's; other keys in them are ignored with a warning (the
/// Kinesis Agent reads only `flows` there). Unlike the Kinesis Agent, which skips a file it
/// cannot read with a warning — and so silently ships nothing of its flows — a broken file
/// stops the load with its name and the reason; other files (editor backups, `README`) are
/// skipped with a warning.
pub fn load_with_dirs(path: &Path, dirs: &[PathBuf]) -> Result<Loaded, ConfigError> {
    let mut value = read_value(path)?;
    let mut warnings = Vec::new();
    // Where each appended flow came from, by its index in the merged list.
    let mut origin: Vec<(usize, String, usize)> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let json_or_toml = file.extension().is_some_and(|e| e == "json" || e == "toml");
            if !json_or_toml {
                warnings.push(format!(
                    "{}: not a .json or .toml file; skipped",
                    file.display()
                ));
                continue;
            }
            let extra = read_value(&file)?;
            let Some(obj) = extra.as_object() else {
                return Err(err(file.display().to_string(), "must be an object"));
            };
            for k in obj.keys().filter(|k| *k != "flows") {
                warnings.push(format!(
                    "{}: {k}: only flows are read from {}; ignored",
                    file.display(),
                    dir.display()
                ));
            }
            let Some(flows) = obj.get("flows") else {
                warnings.push(format!("{}: no flows", file.display()));
                continue;
            };
            let Some(flows) = flows.as_array() else {
                return Err(err(format!("{}: flows", file.display()), "must be a list"));
            };
            let Some(main) = value.as_object_mut() else {
                return Err(err("(top level)", "must be an object"));
            };
            let list = main
                .entry("flows")
                .or_insert_with(|| Value::Array(Vec::new()));
            let Some(list) = list.as_array_mut() else {
                return Err(err("flows", "must be a list"));
            };
            for (j, f) in flows.iter().enumerate() {
                origin.push((list.len(), file.display().to_string(), j));
                list.push(f.clone());
            }
        }
    }
    match from_value(&value) {
        Ok(mut l) => {
            warnings.append(&mut l.warnings);
            l.warnings = warnings;
            Ok(l)
        }
        Err(mut e) => {
            // `flows[7].x` of a flow from agent.d: name its file and its place there.
            for (i, file, j) in &origin {
                let here = format!("flows[{i}]");
                if let Some(rest) = e.path.strip_prefix(&here)
                    && (rest.is_empty() || rest.starts_with('.'))
                {
                    e.path = format!("{file}: flows[{j}]{rest}");
                    break;
                }
            }
            Err(e)
        }
    }
}

/// Parses `agent.json` text as the Kinesis Agent does: JSON with `//` and `/* */` comments
/// (Jackson's `ALLOW_COMMENTS`; see [`crate::jsonc`]).
pub fn parse_json(text: &str) -> Result<Value, String> {
    let text = crate::jsonc::strip_comments(text).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))
}

const GLOBAL_KEYS: &[&str] = &[
    "flows",
    "shutdownTimeoutMillis",
    "awsAccessKeyId",
    "awsSecretAccessKey",
    "assumeRoleARN",
    "assumeRoleExternalId",
    "sts.endpoint",
    "checkpointFile",
    "kinesis.endpoint",
    "kinesis.region",
    "pollIntervalMillis",
    "httpListenAddress",
    "checkpointTimeToLiveDays",
    "cloudwatch.emitMetrics",
    "cloudwatch.endpoint",
    "cloudwatch.namespace",
    "cloudwatch.tagInstance",
    "cloudwatch.metricsBufferTimeMillis",
    "cloudwatch.metricsQueueSize",
    "firehose.endpoint",
    "maxSendingThreads",
    "log.emitMetrics",
    "log.statusReportingPeriodSeconds",
    "statusReportingPeriodSeconds",
];
const FLOW_KEYS: &[&str] = &[
    "filePattern",
    "kinesisStream",
    "deliveryStream",
    "retryInitialBackoffMillis",
    "retryMaxBackoffMillis",
    "publishQueueCapacity",
    "fileFooterPattern",
    "minTimeBetweenFilePollsMillis",
    "aggregatedRecordSizeBytes",
    "partitionKeyOption",
    "partitionKeyField",
    "initialPosition",
    "maxBufferAgeMillis",
    "maxBufferSizeRecords",
    "maxBufferSizeBytes",
    "multiLineStartPattern",
    "skipHeaderLines",
    "truncatedRecordTerminator",
    "dataProcessingOptions",
    "partialLineTimeoutMillis",
    "maxRecordBytes",
    "fileIdentity",
    "oversizedRecords",
];

/// A number, accepting the strings users write (`"1000"`).
fn number(v: &Value, path: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| err(path, format!("must be a whole number, got {v}")))?;
    if n < min || n > max {
        return Err(err(path, format!("must be {min}..={max}, got {n}")));
    }
    Ok(n)
}

/// A boolean, accepting the strings users write (`"true"`, `"false"`).
fn boolean(v: &Value, path: &str) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(err(path, format!("must be true or false, got {v}"))),
    }
}

/// An http(s) URL.
fn url(v: &Value, path: &str, example: &str) -> Result<String, ConfigError> {
    let e = string(v, path)?.trim();
    if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 9 {
        return Err(err(path, format!("{e:?} is not a URL like {example}")));
    }
    Ok(e.to_owned())
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, ConfigError> {
    v.as_str()
        .ok_or_else(|| err(path, format!("must be a string, got {v}")))
}

/// Builds the configuration from parsed JSON (or TOML converted to JSON).
pub fn from_value(v: &Value) -> Result<Loaded, ConfigError> {
    let obj = v
        .as_object()
        .ok_or_else(|| err("(top level)", "must be an object"))?;
    let mut warnings = Vec::new();
    for k in obj.keys() {
        if !GLOBAL_KEYS.contains(&k.as_str()) && !k.starts_with("checkpoints.") {
            warnings.push(format!("{k}: unknown key, ignored"));
        }
    }
    let flows_v = obj
        .get("flows")
        .ok_or_else(|| err("flows", "is required"))?;
    let flows_a = flows_v
        .as_array()
        .ok_or_else(|| err("flows", "must be a list"))?;
    if flows_a.is_empty() {
        return Err(err("flows", "must hold at least one flow"));
    }
    let mut flows = Vec::new();
    for (i, f) in flows_a.iter().enumerate() {
        flows.push(flow(f, i, &mut warnings)?);
    }
    let mut seen = std::collections::HashSet::new();
    for (i, f) in flows.iter().enumerate() {
        if !seen.insert((f.kind, &f.stream, &f.file_pattern)) {
            return Err(err(
                format!("flows[{i}]"),
                "duplicate flow (same filePattern and destination)",
            ));
        }
    }
    let checkpoint_file = match obj.get("checkpointFile") {
        Some(p) => PathBuf::from(string(p, "checkpointFile")?),
        None => PathBuf::from("/var/lib/kinesis-agent/checkpoints.json"),
    };
    let poll_interval = match obj.get("pollIntervalMillis") {
        Some(p) => Duration::from_millis(number(p, "pollIntervalMillis", 10, 60_000)?),
        None => Duration::from_millis(100),
    };
    let http_listen = match obj.get("httpListenAddress") {
        Some(a) => {
            let addr: std::net::SocketAddr =
                string(a, "httpListenAddress")?.parse().map_err(|e| {
                    err(
                        "httpListenAddress",
                        format!("not an address like 127.0.0.1:9110: {e}"),
                    )
                })?;
            if !addr.ip().is_loopback() {
                return Err(err(
                    "httpListenAddress",
                    "must be a loopback address (127.0.0.1 or ::1)",
                ));
            }
            Some(addr)
        }
        None => None,
    };
    let checkpoint_ttl = match obj.get("checkpointTimeToLiveDays") {
        Some(d) => Duration::from_secs(number(d, "checkpointTimeToLiveDays", 1, 365)? * 86_400),
        None => Duration::from_secs(7 * 86_400),
    };
    let cloudwatch = cloudwatch(obj)?;
    let credentials = credentials(obj)?;
    let shutdown_timeout = match obj.get("shutdownTimeoutMillis") {
        Some(v) => Duration::from_millis(number(v, "shutdownTimeoutMillis", 1_000, 600_000)?),
        None => Duration::from_secs(10),
    };
    let firehose_endpoint = match obj.get("firehose.endpoint") {
        Some(v) => Some(url(
            v,
            "firehose.endpoint",
            "https://firehose.us-east-1.amazonaws.com",
        )?),
        None => None,
    };
    let status_reporting_period = match (
        obj.get("log.statusReportingPeriodSeconds"),
        obj.get("statusReportingPeriodSeconds"),
    ) {
        (Some(v), _) => {
            Duration::from_secs(number(v, "log.statusReportingPeriodSeconds", 1, 86_400)?)
        }
        (None, Some(v)) => {
            Duration::from_secs(number(v, "statusReportingPeriodSeconds", 1, 86_400)?)
        }
        (None, None) => Duration::from_secs(30),
    };
    let log_emit_metrics = match obj.get("log.emitMetrics") {
        Some(v) => boolean(v, "log.emitMetrics")?,
        None => false,
    };
    let max_sending_threads = match obj.get("maxSendingThreads") {
        Some(v) => Some(usize::try_from(number(v, "maxSendingThreads", 1, 10_000)?).unwrap_or(1)),
        None => None,
    };
    Ok(Loaded {
        config: AgentConfig {
            shutdown_timeout,
            firehose_endpoint,
            status_reporting_period,
            log_emit_metrics,
            max_sending_threads,
            credentials,
            cloudwatch,
            http_listen,
            checkpoint_ttl,
            flows,
            checkpoint_file,
            kinesis_endpoint: obj
                .get("kinesis.endpoint")
                .map(|e| string(e, "kinesis.endpoint").map(str::to_owned))
                .transpose()?,
            kinesis_region: obj
                .get("kinesis.region")
                .map(|e| string(e, "kinesis.region").map(str::to_owned))
                .transpose()?,
            poll_interval,
        },
        warnings,
    })
}

fn credentials(obj: &serde_json::Map<String, Value>) -> Result<CredentialsConfig, ConfigError> {
    let text = |k: &str| -> Result<Option<String>, ConfigError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let s = string(v, k)?.trim();
                if s.is_empty() {
                    return Err(err(k, "is empty"));
                }
                Ok(Some(s.to_owned()))
            }
        }
    };
    let access_key = match (text("awsAccessKeyId")?, text("awsSecretAccessKey")?) {
        (Some(id), Some(secret)) => Some((id, crate::credentials::Secret(secret))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(err("awsSecretAccessKey", "is required with awsAccessKeyId"));
        }
        (None, Some(_)) => {
            return Err(err("awsAccessKeyId", "is required with awsSecretAccessKey"));
        }
    };
    let assume_role_arn = text("assumeRoleARN")?;
    if let Some(a) = &assume_role_arn
        && !(a.starts_with("arn:") && a.contains(":role/"))
    {
        return Err(err(
            "assumeRoleARN",
            "must be a role ARN like arn:aws:iam::123456789012:role/NAME",
        ));
    }
    let assume_role_external_id = text("assumeRoleExternalId")?.map(crate::credentials::Secret);
    let sts_endpoint = text("sts.endpoint")?;
    if let Some(e) = &sts_endpoint
        && !(e.starts_with("https://") || e.starts_with("http://"))
    {
        return Err(err("sts.endpoint", "must be an http(s) URL"));
    }
    if assume_role_arn.is_none() {
        for (k, set) in [
            ("assumeRoleExternalId", assume_role_external_id.is_some()),
            ("sts.endpoint", sts_endpoint.is_some()),
        ] {
            if set {
                return Err(err(k, "is used only with assumeRoleARN, which is not set"));
            }
        }
    }
    Ok(CredentialsConfig {
        access_key,
        assume_role_arn,
        assume_role_external_id,
        sts_endpoint,
    })
}

fn cloudwatch(obj: &serde_json::Map<String, Value>) -> Result<CloudWatchConfig, ConfigError> {
    let mut c = CloudWatchConfig::default();
    if let Some(v) = obj.get("cloudwatch.emitMetrics") {
        c.emit_metrics = boolean(v, "cloudwatch.emitMetrics")?;
    }
    if let Some(v) = obj.get("cloudwatch.tagInstance") {
        c.tag_instance = boolean(v, "cloudwatch.tagInstance")?;
    }
    if let Some(v) = obj.get("cloudwatch.endpoint") {
        let e = string(v, "cloudwatch.endpoint")?.trim();
        if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 9 {
            return Err(err(
                "cloudwatch.endpoint",
                format!("{e:?} is not a URL like https://monitoring.us-east-1.amazonaws.com"),
            ));
        }
        c.endpoint = Some(e.to_owned());
    }
    if let Some(v) = obj.get("cloudwatch.namespace") {
        c.namespace = string(v, "cloudwatch.namespace")?.to_owned();
        let check = kinesis_metrics::MetricsConfig::new(c.namespace.clone());
        if let Err(e) = check.validate() {
            return Err(err("cloudwatch.namespace", e.to_string()));
        }
    }
    if let Some(v) = obj.get("cloudwatch.metricsBufferTimeMillis") {
        c.buffer_time = Duration::from_millis(number(
            v,
            "cloudwatch.metricsBufferTimeMillis",
            1_000,
            60_000,
        )?);
    }
    if let Some(v) = obj.get("cloudwatch.metricsQueueSize") {
        c.queue_size = usize::try_from(number(v, "cloudwatch.metricsQueueSize", 1, 1_000_000)?)
            .unwrap_or(c.queue_size);
    }
    Ok(c)
}

mod flow;
use flow::flow;

#[cfg(test)]
mod tests;
