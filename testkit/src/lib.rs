//! Test harness: embedded Kinesis and DynamoDB emulators, ready SDK clients, and helpers.
//!
//! ```text
//!   TEST_BACKEND unset / "inprocess" ─► LocalEmulators (ferrokinesis + dynoxide on 127.0.0.1:0)
//!   TEST_BACKEND=external             ─► AWS_ENDPOINT_URL_KINESIS / _DYNAMODB (kinesis-mock, dynalite)
//!   TEST_BACKEND=aws                  ─► the standard AWS chain (real account; never in CI)
//!                         │
//!                         ▼
//!   TestEnv { kinesis, dynamodb, sdk } + create_stream() + unique_name() + eventually()
//! ```
//!
//! Each test starts its own emulators on free ports, so tests run in parallel with no shared
//! state. Nothing sleeps a fixed time: [`eventually`] polls with a deadline.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use aws_sdk_kinesis::primitives::Blob;
//! use kinesis_testkit::{TestEnv, eventually, read_stream};
//! let env = TestEnv::start().await; // TEST_BACKEND decides: the embedded emulators by default
//! let stream = env.create_stream(2).await; // a unique name, ACTIVE
//! let put = env.kinesis.put_record().stream_name(&stream).partition_key("user-1").data(Blob::new("hello")).send().await?;
//! let contents = eventually("the record", Duration::from_secs(10), || async {
//!     read_stream(&env.kinesis, &stream).await.ok().filter(|c| !c.records.is_empty())
//! })
//! .await;
//! let record = &contents.records[0];
//! assert_eq!((record.shard_id.as_str(), record.sequence_number.as_str()), (put.shard_id(), put.sequence_number()));
//! assert_eq!(record.partition_key, "user-1");
//! assert_eq!(record.data, "hello");
//! # Ok(()) }
//! ```

mod emulators;
pub mod fast_endpoint;
pub mod fault;
pub mod fault_mix;
pub mod hostile;
pub mod imds;
pub mod moto;
mod proxy;
pub mod python;
mod read;
mod wait;

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

pub use emulators::{EmulatorOptions, LocalEmulators, StartError, https_client_trusting};
pub use fault::{Fault, FaultProxy, FaultStats, Rule};
pub use proxy::StallProxy;
pub use read::{ReadRecord, StreamContents, read_stream};
pub use wait::{eventually, wait_stream_active};

/// Which services the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded emulators (default).
    InProcess,
    /// Emulators started elsewhere, reached through `AWS_ENDPOINT_URL_*`.
    External,
    /// A real AWS account through the standard chain.
    Aws,
}

impl Backend {
    /// Reads `TEST_BACKEND` (`inprocess`, `external`, `aws`); unset means in-process.
    ///
    /// # Panics
    /// On an unknown value, so a typo does not silently test something else.
    pub fn from_env() -> Self {
        match std::env::var("TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("inprocess") | Ok("in-process") => Self::InProcess,
            Ok("external") => Self::External,
            Ok("aws") => Self::Aws,
            Ok(other) => panic!("TEST_BACKEND={other:?}: expected inprocess, external or aws"),
        }
    }
}

/// What a test needs that not every backend offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capability {
    /// Per-shard write throttling (only the embedded emulator, with `enforce_limits`).
    WriteThrottling,
    /// Short iterator lifetimes (only the embedded emulator).
    IteratorExpiry,
}

/// Credentials the embedded emulators accept (they check none).
pub fn test_credentials() -> Credentials {
    Credentials::new("test", "test", None, None, "kinesis-testkit")
}

/// A running backend with ready clients. Dropping it stops embedded emulators.
#[derive(Debug)]
pub struct TestEnv {
    /// Kinesis client for the backend.
    pub kinesis: aws_sdk_kinesis::Client,
    /// DynamoDB client for the backend.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// Shared configuration (region and credentials) for building more clients.
    pub sdk: SdkConfig,
    backend: Backend,
    emulators: Option<LocalEmulators>,
    enforce_limits: bool,
    short_iterators: bool,
}

impl TestEnv {
    /// Starts the backend chosen by `TEST_BACKEND` with default emulator options.
    ///
    /// # Panics
    /// When the emulators cannot start: a test cannot go on without them.
    pub async fn start() -> Self {
        Self::with_options(EmulatorOptions::default()).await
    }

