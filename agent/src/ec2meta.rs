//! ADDEC2METADATA: the instance's EC2 metadata merged into each JSON record, as the Kinesis
//! Agent's `AddEC2MetadataConverter` does, refreshed every `metadataTTL` seconds (default 3600).
//!
//! ```text
//!   IMDSv2 (aws-config's client; AWS_EC2_METADATA_SERVICE_ENDPOINT honoured)
//!     /latest/dynamic/instance-identity/document ─► privateIp, availabilityZone, instanceId,
//!                                                    instanceType, accountId, amiId, region
//!     /latest/meta-data/tags/instance[/KEY]      ─► tags (keys lower-cased)
//!        │ fetched at start (before the flow reads), then again in the background once stale
//!        ▼
//!   {"the":"record"} ─► {"the":"record","privateIp":…,"metadataTimestamp":"2026-12-01T19:00:00+0000","tags":{…}}
//! ```
//!
//! Differences from the Kinesis Agent, on purpose: the tags come from the instance metadata
//! (`tags/instance`, which needs "instance metadata tags" allowed on the instance) instead of an
//! EC2 `DescribeTags` call (which needs `ec2:DescribeTags` and the whole EC2 SDK); without them
//! the record has no `tags`, as the Kinesis Agent's has none when DescribeTags fails. A record
//! that is not a JSON object is sent unchanged and counted (the Kinesis Agent fails its
//! conversion). Off EC2 (no IMDS), records are sent unchanged, as there.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tracing::{info, warn};

/// How long one refresh may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The instance's metadata, shared by the flows' converters.
#[derive(Debug)]
pub struct Ec2Metadata {
    ttl: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The fields merged into records; empty when none could be read.
    fields: Arc<Map<String, Value>>,
    fetched: Option<Instant>,
    refreshing: bool,
}

impl Ec2Metadata {
    /// Metadata refreshed every `ttl`.
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            ttl,
            state: Mutex::new(State::default()),
        })
    }

    /// The refresh interval.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fetches now (at start, before records are read), unless fetched within the TTL.
    pub async fn prepare(self: &Arc<Self>) {
        let fresh = self.state().fetched.is_some_and(|t| t.elapsed() < self.ttl);
        if !fresh {
            let fields = fetch().await;
            self.store(fields);
        }
    }

    fn store(&self, fields: Map<String, Value>) {
        let mut s = self.state();
        if fields.is_empty() {
            warn!(
                message = "No EC2 metadata (not on EC2, or IMDS off); ADDEC2METADATA sends records unchanged until it can read it."
            );
        } else {
            let instance = fields
                .get("instanceId")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            info!(message = "EC2 metadata read.", instance);
        }
        s.fields = Arc::new(fields);
        s.fetched = Some(Instant::now());
        s.refreshing = false;
    }

    /// The fields to merge now; starts a background refresh once they are stale (the records
    /// meanwhile get the last ones, never wait).
    pub fn current(self: &Arc<Self>) -> Arc<Map<String, Value>> {
        let mut s = self.state();
        let stale = s.fetched.is_none_or(|t| t.elapsed() >= self.ttl);
        if stale
            && !s.refreshing
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            s.refreshing = true;
            let me = Arc::clone(self);
            rt.spawn(async move {
                let fields = fetch().await;
                me.store(fields);
            });
        }
        Arc::clone(&s.fields)
    }

    /// Merges the metadata into `record` (a JSON object, optionally ending with a newline);
    /// `None` when it is not one (sent unchanged by the caller).
    pub fn merge(fields: &Map<String, Value>, record: &[u8]) -> Option<Vec<u8>> {
        let body = record.strip_suffix(b"\n").unwrap_or(record);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        for (k, v) in fields {
            obj.insert(k.clone(), v.clone());
        }
        let mut out = serde_json::to_vec(&Value::Object(obj)).ok()?;
        out.push(b'\n');
        Some(out)
    }
}

