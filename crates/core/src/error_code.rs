//! One vocabulary of failures for every service: the websocket `error`
//! frame's `code` and the gRPC status code both come from here.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON.
    InvalidJson,
    /// The frame is JSON but not an object, or is a binary frame.
    InvalidMessage,
    /// The frame's `type` names no known message.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an unusable value.
    InvalidField,
    /// The URL cannot be parsed or has no host.
    InvalidUrl,
    /// The URL's scheme is not http or https.
    UnsupportedScheme,
    /// The URL is longer than the server accepts.
    UrlTooLong,
    /// The depth is negative, not an integer, or over the server's maximum.
    InvalidDepth,
    /// The frame is larger than the server accepts.
    MessageTooLarge,
    /// The URL's host resolves to an address the network policy refuses.
    ForbiddenAddress,
    /// The URL's host does not resolve.
    UnresolvableHost,
    /// This client already submitted a job with this id.
    DuplicateJob,
    /// No job with this id was submitted by this client.
    UnknownJob,
    /// A dependency (queue, cache, store) is unavailable; retry later.
    Unavailable,
    /// The crawl ran but failed as a whole.
    CrawlFailed,
    /// A lease is no longer held by the caller.
    StaleLease,
    /// The peer speaks another protocol version.
    ProtocolMismatch,
    /// A path leaves the folder it must stay in.
    PathEscapesRoot,
    /// No spider of that name exists.
    UnknownSpider,
    /// A file changed on the server while it was being read.
    FileChanged,
    /// This lock-server replica is not the leader; the status names the one that is.
    NotLeader,
    /// Too many requests, or too many jobs running, for this client; retry later.
    RateLimited,
    /// No credential, or one that is wrong, revoked or expired.
    Unauthenticated,
    /// The credential is good but does not allow this (a role it lacks).
    PermissionDenied,
    /// The tenant used up a quota (running jobs, jobs an hour, pages a day).
    QuotaExceeded,
    /// Something that should not happen did.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::UnknownType => "unknown_type",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::InvalidUrl => "invalid_url",
            Self::UnsupportedScheme => "unsupported_scheme",
            Self::UrlTooLong => "url_too_long",
            Self::InvalidDepth => "invalid_depth",
            Self::MessageTooLarge => "message_too_large",
            Self::ForbiddenAddress => "forbidden_address",
            Self::UnresolvableHost => "unresolvable_host",
            Self::DuplicateJob => "duplicate_job",
            Self::UnknownJob => "unknown_job",
            Self::Unavailable => "unavailable",
            Self::CrawlFailed => "crawl_failed",
            Self::StaleLease => "stale_lease",
            Self::ProtocolMismatch => "protocol_mismatch",
            Self::PathEscapesRoot => "path_escapes_root",
            Self::UnknownSpider => "unknown_spider",
            Self::FileChanged => "file_changed",
            Self::NotLeader => "not_leader",
            Self::RateLimited => "rate_limited",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Internal => "internal",
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidJson
            | Self::InvalidMessage
            | Self::UnknownType
            | Self::MissingField
            | Self::InvalidField
            | Self::InvalidUrl
            | Self::UnsupportedScheme
            | Self::UrlTooLong
            | Self::InvalidDepth
            | Self::MessageTooLarge
            | Self::PathEscapesRoot => Code::InvalidArgument,
            Self::ForbiddenAddress => Code::PermissionDenied,
            Self::UnresolvableHost | Self::UnknownJob | Self::UnknownSpider => Code::NotFound,
            Self::DuplicateJob => Code::AlreadyExists,
            Self::RateLimited | Self::QuotaExceeded => Code::ResourceExhausted,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::Unavailable | Self::NotLeader => Code::Unavailable,
            Self::StaleLease | Self::ProtocolMismatch | Self::FileChanged => {
                Code::FailedPrecondition
            }
            Self::CrawlFailed => Code::Aborted,
            Self::Internal => Code::Internal,
        }
    }

    /// Every code, for parsing and for tests.
    pub const ALL: [Self; 27] = [
        Self::InvalidJson,
        Self::InvalidMessage,
        Self::UnknownType,
        Self::MissingField,
        Self::InvalidField,
        Self::InvalidUrl,
        Self::UnsupportedScheme,
        Self::UrlTooLong,
        Self::InvalidDepth,
        Self::MessageTooLarge,
        Self::ForbiddenAddress,
        Self::UnresolvableHost,
        Self::DuplicateJob,
        Self::UnknownJob,
        Self::Unavailable,
        Self::CrawlFailed,
        Self::StaleLease,
        Self::ProtocolMismatch,
        Self::PathEscapesRoot,
        Self::UnknownSpider,
        Self::FileChanged,
        Self::NotLeader,
        Self::RateLimited,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::QuotaExceeded,
        Self::Internal,
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }

    /// A gRPC status with this code's gRPC equivalent, and the code itself
    /// in the `crawler-error-code` metadata entry, so the far side reads it
    /// back with [`ErrorCode::of`] instead of parsing the message.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            STATUS_METADATA_KEY,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        tonic::Status::with_metadata(self.grpc_code(), message, metadata)
    }

    /// The code a status was made with by [`ErrorCode::status`], if any.
    pub fn of(status: &tonic::Status) -> Option<Self> {
        status
            .metadata()
            .get(STATUS_METADATA_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(Self::parse)
    }
}

/// The gRPC metadata entry that carries an [`ErrorCode`] (trailers-only
/// responses carry metadata as trailers; tonic reads both the same way).
pub const STATUS_METADATA_KEY: &str = "crawler-error-code";

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::ForbiddenAddress,
            ErrorCode::UrlTooLong,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn stale_lease_is_failed_precondition_and_travels_beside_the_message() {
        let status = ErrorCode::StaleLease.status("token 3 is stale");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "token 3 is stale");
        assert_eq!(ErrorCode::of(&status), Some(ErrorCode::StaleLease));
        assert_eq!(ErrorCode::of(&tonic::Status::unavailable("x")), None);
    }

    #[test]
    fn every_code_parses_back_from_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
