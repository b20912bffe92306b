//! The agent's one AWS identity, from `agent.json` as the Kinesis Agent reads it, used by every
//! client it makes (Kinesis, Firehose, CloudWatch):
//!
//! ```text
//!   awsAccessKeyId + awsSecretAccessKey ──(take precedence, as in the Kinesis Agent)──┐
//!   else the standard chain (environment, profile, SSO, web identity, ECS, IMDS) ─────┤ base
//!                                                                                      ▼
//!   assumeRoleARN [+ assumeRoleExternalId, sts.endpoint] ─► aws-config's AssumeRoleProvider
//!        (session "kinesis-agent", refreshed by the SDK's identity cache before expiry)
//! ```
//!
//! Secrets are never logged or printed: [`Secret`]'s `Debug` is `"***"`, and `check-config` says
//! that a key is set, not its value.

use std::fmt;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_types::SdkConfig;

use crate::config::CredentialsConfig;

/// A secret value: shown as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `sdk` with the configuration's identity: its static keys and/or the role it assumes. The
/// region, endpoints and everything else are `sdk`'s.
pub async fn apply(creds: &CredentialsConfig, sdk: SdkConfig) -> SdkConfig {
    let mut sdk = sdk;
    if let Some((id, secret)) = &creds.access_key {
        let c = Credentials::new(id, &secret.0, None, None, "agent.json awsAccessKeyId");
        sdk = sdk
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(c))
            .build();
    }
    let Some(role) = &creds.assume_role_arn else {
        return sdk;
    };
    // STS at `sts.endpoint` when given (else the region's), signed with the base identity.
    let sts = match &creds.sts_endpoint {
        Some(e) => sdk.to_builder().endpoint_url(e).build(),
        None => sdk.clone(),
    };
    let mut builder = aws_config::sts::AssumeRoleProvider::builder(role)
        .session_name("kinesis-agent")
        .configure(&sts);
    if let Some(x) = &creds.assume_role_external_id {
        builder = builder.external_id(&x.0);
    }
    let provider = builder.build().await;
    sdk.into_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows() {
        let s = Secret("wJalrXUtnFEMI/K7MDENG".into());
        assert_eq!(format!("{s:?}"), "\"***\"");
        let c = CredentialsConfig {
            access_key: Some(("AKIDEXAMPLE".into(), s.clone())),
            assume_role_arn: None,
            assume_role_external_id: Some(s),
            sts_endpoint: None,
        };
        assert!(!format!("{c:?}").contains("wJalr"), "{c:?}");
    }
}