/// Reads the identity document and the tags; empty when IMDS does not answer.
async fn fetch() -> Map<String, Value> {
    let disabled =
        std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if disabled {
        return Map::new();
    }
    let client = aws_config::imds::Client::builder()
        .max_attempts(2)
        .connect_timeout(Duration::from_millis(500))
        .read_timeout(Duration::from_secs(1))
        .operation_timeout(FETCH_TIMEOUT)
        .build();
    let doc = match tokio::time::timeout(
        FETCH_TIMEOUT,
        client.get("/latest/dynamic/instance-identity/document"),
    )
    .await
    {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            info!(message = "No instance identity document from IMDS.", error = %e);
            return Map::new();
        }
        Err(_) => return Map::new(),
    };
    let Ok(Value::Object(doc)) = serde_json::from_str::<Value>(doc.as_ref()) else {
        warn!(message = "IMDS's instance identity document is not a JSON object.");
        return Map::new();
    };
    let mut fields = identity_fields(&doc, &metadata_timestamp(std::time::SystemTime::now()));
    if let Some(tags) = fetch_tags(&client).await {
        fields.insert("tags".into(), Value::Object(tags));
    }
    fields
}

/// The Kinesis Agent's fields from an identity document, in its order.
fn identity_fields(doc: &Map<String, Value>, timestamp: &str) -> Map<String, Value> {
    let mut m = Map::new();
    for (ours, theirs) in [
        ("privateIp", "privateIp"),
        ("availabilityZone", "availabilityZone"),
        ("instanceId", "instanceId"),
        ("instanceType", "instanceType"),
        ("accountId", "accountId"),
        ("amiId", "imageId"),
        ("region", "region"),
    ] {
        m.insert(ours.into(), doc.get(theirs).cloned().unwrap_or(Value::Null));
    }
    m.insert("metadataTimestamp".into(), Value::String(timestamp.into()));
    m
}

/// The instance's tags from IMDS (keys lower-cased, as the Kinesis Agent does), if allowed.
async fn fetch_tags(client: &aws_config::imds::Client) -> Option<Map<String, Value>> {
    let keys = tokio::time::timeout(FETCH_TIMEOUT, client.get("/latest/meta-data/tags/instance"))
        .await
        .ok()?
        .ok()?;
    let mut tags = Map::new();
    for key in keys
        .as_ref()
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        // A key is a path segment: refuse anything that would walk elsewhere.
        if key.contains('/') || key.contains("..") {
            continue;
        }
        let path = format!("/latest/meta-data/tags/instance/{key}");
        if let Ok(Ok(v)) = tokio::time::timeout(FETCH_TIMEOUT, client.get(&path)).await {
            tags.insert(key.to_lowercase(), Value::String(v.as_ref().to_owned()));
        }
    }
    Some(tags)
}

/// `yyyy-MM-dd'T'HH:mm:ssZ` in UTC (`2026-12-01T19:00:00+0000`), as the Kinesis Agent formats
/// `metadataTimestamp`.
fn metadata_timestamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = crate::process::civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_come_in_the_kinesis_agents_names_and_merge_into_json_objects_only() {
        let doc = json!({
            "privateIp": "10.0.0.7", "availabilityZone": "eu-west-1a", "instanceId": "i-0abc",
            "instanceType": "m7g.large", "accountId": "123456789012", "imageId": "ami-1",
            "region": "eu-west-1", "version": "2017-09-30"
        });
        let f = identity_fields(doc.as_object().unwrap(), "2026-12-01T19:00:00+0000");
        let keys: Vec<&str> = f.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "privateIp",
                "availabilityZone",
                "instanceId",
                "instanceType",
                "accountId",
                "amiId",
                "region",
                "metadataTimestamp"
            ]
        );
        assert_eq!(f["amiId"], "ami-1");
        let out = Ec2Metadata::merge(&f, b"{\"msg\":\"hi\",\"region\":\"mine\"}\n").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["msg"], "hi");
        assert_eq!(v["region"], "eu-west-1", "metadata wins, as putAll");
        assert!(out.ends_with(b"}\n"));
        for not_object in [&b"plain text\n"[..], b"[1,2]", b"\"s\"", b""] {
            assert_eq!(Ec2Metadata::merge(&f, not_object), None, "{not_object:?}");
        }
    }

    #[test]
    fn the_timestamp_is_formatted_as_the_kinesis_agent_formats_it() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_151_600); // 2026-12-01T19:00:00Z
        assert_eq!(metadata_timestamp(t), "2026-12-01T19:00:00+0000");
        assert_eq!(
            metadata_timestamp(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00+0000"
        );
    }
}
