//! Every call the consumer makes is bounded in time: the SDK's default has no limit, and one
//! stalled connection would then hold a shard, or the whole lease coordinator, forever.
//!
//! ```text
//!   user's clients ─► bounded(call_timeout): same config + operation_attempt_timeout
//!                     (unless the user set an attempt or operation timeout of their own)
//!   SubscribeToShard keeps the user's client (an attempt timeout must not cut a 5-minute
//!   event stream); the subscription bounds its own waits.
//! ```

use std::time::Duration;

use aws_smithy_types::timeout::TimeoutConfig;

/// The timeout config of `current` with an attempt timeout of `limit`, or `None` if it already
/// bounds calls.
fn with_limit(current: Option<&TimeoutConfig>, limit: Duration) -> Option<TimeoutConfig> {
    if current
        .is_some_and(|t| t.operation_attempt_timeout().is_some() || t.operation_timeout().is_some())
    {
        return None;
    }
    let builder = current.map_or_else(TimeoutConfig::builder, TimeoutConfig::to_builder);
    Some(builder.operation_attempt_timeout(limit).build())
}

pub(crate) fn bounded_kinesis(
    client: &aws_sdk_kinesis::Client,
    limit: Duration,
) -> aws_sdk_kinesis::Client {
    let conf = client.config();
    match with_limit(conf.timeout_config(), limit) {
        Some(t) => aws_sdk_kinesis::Client::from_conf(conf.to_builder().timeout_config(t).build()),
        None => client.clone(),
    }
}

pub(crate) fn bounded_dynamodb(
    client: &aws_sdk_dynamodb::Client,
    limit: Duration,
) -> aws_sdk_dynamodb::Client {
    let conf = client.config();
    match with_limit(conf.timeout_config(), limit) {
        Some(t) => aws_sdk_dynamodb::Client::from_conf(conf.to_builder().timeout_config(t).build()),
        None => client.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_an_attempt_timeout_and_keeps_the_rest() {
        let s = Duration::from_secs;
        let t = with_limit(None, s(15)).unwrap();
        assert_eq!(t.operation_attempt_timeout(), Some(s(15)));
        let mine = TimeoutConfig::builder().connect_timeout(s(2)).build();
        let t = with_limit(Some(&mine), s(15)).unwrap();
        assert_eq!(t.connect_timeout(), Some(s(2)));
        assert_eq!(t.operation_attempt_timeout(), Some(s(15)));
        let bounded = TimeoutConfig::builder().operation_timeout(s(40)).build();
        assert!(with_limit(Some(&bounded), s(15)).is_none());
        let bounded = TimeoutConfig::builder()
            .operation_attempt_timeout(s(4))
            .build();
        assert!(with_limit(Some(&bounded), s(15)).is_none());
    }
}
