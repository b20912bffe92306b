//! `kinesis consumers list|register|deregister`: a stream's enhanced fan-out consumers.
//!
//! ```text
//!   --stream ─► DescribeStreamSummary (the ARN these calls need; missing stream → error)
//!     list       ─► ListStreamConsumers (all pages)        ─► a JSON line per consumer
//!     register   ─► RegisterStreamConsumer ─► until ACTIVE ─► its JSON line
//!     deregister ─► DeregisterStreamConsumer ─► until gone ─► its JSON line (status DELETED)
//! ```

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_kinesis::primitives::DateTimeFormat;
use aws_sdk_kinesis::types::ConsumerStatus;
use clap::Subcommand;
use kinesis_core::sdk::{self, AwsOptions};
use kinesis_core::wait::until_ready;
use kinesis_core::{AwsError, BackoffConfig, ErrorKind, StreamRef};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub(crate) enum ConsumersCommand {
    /// List the stream's registered consumers.
    List {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
    },
    /// Register a consumer and wait until it is ACTIVE.
    Register {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// Consumer name (1 to 128 characters of a-z A-Z 0-9 _ . -).
        #[arg(long, value_parser = parse_name)]
        name: String,
        #[command(flatten)]
        wait: crate::streams::WaitArgs,
    },
    /// Deregister a consumer and wait until it is gone.
    Deregister {
        /// Stream name or ARN.
        #[arg(long)]
        stream: String,
        /// Consumer name.
        #[arg(long, value_parser = parse_name)]
        name: String,
        #[command(flatten)]
        wait: crate::streams::WaitArgs,
    },
}

fn parse_name(s: &str) -> Result<String, String> {
    let valid = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a consumer name is 1 to 128 characters of a-z A-Z 0-9 _ . -"
        ))
    }
}

fn line(
    stream: &str,
    name: &str,
    arn: &str,
    status: &str,
    created: Option<&aws_sdk_kinesis::primitives::DateTime>,
) -> serde_json::Value {
    json!({
        "stream": stream,
        "consumer_name": name,
        "consumer_arn": arn,
        "status": status,
        "created": created.and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()),
    })
}

pub(crate) async fn run(cmd: ConsumersCommand, opts: &AwsOptions) -> anyhow::Result<ExitCode> {
    let config = sdk::load(opts).await;
    let client = sdk::kinesis_client(&config, opts);
    let stream_arg = match &cmd {
        ConsumersCommand::List { stream }
        | ConsumersCommand::Register { stream, .. }
        | ConsumersCommand::Deregister { stream, .. } => stream.clone(),
    };
    let stream = StreamRef::parse(&stream_arg).context("--stream")?;
    let summary = crate::settings::summary(&client, &stream).await?;
    let (name, arn) = (summary.stream_name(), summary.stream_arn());
    match cmd {
        ConsumersCommand::List { .. } => {
            let mut pages = client
                .list_stream_consumers()
                .stream_arn(arn)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| AwsError::new("ListStreamConsumers", e))?;
                for c in page.consumers() {
                    crate::outln!(
                        "{}",
                        line(
                            name,
                            c.consumer_name(),
                            c.consumer_arn(),
                            c.consumer_status().as_str(),
                            Some(c.consumer_creation_timestamp())
                        )
                    )?;
                }
            }
        }
        ConsumersCommand::Register {
            name: consumer,
            wait,
            ..
        } => {
            client
                .register_stream_consumer()
                .stream_arn(arn)
                .consumer_name(&consumer)
                .send()
                .await
                .map_err(|e| AwsError::new("RegisterStreamConsumer", e))?;
            let what = format!("consumer {consumer} to become ACTIVE");
            let c = until_ready(&what, wait.timeout, backoff(), || async {
                match describe(&client, arn, &consumer).await {
                    Ok(Some(c)) if c.consumer_status == ConsumerStatus::Active => Ok(Some(c)),
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == ErrorKind::NotFound || e.is_retryable() => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
            crate::outln!(
                "{}",
                line(
                    name,
                    &c.consumer_name,
                    &c.consumer_arn,
                    c.consumer_status.as_str(),
                    Some(&c.consumer_creation_timestamp)
                )
            )?;
        }
        ConsumersCommand::Deregister {
            name: consumer,
            wait,
            ..
        } => {
            let c = describe(&client, arn, &consumer)
                .await?
                .with_context(|| format!("{stream} has no consumer {consumer}"))?;
            client
                .deregister_stream_consumer()
                .stream_arn(arn)
                .consumer_name(&consumer)
                .send()
                .await
                .map_err(|e| AwsError::new("DeregisterStreamConsumer", e))?;
            let what = format!("consumer {consumer} to be deleted");
            until_ready(&what, wait.timeout, backoff(), || async {
                match describe(&client, arn, &consumer).await {
                    Ok(None) => Ok(Some(())),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(Some(())),
                    Ok(Some(_)) => Ok(None),
                    Err(e) if e.is_retryable() => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
            crate::outln!(
                "{}",
                line(
                    name,
                    &c.consumer_name,
                    &c.consumer_arn,
                    "DELETED",
                    Some(&c.consumer_creation_timestamp)
                )
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn backoff() -> BackoffConfig {
    BackoffConfig::new(Duration::from_millis(20), Duration::from_secs(1))
}

/// The consumer's description; `None` when the stream has no consumer by that name.
async fn describe(
    client: &aws_sdk_kinesis::Client,
    stream_arn: &str,
    name: &str,
) -> Result<Option<aws_sdk_kinesis::types::ConsumerDescription>, AwsError> {
    match client
        .describe_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await
    {
        Ok(out) => Ok(out.consumer_description),
        Err(e) => {
            let e = AwsError::new("DescribeStreamConsumer", e);
            if e.kind() == ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}
