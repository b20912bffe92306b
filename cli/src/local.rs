//! `kinesis local`: the embedded emulators as a standalone server for any SDK or the AWS CLI.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use kinesis_testkit::{
    EmulatorOptions, LocalEmulators, kinesis_for, local_sdk_config, wait_stream_active,
};

#[derive(Debug, Args)]
pub(crate) struct LocalArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Kinesis port (0: any free port).
    #[arg(long, default_value_t = 4567)]
    kinesis_port: u16,
    /// DynamoDB port (0: any free port).
    #[arg(long, default_value_t = 4569)]
    dynamodb_port: u16,
    /// Create a stream at start, as NAME:SHARDS (repeatable).
    #[arg(long = "stream", value_name = "NAME:SHARDS")]
    streams: Vec<String>,
    /// Enforce per-shard write limits (1 MiB/s and 1,000 records/s).
    #[arg(long)]
    enforce_limits: bool,
    /// Time a new stream stays CREATING, in milliseconds.
    #[arg(long, default_value_t = 0)]
    create_stream_ms: u64,
    /// Time a resharded stream stays UPDATING, in milliseconds.
    #[arg(long, default_value_t = 500)]
    update_stream_ms: u64,
}

fn parse_stream(s: &str) -> anyhow::Result<(String, i32)> {
    let (name, shards) = s.rsplit_once(':').unwrap_or((s, "1"));
    kinesis_core::StreamRef::parse(name)?;
    let shards: i32 = shards
        .parse()
        .with_context(|| format!("--stream {s:?}: shard count must be a number"))?;
    if shards < 1 {
        bail!("--stream {s:?}: shard count must be at least 1");
    }
    Ok((name.to_string(), shards))
}

pub(crate) async fn run(args: LocalArgs) -> anyhow::Result<ExitCode> {
    let streams = args
        .streams
        .iter()
        .map(|s| parse_stream(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = EmulatorOptions {
        kinesis_addr: SocketAddr::new(args.host, args.kinesis_port),
        dynamodb_addr: SocketAddr::new(args.host, args.dynamodb_port),
        enforce_limits: args.enforce_limits,
        create_stream_delay: Duration::from_millis(args.create_stream_ms),
        update_stream_delay: Duration::from_millis(args.update_stream_ms),
        ..EmulatorOptions::default()
    };
    let emu = LocalEmulators::start(&opts).await?;
    let client = kinesis_for(&local_sdk_config(), &emu.kinesis_endpoint());
    for (name, shards) in &streams {
        client
            .create_stream()
            .stream_name(name)
            .shard_count(*shards)
            .send()
            .await
            .map_err(|e| kinesis_core::AwsError::new("CreateStream", e))?;
        wait_stream_active(&client, name, Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
    }
    crate::outln!("Kinesis   {}", emu.kinesis_endpoint())?;
    crate::outln!("DynamoDB  {}", emu.dynamodb_endpoint())?;
    for (name, shards) in &streams {
        crate::outln!("stream    {name} ({shards} shards)")?;
    }
    crate::outln!()?;
    crate::outln!("# To use them from a shell (any AWS SDK or the AWS CLI):")?;
    crate::outln!("export AWS_ENDPOINT_URL_KINESIS={}", emu.kinesis_endpoint())?;
    crate::outln!(
        "export AWS_ENDPOINT_URL_DYNAMODB={}",
        emu.dynamodb_endpoint()
    )?;
    crate::outln!(
        "export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test"
    )?;
    crate::outln!()?;
    crate::outln!("# Ready. Ctrl-C stops (data is in memory only).")?;
    shutdown_signal().await;
    eprintln!("stopping");
    emu.shutdown(Duration::from_secs(5)).await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
