//! `kinesis streams retention|encrypt|decrypt|tag|untag|mode`: a stream's settings, each change
//! reported as one JSON line with the value before and after.
//!
//! ```text
//!   arguments checked ─► DescribeStreamSummary (name, ARN, current value; missing stream → error)
//!     ─► unchanged? {"changed": false} : the API call ─► wait until ACTIVE ─► {"before", "after"}
//! ```
//!
//! Name-based calls (retention, encryption, tags) get the stream's name from the summary, the
//! ARN-only UpdateStreamMode its ARN, so either may be given.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_sdk_kinesis::types::{
    EncryptionType, StreamDescriptionSummary, StreamMode, StreamModeDetails,
};
use kinesis_core::{AwsError, StreamRef};
use serde_json::{Value, json};

/// Retention Kinesis accepts, in hours (1 day to 365 days).
pub(crate) const RETENTION_HOURS: std::ops::RangeInclusive<i32> = 24..=8760;

/// Tags AddTagsToStream takes (and keys RemoveTagsFromStream takes) in one call; more are sent
/// in several calls.
const TAGS_PER_CALL: usize = 10;

/// The stream mode as the operator writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    Provisioned,
    OnDemand,
}

impl Mode {
    fn sdk(self) -> StreamMode {
        match self {
            Self::Provisioned => StreamMode::Provisioned,
            Self::OnDemand => StreamMode::OnDemand,
        }
    }
}

