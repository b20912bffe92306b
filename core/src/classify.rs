//! One place that says, for any AWS SDK error, whether retrying can help.
//!
//! ```text
//!   SdkError<E> ─► classify ─► ErrorKind::{Throttled, Transient}          → retry with backoff
//!                          └─► ErrorKind::{NotFound, AccessDenied, Invalid, …} → fail now
//!   PutRecords entry ErrorCode ─► classify_code ─► the same kinds
//! ```
//!
//! Every retry loop in the suite asks this module, so the same error is treated the same way
//! by the producer, the consumer, the agent and the CLI. [`AwsError`] carries the class, the
//! service's error code and message, whether the request may have been applied
//! ([`outcome_unknown`]), and the original error as its `source`, without SDK generics in its
//! type.
//!
//! Failures before an answer, by how they surface in the SDK (`aws-smithy-runtime-api`'s
//! `SdkError` and `ConnectorError`):
//!
//! | failure | surfaces as | kind | outcome unknown |
//! |---|---|---|---|
//! | request cannot be built (missing or bad parameter) | `ConstructionFailure` | `Invalid` | no |
//! | connection refused, DNS failure, TLS handshake | `DispatchFailure`, io (connect) | `Transient` | no |
//! | reset / closed after the request went out ("connection closed before message completed") | `DispatchFailure`, io or other(transient) | `Transient` | yes |
//! | attempt or connect timeout | `TimeoutError`, `DispatchFailure` timeout | `Transient` | yes |
//! | credentials: IMDS, ECS, STS web identity unreachable or failing, chain found none | `DispatchFailure`, other, source `CredentialsError` | `Transient` | no |
//! | credentials provider misconfigured (`InvalidConfiguration`) | the same | `AccessDenied` | no |
//! | request refused by the HTTP client itself (hyper user error) | `DispatchFailure`, user | `Invalid` | no |
//! | anything else before the answer (signing, endpoint, client-side rate limits) | `DispatchFailure`, other | `Transient` | yes |
//! | body cut or unreadable | `ResponseError` | `Transient` | yes |
//! | an answer: error code, else HTTP status | `ServiceError` | by code / status | yes for 5xx |
//!
//! Credential failures are transient because that is how an IMDS or ECS endpoint hiccup looks
//! (the chain reports `CredentialsNotLoaded` when IMDS does not answer); a process that has no
//! credentials at all fails at its first call anyway (the producer's and consumer's builders do
//! not retry).

use std::error::Error as StdError;
use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kinesis::error::{ConnectorError, ProvideErrorMetadata, SdkError};

/// What kind of failure an error is, and so whether to retry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The service asked us to slow down (throughput exceeded, rate limits, HTTP 429).
    Throttled,
    /// A failure that may pass: 5xx, internal failure, timeout, connection error.
    Transient,
    /// The stream, table, consumer or shard does not exist.
    NotFound,
    /// Credentials are missing, wrong, expired, or lack permission (including KMS access).
    AccessDenied,
    /// The request is invalid and will stay invalid.
    Invalid,
    /// A shard iterator or list token expired: get a new one, then retry.
    ExpiredIterator,
    /// The resource is busy (being created, updated or deleted; or a subscription is active).
    ResourceInUse,
    /// A DynamoDB condition did not hold (someone else changed the item).
    ConditionFailed,
    /// Anything else; treated as not retryable.
    Other,
}

impl ErrorKind {
    /// Whether retrying the same request after a backoff can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::Transient)
    }

    /// Whether the service asked us to slow down.
    pub fn is_throttling(self) -> bool {
        self == Self::Throttled
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::NotFound => "not found",
            Self::AccessDenied => "access denied",
            Self::Invalid => "invalid request",
            Self::ExpiredIterator => "expired iterator",
            Self::ResourceInUse => "resource in use",
            Self::ConditionFailed => "condition failed",
            Self::Other => "error",
        })
    }
}

