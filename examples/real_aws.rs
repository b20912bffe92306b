//! The producer and the consumer set up for real AWS: credentials and region from the standard
//! chain (environment, profile, SSO, web identity on EKS, ECS task role, EC2 instance profile),
//! TLS, the SDK's retries for control-plane calls, our own for the data path.
//!
//! ```text
//!   aws-config chain ─► SdkConfig ─► Kinesis client ─► Producer (stream S)
//!                                 └─► Kinesis + DynamoDB clients ─► Consumer (app A, lease table A)
//! ```
//!
//! It needs a stream and costs money, so it does nothing unless asked:
//!
//! ```text
//! cargo run --example real_aws -- --stream my-stream --app my-app [--region eu-west-1] [--profile p]
//! ```
//!
//! The permissions: `kinesis:PutRecords`, `ListShards`, `GetRecords`, `GetShardIterator`,
//! `DescribeStreamSummary`, and `dynamodb:CreateTable`, `DescribeTable`, `GetItem`, `PutItem`,
//! `UpdateItem`, `DeleteItem`, `Scan`, `Query` on the lease table (named after the application,
//! as the KCL names it).

use std::time::Duration;

use bytes::Bytes;
use kinesis_suite::consumer::{
    Consumer, ConsumerConfig, InitialPosition, ProcessorError, RecordBatch, with_fn,
};
use kinesis_suite::core::sdk::{self, AwsOptions};
use kinesis_suite::core::{PartitionKey, UserRecord};
use kinesis_suite::producer::{Producer, ProducerConfig};

struct Args {
    stream: String,
    app: String,
    aws: AwsOptions,
}

fn args() -> Option<Args> {
    let mut it = std::env::args().skip(1);
    let (mut stream, mut app, mut aws) = (None, None, AwsOptions::default());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--stream" => stream = it.next(),
            "--app" => app = it.next(),
            "--region" => aws.region = it.next(),
            "--profile" => aws.profile = it.next(),
            _ => return None,
        }
    }
    Some(Args {
        stream: stream?,
        app: app?,
        aws,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(args) = args() else {
        eprintln!(
            "usage: cargo run --example real_aws -- --stream NAME --app NAME [--region R] [--profile P]\n\
             (writes 100 records to the stream and reads them back through a lease table)"
        );
        return Ok(());
    };
    // One SdkConfig for every client: the same identity, region and endpoint overrides
    // (AWS_ENDPOINT_URL_KINESIS / _DYNAMODB are honoured, so this also runs against emulators).
    let config = sdk::load(&args.aws).await;
    let kinesis = sdk::kinesis_client(&config, &args.aws);
    let dynamodb = sdk::dynamodb_client(&config, &args.aws);

    let producer = Producer::builder(kinesis.clone(), &args.stream)
        .config(ProducerConfig {
            // The KPL's defaults, spelled out: 100 ms of buffering, 30 s TTL, 150 % of a shard.
            record_max_buffered_time: Duration::from_millis(100),
            record_ttl: Duration::from_secs(30),
            rate_limit_percent: 150,
            ..ProducerConfig::default()
        })
        .build()
        .await?;
    for i in 0..100 {
        let r = UserRecord::new(
            PartitionKey::new(format!("example-{}", i % 10))?,
            None,
            Bytes::from(format!("hello from real_aws #{i}")),
        );
        let receipt = producer.send(r).await?;
        if i == 99 {
            let d = receipt.await?;
            println!(
                "last record stored on {} at {}",
                d.shard_id, d.sequence_number
            );
        }
    }
    producer.shutdown(Duration::from_secs(30)).await;

    let consumer = Consumer::builder(
        kinesis,
        dynamodb,
        &args.stream,
        ConsumerConfig {
            initial_position: InitialPosition::TrimHorizon,
            ..ConsumerConfig::new(&args.app)
        },
        with_fn(|batch: RecordBatch| async move {
            for r in &batch.records {
                println!("{} {}", batch.shard_id, String::from_utf8_lossy(&r.data));
            }
            Ok::<(), ProcessorError>(())
        }),
    )
    .build()
    .await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    consumer.shutdown(Duration::from_secs(20)).await;
    Ok(())
}