    /// Starts the backend with these options for the embedded emulators.
    ///
    /// # Panics
    /// When the emulators cannot start.
    pub async fn with_options(opts: EmulatorOptions) -> Self {
        let backend = Backend::from_env();
        match backend {
            Backend::InProcess => {
                #[allow(clippy::expect_used)] // test harness: failing loudly is the point
                let emu = LocalEmulators::start(&opts)
                    .await
                    .expect("start embedded emulators");
                let sdk = local_sdk_config();
                let kinesis = match emu.ca_pem() {
                    Some(pem) => {
                        #[allow(clippy::expect_used)]
                        let http = https_client_trusting(pem).expect("TLS client for the emulator");
                        let conf = aws_sdk_kinesis::config::Builder::from(&sdk)
                            .endpoint_url(emu.kinesis_endpoint())
                            .http_client(http)
                            .build();
                        aws_sdk_kinesis::Client::from_conf(conf)
                    }
                    None => kinesis_for(&sdk, &emu.kinesis_endpoint()),
                };
                let dynamodb = dynamodb_for(&sdk, &emu.dynamodb_endpoint());
                Self {
                    kinesis,
                    dynamodb,
                    sdk,
                    backend,
                    emulators: Some(emu),
                    enforce_limits: opts.enforce_limits,
                    short_iterators: opts.iterator_ttl < Duration::from_secs(300),
                }
            }
            Backend::External | Backend::Aws => {
                let sdk = kinesis_core::sdk::load(&kinesis_core::sdk::AwsOptions::default()).await;
                let none = kinesis_core::sdk::AwsOptions::default();
                Self {
                    kinesis: kinesis_core::sdk::kinesis_client(&sdk, &none),
                    dynamodb: kinesis_core::sdk::dynamodb_client(&sdk, &none),
                    sdk,
                    backend,
                    emulators: None,
                    enforce_limits: false,
                    short_iterators: false,
                }
            }
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The embedded emulators, when in-process.
    pub fn emulators(&self) -> Option<&LocalEmulators> {
        self.emulators.as_ref()
    }

    /// Whether this backend, as started, offers `cap`. Tests that need it return early
    /// (with a message on stderr) when it does not.
    pub fn supports(&self, cap: Capability) -> bool {
        match cap {
            Capability::WriteThrottling => self.enforce_limits,
            Capability::IteratorExpiry => self.short_iterators,
        }
    }

    /// The Kinesis endpoint URL to hand to another process (the agent daemon, the CLI): the
    /// embedded emulator's, or `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL` for an external
    /// backend. `None` on real AWS (the standard chain finds it).
    pub fn kinesis_endpoint(&self) -> Option<String> {
        match &self.emulators {
            Some(emu) => Some(emu.kinesis_endpoint()),
            None if self.backend == Backend::External => std::env::var("AWS_ENDPOINT_URL_KINESIS")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .ok(),
            None => None,
        }
    }

    /// Where the Kinesis endpoint listens, for tests that put a [`StallProxy`] or a
    /// [`FaultProxy`] in front of it: the embedded emulator's address, or the host and port of
    /// `AWS_ENDPOINT_URL_KINESIS` (or `AWS_ENDPOINT_URL`) for an external backend on plain HTTP.
    /// `None` on real AWS.
    pub fn kinesis_addr(&self) -> Option<std::net::SocketAddr> {
        if let Some(emu) = &self.emulators {
            return Some(emu.kinesis_addr());
        }
        plain_http_addr(&self.kinesis_endpoint()?)
    }

    /// The DynamoDB endpoint URL: the embedded emulator's, or `AWS_ENDPOINT_URL_DYNAMODB` /
    /// `AWS_ENDPOINT_URL` for an external backend. `None` on real AWS.
    pub fn dynamodb_endpoint(&self) -> Option<String> {
        match &self.emulators {
            Some(emu) => Some(emu.dynamodb_endpoint()),
            None if self.backend == Backend::External => std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .ok(),
            None => None,
        }
    }

    /// Where the DynamoDB endpoint listens: the embedded emulator's address, or the host and
    /// port of [`dynamodb_endpoint`](Self::dynamodb_endpoint) on plain HTTP. `None` on real AWS.
    pub fn dynamodb_addr(&self) -> Option<std::net::SocketAddr> {
        if let Some(emu) = &self.emulators {
            return Some(emu.dynamodb_addr());
        }
        plain_http_addr(&self.dynamodb_endpoint()?)
    }

    /// A [`FaultProxy`] in front of each service (both seeded with `seed`) and clients that go
    /// through them: `let Some(f) = env.fault_proxies(7).await else { return };`. The clients
    /// keep the SDK's standard retries. `None`, with a note on stderr, when a service is not
    /// reachable over plain HTTP: on real AWS, on an external backend with `https://`
    /// endpoints, and when the embedded Kinesis is served over TLS (`EmulatorOptions { tls:
    /// true }`), since the proxy speaks plain HTTP only.
    ///
    /// # Panics
    /// When a proxy cannot listen.
    pub async fn fault_proxies(&self, seed: u64) -> Option<FaultyClients> {
        let tls = self
            .emulators
            .as_ref()
            .is_some_and(|e| e.ca_pem().is_some());
        let addrs = self.kinesis_addr().zip(self.dynamodb_addr());
        let (Some((kinesis, dynamodb)), false) = (addrs, tls) else {
            eprintln!("skipped: no plain-HTTP endpoints to put a fault proxy in front of");
            return None;
        };
        #[allow(clippy::expect_used)] // test harness: failing loudly is the point
        let start = |addr| FaultProxy::start(addr, seed).expect("start a fault proxy");
        let (kinesis_proxy, dynamodb_proxy) = (start(kinesis), start(dynamodb));
        Some(FaultyClients {
            kinesis: kinesis_for(&self.sdk, &kinesis_proxy.endpoint()),
            dynamodb: dynamodb_for(&self.sdk, &dynamodb_proxy.endpoint()),
            kinesis_proxy,
            dynamodb_proxy,
        })
    }

    /// A backend whose streams throttle writes over the shard limits (the embedded emulator
    /// with its limits enforced), or `None`, with a note on stderr, when this backend cannot:
    /// `let Some(env) = TestEnv::throttling().await else { return };`
    pub async fn throttling() -> Option<Self> {
        let env = Self::with_options(EmulatorOptions {
            enforce_limits: true,
            ..Default::default()
        })
        .await;
        if env.supports(Capability::WriteThrottling) {
            Some(env)
        } else {
            eprintln!("skipped: backend cannot throttle");
            None
        }
    }

    /// Splits the lowest open shard of `stream` at the middle of its hash range, and waits
    /// until the stream is ACTIVE again.
    ///
    /// # Panics
    /// When the stream cannot be listed or resharded.
    pub async fn split_lowest_shard(&self, stream: &str) {
        let open = self.open_shards(stream).await;
        let s = &open[0];
        let mid = s.hash_key_range.start().0 / 2 + s.hash_key_range.end().0 / 2;
        #[allow(clippy::expect_used)]
        self.kinesis
            .split_shard()
            .stream_name(stream)
            .shard_to_split(s.shard_id.as_str())
            .new_starting_hash_key(mid.to_string())
            .send()
            .await
            .expect("SplitShard");
        self.wait_active(stream).await;
    }

    /// Merges the two highest adjacent open shards of `stream`, and waits until the stream is
    /// ACTIVE again.
    ///
    /// # Panics
    /// When the stream has fewer than two open shards or cannot be resharded.
    pub async fn merge_highest_shards(&self, stream: &str) {
        let open = self.open_shards(stream).await;
        assert!(open.len() >= 2, "{stream} has fewer than two open shards");
        let (a, b) = (&open[open.len() - 2], &open[open.len() - 1]);
        #[allow(clippy::expect_used)]
        self.kinesis
            .merge_shards()
            .stream_name(stream)
            .shard_to_merge(a.shard_id.as_str())
            .adjacent_shard_to_merge(b.shard_id.as_str())
            .send()
            .await
            .expect("MergeShards");
        self.wait_active(stream).await;
    }

    /// The open shards of `stream`, lowest hash range first.
    async fn open_shards(&self, stream: &str) -> Vec<kinesis_core::shard_map::Shard> {
        #[allow(clippy::expect_used)]
        let sref = kinesis_core::StreamRef::parse(stream).expect("stream name");
        #[allow(clippy::expect_used)]
        let shards = kinesis_core::shard_map::list_shards(&self.kinesis, &sref)
            .await
            .expect("ListShards");
        let mut open: Vec<_> = shards.into_iter().filter(|s| s.is_open()).collect();
        open.sort_by_key(|s| s.hash_key_range.start().0);
        open
    }

    async fn wait_active(&self, stream: &str) {
        #[allow(clippy::expect_used)]
        wait_stream_active(&self.kinesis, stream, Duration::from_secs(30))
            .await
            .expect("stream ACTIVE again");
    }

    /// Deletes `stream` and waits until it is gone.
    ///
    /// # Panics
    /// When DeleteStream fails or the stream is still there after 10 s.
    pub async fn delete_stream(&self, stream: &str) {
        #[allow(clippy::expect_used)]
        self.kinesis
            .delete_stream()
            .stream_name(stream)
            .send()
            .await
            .expect("DeleteStream");
        eventually("stream gone", Duration::from_secs(10), || async {
            self.kinesis
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .is_err()
                .then_some(())
        })
        .await;
    }

    /// Creates a provisioned stream with a unique name and waits until it is ACTIVE.
    ///
    /// # Panics
    /// When the stream cannot be created or does not become ACTIVE within 60 s.
    pub async fn create_stream(&self, shards: i32) -> String {
        let name = unique_name("stream");
        #[allow(clippy::expect_used)]
        self.kinesis
            .create_stream()
            .stream_name(&name)
            .shard_count(shards)
            .send()
            .await
            .expect("CreateStream");
        #[allow(clippy::expect_used)]
        wait_stream_active(&self.kinesis, &name, Duration::from_secs(60))
            .await
            .expect("stream becomes ACTIVE");
        name
    }
}

/// Fault proxies in front of both services and clients through them, from
/// [`TestEnv::fault_proxies`].
#[derive(Debug)]
pub struct FaultyClients {
    /// The proxy in front of Kinesis.
    pub kinesis_proxy: FaultProxy,
    /// The proxy in front of DynamoDB.
    pub dynamodb_proxy: FaultProxy,
    /// A Kinesis client through `kinesis_proxy`.
    pub kinesis: aws_sdk_kinesis::Client,
    /// A DynamoDB client through `dynamodb_proxy`.
    pub dynamodb: aws_sdk_dynamodb::Client,
}

/// The address of a plain-HTTP endpoint URL (`http://host:port`); `None` for `https://`.
fn plain_http_addr(url: &str) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let host_port = url.strip_prefix("http://")?.trim_end_matches('/');
    host_port.to_socket_addrs().ok()?.next()
}

/// Region and test credentials, read from nothing in the environment.
pub fn local_sdk_config() -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::from_static("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(test_credentials()))
        .build()
}

/// A Kinesis client for `endpoint` with `sdk`'s region and credentials.
pub fn kinesis_for(sdk: &SdkConfig, endpoint: &str) -> aws_sdk_kinesis::Client {
    let conf = aws_sdk_kinesis::config::Builder::from(sdk)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

/// A DynamoDB client for `endpoint` with `sdk`'s region and credentials.
pub fn dynamodb_for(sdk: &SdkConfig, endpoint: &str) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// A name unique to this call: `{prefix}-{12 hex digits}`, valid for streams and tables.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// A directory under the system temp dir, removed when dropped. Derefs to its path.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `{tmp}/{prefix}-{unique}`.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique_name(prefix));
        #[allow(clippy::expect_used)] // test harness
        std::fs::create_dir_all(&p).expect("create a temp dir");
        Self(p)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` with `input` on its stdin (written from another thread, so a large input cannot
/// deadlock against a full stdout pipe) and collects its output.
///
/// # Panics
/// When the command cannot be started.
#[allow(clippy::expect_used)] // test harness
pub fn run_with_stdin(mut cmd: std::process::Command, input: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("command output");
    let _ = writer.join();
    out
}