/// Classifies an AWS error code, as found in an SDK error or a PutRecords result entry.
pub fn classify_code(code: &str) -> Option<ErrorKind> {
    Some(match code {
        "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "SlowDown"
        | "BandwidthLimitExceeded"
        | "PriorRequestNotComplete"
        | "KMSThrottlingException"
        | "EC2ThrottledException" => ErrorKind::Throttled,
        "InternalFailure"
        | "InternalError"
        | "InternalServerError"
        | "InternalServerErrorException"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "IDPCommunicationError" => ErrorKind::Transient,
        "ResourceNotFoundException" | "StreamNotFound" | "TableNotFoundException" => {
            ErrorKind::NotFound
        }
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "RequestExpired"
        | "KMSAccessDeniedException"
        | "KMSDisabledException"
        | "KMSInvalidStateException"
        | "KMSNotFoundException"
        | "KMSOptInRequired" => ErrorKind::AccessDenied,
        "ValidationException"
        | "InvalidArgumentException"
        | "SerializationException"
        | "MissingParameter"
        | "InvalidParameterValue"
        | "InvalidParameterCombination"
        | "UnknownOperationException" => ErrorKind::Invalid,
        "ExpiredIteratorException" | "ExpiredNextTokenException" => ErrorKind::ExpiredIterator,
        "ResourceInUseException" => ErrorKind::ResourceInUse,
        "ConditionalCheckFailedException" => ErrorKind::ConditionFailed,
        _ => return None,
    })
}

/// Classifies any SDK error (Kinesis or DynamoDB: both share `SdkError`).
pub fn classify<E>(err: &SdkError<E>) -> ErrorKind
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ConstructionFailure(_) => ErrorKind::Invalid,
        SdkError::TimeoutError(_) => ErrorKind::Transient,
        SdkError::DispatchFailure(d) => {
            if let Some(c) = d
                .as_connector_error()
                .and_then(find_source::<CredentialsError>)
            {
                return match c {
                    CredentialsError::InvalidConfiguration(_) => ErrorKind::AccessDenied,
                    _ => ErrorKind::Transient,
                };
            }
            if d.is_user() {
                ErrorKind::Invalid
            } else {
                // Io, timeout, other(transient) ("connection closed before message completed"),
                // and whatever else failed before an answer: the next attempt may pass.
                ErrorKind::Transient
            }
        }
        // The response could not be read (connection cut mid-body, bad framing).
        SdkError::ResponseError(_) => ErrorKind::Transient,
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            s.err()
                .code()
                .and_then(classify_code)
                .unwrap_or_else(|| classify_status(status))
        }
        _ => ErrorKind::Other,
    }
}

/// Whether a failed request may have been applied by the service all the same: it may have
/// reached it (a connection lost after the request was sent, a timeout, an unreadable answer)
/// or the service failed while handling it (5xx). Retrying such a request can apply it twice.
/// `false` when it is known not to have been applied: refused before sending (no connection,
/// no credentials, bad request) or answered with a 4xx error.
pub fn outcome_unknown<E>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::ConstructionFailure(_) => false,
        SdkError::DispatchFailure(d) => !d.as_connector_error().is_some_and(never_sent),
        SdkError::ServiceError(s) => s.raw().status().is_server_error(),
        // TimeoutError, ResponseError, and any new kind.
        _ => true,
    }
}

/// A dispatch failure that certainly happened before the request left: credentials could not
/// be resolved, the connection was never made (refused, DNS, TLS), or the HTTP client refused
/// the request. Anything else may have been sent.
fn never_sent(c: &ConnectorError) -> bool {
    c.is_user()
        || find_source::<CredentialsError>(c).is_some()
        || find_source::<hyper_util::client::legacy::Error>(c).is_some_and(|e| e.is_connect())
}

