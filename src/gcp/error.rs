//! Compute errors: Google's error body parsed, operation errors, transport failures, and what is
//! worth retrying.

use std::time::Duration;

use serde_json::Value;

use super::auth::AuthError;

/// Why a Compute call or its operation did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GcpError {
    /// A synchronous error answer in Google's shape.
    #[error("Compute API {status} {reason}: {message}")]
    Api {
        status: u16,
        reason: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The call was accepted but its operation ended DONE with an error.
    #[error("operation failed with {code}: {message}")]
    Operation {
        code: String,
        message: String,
        http_status: Option<u16>,
    },
    /// The request or its answer was lost on the way (connection, timeout, cut body).
    #[error("transport: {0}")]
    Transport(String),
    /// No token could be had, for now (the token endpoint unreachable, a 401 with a fresh
    /// token): retried.
    #[error("credentials: {0}")]
    Auth(String),
    /// The credentials were refused for good (the token endpoint's `invalid_grant`, a key that
    /// does not parse): retrying the same key cannot help, so nothing waits on it.
    #[error("credentials refused: {0}")]
    AuthRefused(String),
    /// An answer that is not what Compute sends.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// A later mutation of the same resource made this one moot before it was sent.
    #[error("superseded by a later change of the same resource before it was sent")]
    Superseded,
    /// The resource exists with other content than the one asked for.
    #[error("{0} already exists with different content")]
    Conflict(String),
    /// An insert found its name taken by a resource whose description does not carry the
    /// inserting object's ownership marker: someone else's resource, never modified, adopted or
    /// deleted.
    #[error("{}", not_owned_message(resource, marker.as_deref()))]
    NotOwned {
        /// The resource, e.g. `global/routes/adc-3f9c1a0b2d-1a2b3c4d`.
        resource: String,
        /// The ownership marker its description carries (`adc.dev/owner=...`), if any.
        marker: Option<String>,
    },
    /// An insert found its name taken (409) but the resource cannot be read (404): an operation
    /// still creates it (a former leader's, or an attempt whose answer was lost). Retried: the
    /// next insert either meets the finished resource or, if that operation failed, makes it.
    #[error(
        "{0} is being created by an operation in flight (its name is taken, it cannot be read yet)"
    )]
    BeingCreated(String),
    /// Retries ran out; carries the last error.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: Box<GcpError> },
    /// The engine is shutting down.
    #[error("the GCP engine is shutting down")]
    Shutdown,
    /// The engine only reads (`adc-operator plan`): the mutation was never sent.
    #[error("the GCP engine only reads: {0} was not changed")]
    ReadOnly(String),
}

fn not_owned_message(resource: &str, marker: Option<&str>) -> String {
    let whose = match marker {
        None => "a GCP resource this cluster does not own (its description carries no \
                 adc.dev/owner marker)"
            .to_string(),
        Some(marker) => format!("a GCP resource of another owner (its description says {marker})"),
    };
    format!(
        "the name {resource} is taken by {whose}; the operator never modifies or deletes a \
         resource it does not own: delete or rename that resource in GCP, or rename this object"
    )
}

impl From<AuthError> for GcpError {
    fn from(err: AuthError) -> Self {
        if err.retryable() {
            GcpError::Auth(err.to_string())
        } else {
            GcpError::AuthRefused(err.to_string())
        }
    }
}

/// Operation error codes that a retry (with a new requestId) may cure.
const RETRYABLE_OPERATION_CODES: [&str; 4] = [
    "INTERNAL_ERROR",
    "RESOURCE_NOT_READY",
    "RATE_LIMIT_EXCEEDED",
    "SERVICE_UNAVAILABLE",
];

impl GcpError {
    /// Whether GCP answered the call and had quota for it: an answer that is not a rate
    /// limit (an error answer or a failed operation counts; a lost request or no token does
    /// not).
    pub fn answered_with_room(&self) -> bool {
        matches!(self, GcpError::Api { .. } | GcpError::Operation { .. }) && !self.is_rate_limited()
    }

