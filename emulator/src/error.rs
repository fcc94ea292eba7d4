//! Compute's JSON error envelope (v1 format) and the errors this emulator answers with.

use serde_json::{Value, json};

/// One API error: HTTP status, `errors[].reason`, `errors[].domain` and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub domain: &'static str,
    pub message: String,
}

impl ApiError {
    /// A 400 `invalid` naming the field, in Compute's wording.
    pub fn invalid_field(field: &str, value: &str, why: &str) -> Self {
        Self {
            code: 400,
            reason: "invalid",
            domain: "global",
            message: format!("Invalid value for field '{field}': '{value}'. {why}"),
        }
    }

    /// A 400 `invalid` with a free message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "invalid",
            domain: "global",
            message: message.into(),
        }
    }

    /// A 400 `required` for a missing field.
    pub fn required(field: &str) -> Self {
        Self {
            code: 400,
            reason: "required",
            domain: "global",
            message: format!("Required field '{field}' not specified"),
        }
    }

    /// 404 `notFound` for a resource path such as `projects/p/global/routes/r`.
    pub fn not_found(resource: &str) -> Self {
        Self {
            code: 404,
            reason: "notFound",
            domain: "global",
            message: format!("The resource '{resource}' was not found"),
        }
    }

    /// 409 `alreadyExists`.
    pub fn already_exists(resource: &str) -> Self {
        Self {
            code: 409,
            reason: "alreadyExists",
            domain: "global",
            message: format!("The resource '{resource}' already exists"),
        }
    }

    /// 400 `resourceNotReady`: the resource (or its network) has an operation in flight.
    pub fn not_ready(resource: &str) -> Self {
        Self {
            code: 400,
            reason: "resourceNotReady",
            domain: "global",
            message: format!("The resource '{resource}' is not ready"),
        }
    }

    /// 403 `rateLimitExceeded` in the `usageLimits` domain, as Compute answers a spent rate quota.
    pub fn rate_limited(metric: &str, limit_name: &str, project: &str) -> Self {
        Self {
            code: 403,
            reason: "rateLimitExceeded",
            domain: "usageLimits",
            message: format!(
                "Quota exceeded for quota metric '{metric}' and limit '{limit_name}' of service \
                 'compute.googleapis.com' for consumer 'project_number:{project}'."
            ),
        }
    }

    /// A 4xx with its own reason (`memberAlreadyExists`, `wrongSubnetwork`, ...).
    pub fn with_reason(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            domain: "global",
            message: message.into(),
        }
    }

    /// 400 `resourceInUseByAnotherResource`: `The instance_group resource 'projects/P/zones/Z/
    /// instanceGroups/IG' is already being used by 'projects/P/regions/R/backendServices/BS'`
    /// (the observed shape; relative paths).
    pub fn in_use(type_name: &str, resource: &str, user: &str) -> Self {
        Self::with_reason(
            400,
            "resourceInUseByAnotherResource",
            format!("The {type_name} resource '{resource}' is already being used by '{user}'"),
        )
    }

    /// 412 `conditionNotMet`: a stale fingerprint.
    pub fn condition_not_met(message: impl Into<String>) -> Self {
        Self::with_reason(412, "conditionNotMet", message)
    }

    /// 500 `backendError`.
    pub fn backend_error() -> Self {
        Self {
            code: 500,
            reason: "backendError",
            domain: "global",
            message: "Internal error. Please try again or contact Google Support.".into(),
        }
    }

    /// 503 `backendError` (Service Unavailable).
    pub fn unavailable() -> Self {
        Self {
            code: 503,
            reason: "backendError",
            domain: "global",
            message: "The service is currently unavailable.".into(),
        }
    }

    /// 404 for a path this API does not serve.
    pub fn no_such_method(method: &str, path: &str) -> Self {
        Self {
            code: 404,
            reason: "notFound",
            domain: "global",
            message: format!("No such method: {method} {path}"),
        }
    }

    /// 405-style refusal for a method the collection does not have (routes have no patch).
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            code: 405,
            reason: "httpMethodNotAllowed",
            domain: "global",
            message: format!("HTTP method {method} is not supported by this URL: {path}"),
        }
    }

    /// The JSON body: `{"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}`.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{
                    "domain": self.domain,
                    "reason": self.reason,
                    "message": self.message,
                }]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_googles_shape() {
        let body = ApiError::already_exists("projects/p/global/routes/r").body();
        assert_eq!(body["error"]["code"], 409);
        assert_eq!(body["error"]["errors"][0]["reason"], "alreadyExists");
        assert_eq!(body["error"]["errors"][0]["domain"], "global");
        assert_eq!(
            body["error"]["message"],
            "The resource 'projects/p/global/routes/r' already exists"
        );
    }
}