/// The first error of type `T` in `err`'s chain of sources (itself included).
fn find_source<T: StdError + 'static>(err: &ConnectorError) -> Option<&T> {
    let err: &(dyn StdError + 'static) = err;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

fn classify_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::Throttled,
        500..=599 => ErrorKind::Transient,
        401 | 403 => ErrorKind::AccessDenied,
        404 => ErrorKind::NotFound,
        400..=499 => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

/// An AWS call that failed, classified, without SDK generics in its type.
#[derive(Debug)]
pub struct AwsError {
    operation: &'static str,
    kind: ErrorKind,
    code: Option<String>,
    message: Option<String>,
    outcome_unknown: bool,
    source: Box<dyn StdError + Send + Sync>,
}

impl AwsError {
    /// Wraps an SDK error from `operation` (e.g. `"ListShards"`).
    pub fn new<E>(operation: &'static str, err: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let kind = classify(&err);
        let outcome_unknown = outcome_unknown(&err);
        let (code, message) = match err.as_service_error() {
            Some(e) => (e.code().map(str::to_owned), e.message().map(str::to_owned)),
            None => (None, None),
        };
        Self {
            operation,
            kind,
            code,
            message,
            outcome_unknown,
            source: Box::new(err),
        }
    }

    /// An error that did not come from the SDK (e.g. a malformed response), with its class. Its
    /// outcome counts as known (not applied); see [`with_outcome_unknown`](Self::with_outcome_unknown).
    pub fn other(
        operation: &'static str,
        kind: ErrorKind,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self {
            operation,
            kind,
            code: None,
            message: None,
            outcome_unknown: false,
            source: source.into(),
        }
    }

    /// Marks the request as possibly applied (e.g. the service answered, but not as expected).
    #[must_use]
    pub fn with_outcome_unknown(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    /// Whether the failed request may have been applied all the same (see [`outcome_unknown`]):
    /// retrying it can apply it twice.
    pub fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    /// The API operation that failed.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying after a backoff can succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The service's error code (e.g. `ResourceNotFoundException`), if it sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The service's error message, if it sent one.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({})", self.operation, self.kind)?;
        match (&self.code, &self.message) {
            (Some(c), Some(m)) => write!(f, ": {c}: {m}"),
            (Some(c), None) => write!(f, ": {c}"),
            (None, Some(m)) => write!(f, ": {m}"),
            (None, None) => write!(f, ": {}", DisplayChain(&*self.source)),
        }
    }
}

impl StdError for AwsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// Displays an error with its chain of sources: `a: b: c`.
#[derive(Debug)]
pub struct DisplayChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_from_a_table() {
        let table = [
            (
                "ProvisionedThroughputExceededException",
                ErrorKind::Throttled,
                true,
            ),
            ("LimitExceededException", ErrorKind::Throttled, true),
            ("ThrottlingException", ErrorKind::Throttled, true),
            ("InternalFailure", ErrorKind::Transient, true),
            ("ServiceUnavailable", ErrorKind::Transient, true),
            ("ResourceNotFoundException", ErrorKind::NotFound, false),
            ("AccessDeniedException", ErrorKind::AccessDenied, false),
            ("KMSAccessDeniedException", ErrorKind::AccessDenied, false),
            (
                "UnrecognizedClientException",
                ErrorKind::AccessDenied,
                false,
            ),
            ("ValidationException", ErrorKind::Invalid, false),
            ("InvalidArgumentException", ErrorKind::Invalid, false),
            (
                "ExpiredIteratorException",
                ErrorKind::ExpiredIterator,
                false,
            ),
            ("ResourceInUseException", ErrorKind::ResourceInUse, false),
            (
                "ConditionalCheckFailedException",
                ErrorKind::ConditionFailed,
                false,
            ),
        ];
        for (code, kind, retry) in table {
            assert_eq!(classify_code(code), Some(kind), "{code}");
            assert_eq!(kind.is_retryable(), retry, "{code}");
        }
        assert_eq!(classify_code("SomethingNew"), None);
    }

    #[test]
    fn failures_before_an_answer() {
        use aws_sdk_kinesis::operation::put_records::PutRecordsError;
        use aws_smithy_types::retry::ErrorKind as Retry;
        type E = SdkError<PutRecordsError>;
        let boxed = || -> Box<dyn StdError + Send + Sync> { "x".into() };
        let cases: Vec<(E, ErrorKind, bool)> = vec![
            (E::construction_failure(boxed()), ErrorKind::Invalid, false),
            (E::timeout_error(boxed()), ErrorKind::Transient, true),
            (
                E::dispatch_failure(ConnectorError::user(boxed())),
                ErrorKind::Invalid,
                false,
            ),
            (
                E::dispatch_failure(ConnectorError::io(boxed())),
                ErrorKind::Transient,
                true,
            ),
            (
                E::dispatch_failure(ConnectorError::timeout(boxed())),
                ErrorKind::Transient,
                true,
            ),
            (
                E::dispatch_failure(ConnectorError::other(boxed(), Some(Retry::TransientError))),
                ErrorKind::Transient,
                true,
            ),
            (
                E::dispatch_failure(ConnectorError::other(boxed(), None)),
                ErrorKind::Transient,
                true,
            ),
            (
                E::dispatch_failure(ConnectorError::other(
                    Box::new(CredentialsError::provider_error("IMDS")),
                    None,
                )),
                ErrorKind::Transient,
                false,
            ),
        ];
        for (err, kind, unknown) in cases {
            assert_eq!(classify(&err), kind, "{err:?}");
            assert_eq!(outcome_unknown(&err), unknown, "{err:?}");
        }
    }

    #[test]
    fn statuses_from_a_table() {
        for (status, kind) in [
            (429, ErrorKind::Throttled),
            (500, ErrorKind::Transient),
            (503, ErrorKind::Transient),
            (403, ErrorKind::AccessDenied),
            (404, ErrorKind::NotFound),
            (400, ErrorKind::Invalid),
        ] {
            assert_eq!(classify_status(status), kind, "{status}");
        }
    }
}
