//! `kinesis`: the operator's tool for the suite.
//!
//! ```text
//!   kinesis local            embedded Kinesis + DynamoDB emulators until Ctrl-C
//!   kinesis streams ...      create | describe | list | delete | split | merge | scale |
//!                            retention | encrypt | decrypt | tag | untag | mode (a JSON line
//!                            with the setting before and after)
//!   kinesis put              lines ─► records through the producer, with a summary
//!   kinesis put-record       one PutRecord ─► {shard_id, sequence_number}
//!   kinesis tail             shards ─► JSON lines | --format, without a lease table (kcat -C):
//!                            KPL de-aggregated, children after parents, --exit-at-end
//!   kinesis consume          a consumer worker printing JSON lines
//!                            (put and consume: --metrics-level none|summary|detailed publishes
//!                            the KPL's / KCL's metrics to CloudWatch, flushed before exit)
//!   kinesis lag              per shard: lease owner, alive?, checkpoint, records/time behind
//!   kinesis top              the same live every second, with incoming rates and workers
//!   kinesis leases ...       list | reset | release | delete-table (refused while a live
//!                            worker holds the lease unless --force; fenced on the counter)
//!   kinesis agg encode       JSON lines of user records  ─► KPL-aggregated records
//!   kinesis agg decode       JSON lines of Kinesis records ─► user records
//!   kinesis consumers ...    list | register | deregister enhanced fan-out consumers
//!   kinesis completions SH   bash | zsh | fish | elvish | powershell script; kinesis man: roff
//! ```
//!
//! AWS access goes through the standard chain (environment, profile, SSO, IMDS) and honours
//! `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KINESIS` and `AWS_ENDPOINT_URL_DYNAMODB`;
//! `--region`, `--endpoint-url` and `--profile` override them.

mod agg;
mod cloudwatch;
mod completions;
mod consume;
mod consumers;
mod lag;
mod leases;
mod local;
mod position;
mod put;
mod put_record;
mod record_out;
mod settings;
mod streams;
mod tail;
mod top;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use kinesis_core::sdk::AwsOptions;

#[derive(Debug, Parser)]
#[command(
    name = "kinesis",
    version,
    about = "Operator tool for Amazon Kinesis Data Streams"
)]
struct Cli {
    /// AWS region (default: the standard chain; us-east-1 when an endpoint is set and no
    /// region is configured).
    #[arg(long, global = true)]
    region: Option<String>,
    /// Endpoint URL for every service (default: AWS_ENDPOINT_URL_* or the AWS endpoint).
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    /// Named profile from the AWS config files.
    #[arg(long, global = true)]
    profile: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded Kinesis and DynamoDB emulators until Ctrl-C.
    Local(local::LocalArgs),
    /// Create, inspect, reshard and delete streams; retention, encryption, tags, capacity mode.
    #[command(subcommand)]
    Streams(streams::StreamsCommand),
    /// Send lines from stdin (or a file) as records, through the producer.
    Put(put::PutArgs),
    /// Send one record with a direct PutRecord and print its shard and sequence number.
    PutRecord(put_record::PutRecordArgs),
    /// Run a consumer worker that prints one JSON line per user record.
    Consume(consume::ConsumeArgs),
    /// Print records from a stream's shards without a lease table (kcat -C).
    Tail(tail::TailArgs),
    /// Per shard: lease owner (alive?), checkpoint and how far behind the newest record.
    Lag(lag::LagArgs),
    /// A live terminal view of a stream and an application: per shard and per worker.
    Top(top::TopArgs),
    /// Inspect and repair the lease table of a consumer application.
    #[command(subcommand)]
    Leases(leases::LeasesCommand),
    /// List, register and deregister enhanced fan-out consumers of a stream.
    #[command(subcommand)]
    Consumers(consumers::ConsumersCommand),
    /// Encode and decode the KPL aggregation format.
    #[command(subcommand)]
    Agg(agg::AggCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff; `kinesis man | man -l -`), or a subcommand's.
    Man(completions::ManArgs),
}

impl Cli {
    fn aws_options(&self) -> AwsOptions {
        AwsOptions {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KINESIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error")),
        )
        // Colour only on a terminal: a redirected log stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let opts = cli.aws_options();
    let result = match cli.command {
        // Pure stdin → stdout work needs no runtime.
        Command::Agg(cmd) => agg::run(&cmd),
        Command::Completions(args) => completions::completions(&args, Cli::command()),
        Command::Man(args) => completions::man(&args, Cli::command()),
        Command::Local(args) => runtime().and_then(|rt| rt.block_on(local::run(args))),
        Command::Streams(cmd) => runtime().and_then(|rt| rt.block_on(streams::run(cmd, &opts))),
        Command::Put(args) => runtime().and_then(|rt| rt.block_on(put::run(args, &opts))),
        Command::Consume(args) => runtime().and_then(|rt| rt.block_on(consume::run(args, &opts))),
        Command::PutRecord(args) => {
            runtime().and_then(|rt| rt.block_on(put_record::run(args, &opts)))
        }
        Command::Consumers(cmd) => runtime().and_then(|rt| rt.block_on(consumers::run(cmd, &opts))),
        Command::Tail(args) => runtime().and_then(|rt| rt.block_on(tail::run(args, &opts))),
        Command::Lag(args) => runtime().and_then(|rt| rt.block_on(lag::run(args, &opts))),
        Command::Top(args) => runtime().and_then(|rt| rt.block_on(top::run(args, &opts))),
        Command::Leases(cmd) => runtime().and_then(|rt| rt.block_on(leases::run(cmd, &opts))),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, stopping at an [`AwsError`](kinesis_core::AwsError): it already
/// shows the service's code and message, and the SDK error below repeats them.
fn describe_error(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.is::<kinesis_core::AwsError>() {
            break;
        }
    }
    parts.join(": ")
}

/// A reader such as `head` closed our stdout: not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Writes to stdout, returning an error (not panicking like `println!`) when it is closed.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