/// Parses `KEY=VALUE` for `streams tag` (keys 1 to 128 characters, values up to 256).
pub(crate) fn parse_tag(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("{s:?} is not KEY=VALUE"));
    };
    check_tag_key(k)?;
    if v.chars().count() > 256 {
        return Err(format!(
            "tag {k:?}: the value is longer than 256 characters"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Checks a tag key for `streams untag`.
pub(crate) fn parse_tag_key(s: &str) -> Result<String, String> {
    check_tag_key(s)?;
    Ok(s.to_string())
}

fn check_tag_key(k: &str) -> Result<(), String> {
    let n = k.chars().count();
    if n == 0 || n > 128 {
        return Err(format!("tag key {k:?} must be 1 to 128 characters"));
    }
    Ok(())
}

pub(crate) async fn summary(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
) -> anyhow::Result<StreamDescriptionSummary> {
    let mut req = client.describe_stream_summary();
    req = kinesis_core::with_stream!(req, stream);
    req.send()
        .await
        .map_err(|e| AwsError::new("DescribeStreamSummary", e))?
        .stream_description_summary
        .with_context(|| format!("DescribeStreamSummary of {stream} returned no summary"))
}

fn report(stream: &str, setting: &str, before: &Value, after: &Value) -> anyhow::Result<()> {
    let line = json!({
        "stream": stream,
        "setting": setting,
        "changed": before != after,
        "before": before,
        "after": after,
    });
    crate::outln!("{line}")?;
    Ok(())
}

pub(crate) async fn retention(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    hours: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    if !RETENTION_HOURS.contains(&hours) {
        bail!(
            "--hours {hours}: Kinesis keeps records {} to {} hours",
            RETENTION_HOURS.start(),
            RETENTION_HOURS.end()
        );
    }
    let s = summary(client, stream).await?;
    let before = s.retention_period_hours;
    let name = s.stream_name.as_str();
    if hours > before {
        client
            .increase_stream_retention_period()
            .stream_name(name)
            .retention_period_hours(hours)
            .send()
            .await
            .map_err(|e| AwsError::new("IncreaseStreamRetentionPeriod", e))?;
    } else if hours < before {
        client
            .decrease_stream_retention_period()
            .stream_name(name)
            .retention_period_hours(hours)
            .send()
            .await
            .map_err(|e| AwsError::new("DecreaseStreamRetentionPeriod", e))?;
    }
    if hours != before {
        crate::streams::wait_active(client, stream, timeout).await?;
    }
    report(name, "retention_hours", &json!(before), &json!(hours))
}

fn encryption(s: &StreamDescriptionSummary) -> Value {
    match s.encryption_type() {
        Some(EncryptionType::Kms) => json!({"type": "KMS", "key_id": s.key_id()}),
        _ => json!({"type": "NONE"}),
    }
}

pub(crate) async fn encrypt(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    key_id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    if key_id.is_empty() || key_id.len() > 2048 {
        bail!("--key-id must be 1 to 2048 characters (a KMS key id, ARN, alias or alias ARN)");
    }
    let s = summary(client, stream).await?;
    let before = encryption(&s);
    let name = s.stream_name.as_str();
    if s.encryption_type() == Some(&EncryptionType::Kms) && s.key_id() == Some(key_id) {
        return report(name, "encryption", &before, &before);
    }
    client
        .start_stream_encryption()
        .stream_name(name)
        .encryption_type(EncryptionType::Kms)
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| AwsError::new("StartStreamEncryption", e))?;
    crate::streams::wait_active(client, stream, timeout).await?;
    let after = encryption(&summary(client, stream).await?);
    report(name, "encryption", &before, &after)
}

pub(crate) async fn decrypt(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    timeout: Duration,
) -> anyhow::Result<()> {
    let s = summary(client, stream).await?;
    let before = encryption(&s);
    let name = s.stream_name.as_str();
    let (Some(EncryptionType::Kms), Some(key_id)) = (s.encryption_type(), s.key_id()) else {
        return report(name, "encryption", &before, &before);
    };
    client
        .stop_stream_encryption()
        .stream_name(name)
        .encryption_type(EncryptionType::Kms)
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| AwsError::new("StopStreamEncryption", e))?;
    crate::streams::wait_active(client, stream, timeout).await?;
    let after = encryption(&summary(client, stream).await?);
    report(name, "encryption", &before, &after)
}

async fn tags(
    client: &aws_sdk_kinesis::Client,
    name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut start: Option<String> = None;
    loop {
        let page = client
            .list_tags_for_stream()
            .stream_name(name)
            .set_exclusive_start_tag_key(start.clone())
            .send()
            .await
            .map_err(|e| AwsError::new("ListTagsForStream", e))?;
        for t in page.tags() {
            out.insert(
                t.key().to_string(),
                t.value().unwrap_or_default().to_string(),
            );
        }
        let last = page.tags().last().map(|t| t.key().to_string());
        if !page.has_more_tags() || last.is_none() || last == start {
            return Ok(out);
        }
        start = last;
    }
}

/// The given keys' values, `null` for an absent key.
fn values_of<'a>(tags: &BTreeMap<String, String>, keys: impl Iterator<Item = &'a String>) -> Value {
    keys.map(|k| (k.clone(), tags.get(k).map_or(Value::Null, |v| json!(v))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub(crate) async fn tag(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    new: &[(String, String)],
) -> anyhow::Result<()> {
    let s = summary(client, stream).await?;
    let name = s.stream_name.as_str();
    let before = tags(client, name).await?;
    // The last value given for a key wins, as it would in one call.
    let new: BTreeMap<&str, &str> = new.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let keys: Vec<String> = new.keys().map(|k| (*k).to_string()).collect();
    let entries: Vec<(&str, &str)> = new.into_iter().collect();
    for chunk in entries.chunks(TAGS_PER_CALL) {
        let mut req = client.add_tags_to_stream().stream_name(name);
        for (k, v) in chunk {
            req = req.tags(*k, *v);
        }
        req.send()
            .await
            .map_err(|e| AwsError::new("AddTagsToStream", e))?;
    }
    let after = tags(client, name).await?;
    report(
        name,
        "tags",
        &values_of(&before, keys.iter()),
        &values_of(&after, keys.iter()),
    )
}

pub(crate) async fn untag(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    keys: &[String],
) -> anyhow::Result<()> {
    let s = summary(client, stream).await?;
    let name = s.stream_name.as_str();
    let before = tags(client, name).await?;
    for chunk in keys.chunks(TAGS_PER_CALL) {
        client
            .remove_tags_from_stream()
            .stream_name(name)
            .set_tag_keys(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::new("RemoveTagsFromStream", e))?;
    }
    let after = tags(client, name).await?;
    report(
        name,
        "tags",
        &values_of(&before, keys.iter()),
        &values_of(&after, keys.iter()),
    )
}

fn mode_of(s: &StreamDescriptionSummary) -> &'static str {
    match s.stream_mode_details().map(StreamModeDetails::stream_mode) {
        Some(StreamMode::OnDemand) => "ON_DEMAND",
        _ => "PROVISIONED",
    }
}

pub(crate) async fn mode(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamRef,
    mode: Mode,
    timeout: Duration,
) -> anyhow::Result<()> {
    let s = summary(client, stream).await?;
    let before = mode_of(&s);
    let name = s.stream_name.as_str();
    if before != mode.sdk().as_str() {
        client
            .update_stream_mode()
            .stream_arn(s.stream_arn())
            .stream_mode_details(
                StreamModeDetails::builder()
                    .stream_mode(mode.sdk())
                    .build()?,
            )
            .send()
            .await
            .map_err(|e| AwsError::new("UpdateStreamMode", e))?;
        crate::streams::wait_active(client, stream, timeout).await?;
    }
    let after = mode_of(&summary(client, stream).await?);
    report(name, "mode", &json!(before), &json!(after))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tags_are_checked() {
        assert_eq!(
            parse_tag("team=core").unwrap(),
            ("team".into(), "core".into())
        );
        assert_eq!(parse_tag("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(
            parse_tag("empty=").unwrap(),
            ("empty".into(), String::new())
        );
        assert!(parse_tag("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_tag("=v").unwrap_err().contains("1 to 128"));
        assert!(parse_tag(&format!("{}=v", "k".repeat(129))).is_err());
        assert!(parse_tag(&format!("k={}", "v".repeat(257))).is_err());
        assert!(parse_tag_key("").is_err());
    }
}
