//! SDK client setup from `aws-config`'s standard chain.
//!
//! ```text
//!   AwsOptions { region, endpoint_url, profile }      (explicit overrides; all optional)
//!        │
//!        ▼
//!   aws_config::defaults(latest)  ── env, profile, SSO, web identity, ECS, IMDS credentials
//!        │                        ── AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_KINESIS / _DYNAMODB
//!        ▼
//!   SdkConfig ─► kinesis_client() / dynamodb_client()
//! ```
//!
//! No credential code of our own: whatever the AWS CLI would use, this uses. An explicit
//! `endpoint_url` wins over the environment. When an endpoint is configured (explicitly or by
//! environment) and no region is found, `us-east-1` is used so local emulators work without
//! extra setup; against AWS the region chain decides.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! # // Runs: loading the chain and building clients sends no request (credentials are resolved
//! # // at the first call, so none are needed here).
//! use kinesis_core::sdk::{self, AwsOptions};
//! let opts = AwsOptions { region: Some("eu-west-1".into()), ..AwsOptions::default() };
//! let config = sdk::load(&opts).await;
//! let kinesis = sdk::kinesis_client(&config, &opts);
//! let dynamodb = sdk::dynamodb_client(&config, &opts);
//! // The explicit region wins over AWS_REGION and the profile's.
//! assert_eq!(kinesis.config().region().map(|r| r.as_ref()), Some("eu-west-1"));
//! assert_eq!(dynamodb.config().region().map(|r| r.as_ref()), Some("eu-west-1"));
//! # }
//! ```

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Overrides for the standard chain. `Default` overrides nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsOptions {
    /// Region, instead of `AWS_REGION` / the profile / IMDS.
    pub region: Option<String>,
    /// Endpoint for every service, instead of `AWS_ENDPOINT_URL*`.
    pub endpoint_url: Option<String>,
    /// Profile name, instead of `AWS_PROFILE` / `default`.
    pub profile: Option<String>,
}

/// Region used when an endpoint override is set and no region is configured anywhere.
pub const LOCAL_FALLBACK_REGION: &str = "us-east-1";

/// Loads the shared SDK configuration through the standard chain with `opts` applied.
pub async fn load(opts: &AwsOptions) -> SdkConfig {
    let loader = || {
        let mut l = aws_config::defaults(BehaviorVersion::latest());
        if let Some(p) = &opts.profile {
            l = l.profile_name(p);
        }
        if let Some(e) = &opts.endpoint_url {
            l = l.endpoint_url(e);
        }
        l
    };
    let mut loader_now = loader();
    if let Some(r) = &opts.region {
        loader_now = loader_now.region(Region::new(r.clone()));
    }
    let sdk = loader_now.load().await;
    if sdk.region().is_none() && endpoint_configured(opts) {
        return loader()
            .region(Region::from_static(LOCAL_FALLBACK_REGION))
            .load()
            .await;
    }
    sdk
}

fn endpoint_configured(opts: &AwsOptions) -> bool {
    opts.endpoint_url.is_some()
        || [
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_KINESIS",
            "AWS_ENDPOINT_URL_DYNAMODB",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// A Kinesis client from a loaded configuration. The endpoint is `opts.endpoint_url` if set,
/// else `AWS_ENDPOINT_URL_KINESIS`, else `AWS_ENDPOINT_URL`, else the regional AWS endpoint.
pub fn kinesis_client(sdk: &SdkConfig, opts: &AwsOptions) -> aws_sdk_kinesis::Client {
    let mut b = aws_sdk_kinesis::config::Builder::from(sdk);
    if let Some(e) = &opts.endpoint_url {
        // The SDK prefers the service-specific variable over the shared config's endpoint;
        // an explicit override must win over both.
        b = b.endpoint_url(e);
    }
    aws_sdk_kinesis::Client::from_conf(b.build())
}

/// A DynamoDB client from a loaded configuration. The endpoint is `opts.endpoint_url` if set,
/// else `AWS_ENDPOINT_URL_DYNAMODB`, else `AWS_ENDPOINT_URL`, else the regional AWS endpoint.
pub fn dynamodb_client(sdk: &SdkConfig, opts: &AwsOptions) -> aws_sdk_dynamodb::Client {
    let mut b = aws_sdk_dynamodb::config::Builder::from(sdk);
    if let Some(e) = &opts.endpoint_url {
        b = b.endpoint_url(e);
    }
    aws_sdk_dynamodb::Client::from_conf(b.build())
}