    /// Parses an error answer: Google's JSON envelope when present, the status line otherwise.
    pub fn from_response(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let reason = error
            .and_then(|e| e.get("errors"))
            .and_then(|errors| errors.get(0))
            .and_then(|first| first.get("reason"))
            .and_then(Value::as_str)
            .or_else(|| error.and_then(|e| e.get("status")).and_then(Value::as_str))
            .unwrap_or(match status {
                404 => "notFound",
                409 => "alreadyExists",
                429 => "rateLimitExceeded",
                500..=599 => "backendError",
                _ => "unknown",
            })
            .to_string();
        let message = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        GcpError::Api {
            status,
            reason,
            message,
            retry_after,
        }
    }

    /// Whether a retry may succeed: rate limits, backend errors, 5xx, network not ready,
    /// transport failures, retryable operation errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            GcpError::Api { status, .. } => {
                *status >= 500
                    || *status == 429
                    || *status == 401
                    || self.is_rate_limited()
                    || self.is_not_ready()
            }
            GcpError::Operation { code, .. } => RETRYABLE_OPERATION_CODES.contains(&code.as_str()),
            GcpError::Transport(_) | GcpError::Auth(_) | GcpError::BeingCreated(_) => true,
            _ => false,
        }
    }

    /// A spent rate quota: 429, or 403 rateLimitExceeded / userRateLimitExceeded.
    pub fn is_rate_limited(&self) -> bool {
        match self {
            GcpError::Api { status, reason, .. } => {
                *status == 429
                    || reason == "rateLimitExceeded"
                    || reason == "userRateLimitExceeded"
                    || reason == "RESOURCE_EXHAUSTED"
            }
            GcpError::Operation { code, .. } => code == "RATE_LIMIT_EXCEEDED",
            _ => false,
        }
    }

    /// The network (or resource) has an operation in flight: 400 resourceNotReady.
    pub fn is_not_ready(&self) -> bool {
        match self {
            GcpError::Api { reason, .. } => reason == "resourceNotReady",
            GcpError::Operation { code, .. } => code == "RESOURCE_NOT_READY",
            _ => false,
        }
    }

    /// 409 alreadyExists (or the operation's RESOURCE_ALREADY_EXISTS).
    pub fn is_already_exists(&self) -> bool {
        match self {
            GcpError::Api { status, reason, .. } => *status == 409 && reason != "conditionNotMet",
            GcpError::Operation { code, .. } => code == "RESOURCE_ALREADY_EXISTS",
            _ => false,
        }
    }

    /// 404 notFound (or the operation's RESOURCE_NOT_FOUND).
    pub fn is_not_found(&self) -> bool {
        match self {
            GcpError::Api { status, .. } => *status == 404,
            GcpError::Operation { code, .. } => code == "RESOURCE_NOT_FOUND",
            _ => false,
        }
    }

    /// A resource quota (not a rate quota) is spent: it needs a quota change, not a retry.
    pub fn is_quota_exceeded(&self) -> bool {
        match self {
            GcpError::Operation { code, .. } => code == "QUOTA_EXCEEDED",
            GcpError::Api { reason, .. } => reason == "quotaExceeded" || reason == "QUOTA_EXCEEDED",
            GcpError::Exhausted { last, .. } => last.is_quota_exceeded(),
            _ => false,
        }
    }

    /// A short label for metrics and events.
    pub fn label(&self) -> String {
        match self {
            GcpError::Api { reason, .. } => reason.clone(),
            GcpError::Operation { code, .. } => code.clone(),
            GcpError::Transport(_) => "transport".into(),
            GcpError::Auth(_) | GcpError::AuthRefused(_) => "auth".into(),
            GcpError::Decode(_) => "decode".into(),
            GcpError::Superseded => "superseded".into(),
            GcpError::Conflict(_) => "conflict".into(),
            GcpError::NotOwned { .. } => "not_owned".into(),
            GcpError::BeingCreated(_) => "being_created".into(),
            GcpError::Exhausted { last, .. } => last.label(),
            GcpError::Shutdown => "shutdown".into(),
            GcpError::ReadOnly(_) => "readOnly".into(),
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GcpError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, reason: &str) -> GcpError {
        let body = serde_json::json!({"error": {"code": status, "message": "m", "errors": [{"domain": "global", "reason": reason, "message": "m"}]}});
        GcpError::from_response(status, body.to_string().as_bytes(), None)
    }

    #[test]
    fn classifies_googles_errors() {
        assert!(api(403, "rateLimitExceeded").is_rate_limited());
        assert!(api(403, "rateLimitExceeded").is_retryable());
        assert!(api(403, "userRateLimitExceeded").is_retryable());
        assert!(api(429, "RESOURCE_EXHAUSTED").is_retryable());
        assert!(api(500, "backendError").is_retryable());
        assert!(api(503, "backendError").is_retryable());
        assert!(api(400, "resourceNotReady").is_retryable());
        assert!(api(400, "resourceNotReady").is_not_ready());
        assert!(!api(400, "invalid").is_retryable());
        assert!(!api(403, "forbidden").is_retryable());
        assert!(api(409, "alreadyExists").is_already_exists());
        assert!(!api(409, "alreadyExists").is_retryable());
        assert!(api(404, "notFound").is_not_found());
        assert!(!api(404, "notFound").is_retryable());
        assert!(GcpError::Transport("reset".into()).is_retryable());
        // What tells a probing budget that its window has room (`Budget::confirm`).
        assert!(api(409, "alreadyExists").answered_with_room());
        assert!(!api(429, "RESOURCE_EXHAUSTED").answered_with_room());
        assert!(!api(403, "rateLimitExceeded").answered_with_room());
        assert!(!GcpError::Transport("reset".into()).answered_with_room());
        let quota = GcpError::Operation {
            code: "QUOTA_EXCEEDED".into(),
            message: "Quota 'ROUTES' exceeded.".into(),
            http_status: Some(403),
        };
        assert!(quota.is_quota_exceeded() && !quota.is_retryable());
        let internal = GcpError::Operation {
            code: "INTERNAL_ERROR".into(),
            message: String::new(),
            http_status: Some(500),
        };
        assert!(internal.is_retryable());
    }

    #[test]
    fn refused_credentials_are_final_unreachable_ones_are_not() {
        let refused = GcpError::from(AuthError::TokenEndpoint {
            url: "http://127.0.0.1:1/token".into(),
            status: 400,
            error: "invalid_grant".into(),
            description: "Invalid JWT Signature.".into(),
        });
        assert!(matches!(refused, GcpError::AuthRefused(_)), "{refused:?}");
        assert!(!refused.is_retryable());
        assert!(refused.to_string().contains("invalid_grant"), "{refused}");
        assert_eq!(refused.label(), "auth");
        let unavailable = GcpError::from(AuthError::TokenEndpoint {
            url: "http://127.0.0.1:1/token".into(),
            status: 503,
            error: "Service Unavailable".into(),
            description: String::new(),
        });
        assert!(matches!(unavailable, GcpError::Auth(_)), "{unavailable:?}");
        assert!(unavailable.is_retryable());
    }

    #[test]
    fn a_taken_name_says_whose_it_is_and_is_final() {
        let foreign = GcpError::NotOwned {
            resource: "global/routes/adc-1".into(),
            marker: None,
        };
        let text = foreign.to_string();
        assert!(
            text.contains("global/routes/adc-1") && text.contains("this cluster does not own"),
            "{text}"
        );
        assert!(!foreign.is_retryable());
        assert!(!foreign.is_already_exists());
        assert_eq!(foreign.label(), "not_owned");
        let other = GcpError::NotOwned {
            resource: "global/routes/adc-1".into(),
            marker: Some("adc.dev/owner=other/c/VirtualService/ns/web".into()),
        };
        assert!(
            other
                .to_string()
                .contains("another owner (its description says adc.dev/owner=other/c/"),
            "{other}"
        );
    }

    #[test]
    fn tolerates_bodies_that_are_not_googles() {
        let err = GcpError::from_response(502, b"<html>Bad Gateway</html>", None);
        assert_eq!(err.label(), "backendError");
        assert!(err.is_retryable());
        let newer = serde_json::json!({"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}});
        let err = GcpError::from_response(
            429,
            newer.to_string().as_bytes(),
            Some(Duration::from_secs(3)),
        );
        assert!(err.is_rate_limited());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    }
}
