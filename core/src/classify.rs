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
//! service's error code and message, and the original error as its `source`, without SDK
//! generics in its type.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

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
            if d.is_io() || d.is_timeout() {
                ErrorKind::Transient
            } else if d.is_user() {
                ErrorKind::Invalid
            } else {
                // Credential resolution failures and other client-side problems land here.
                ErrorKind::Other
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
    source: Box<dyn StdError + Send + Sync>,
}

impl AwsError {
    /// Wraps an SDK error from `operation` (e.g. `"ListShards"`).
    pub fn new<E>(operation: &'static str, err: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let kind = classify(&err);
        let (code, message) = match err.as_service_error() {
            Some(e) => (e.code().map(str::to_owned), e.message().map(str::to_owned)),
            None => (None, None),
        };
        Self {
            operation,
            kind,
            code,
            message,
            source: Box::new(err),
        }
    }

    /// An error that did not come from the SDK (e.g. a malformed response), with its class.
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
            source: source.into(),
        }
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
