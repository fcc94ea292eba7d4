//! What a reconcile can fail with; the variant names become metric labels.

use kube::runtime::controller::Action;

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("GCP: {0}")]
    Gcp(#[from] crate::gcp::GcpError),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The object changed since the cached copy this reconcile started from (a finalizer patch
    /// whose precondition failed): retried once the watch has brought the fresh copy.
    #[error("the object changed meanwhile: {0}")]
    Conflict(String),
    #[error("{0}")]
    Config(String),
    /// A reconcile ran longer than [`super::RECONCILE_TIMEOUT`] (a request lost on a
    /// connection the API server dropped, say): it is given up and retried.
    #[error("the reconcile did not finish within {0:?}; retrying")]
    Timeout(std::time::Duration),
}

impl Error {
    /// The labels [`Self::label`] gives besides GCP's (the series are primed at zero).
    pub const LABELS: [&'static str; 5] = ["kube", "finalizer", "conflict", "config", "timeout"];

    /// A short label for metrics: the kind of failure, and for a GCP error GCP's own reason
    /// (`gcp/rateLimitExceeded`, `gcp/QUOTA_EXCEEDED`, `gcp/transport`…), so that a dashboard
    /// tells a spent quota from a flaky network.
    pub fn label(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::Kube(_) => "kube".into(),
            Error::Gcp(err) => format!("gcp/{}", err.label()).into(),
            Error::Finalizer(_) => "finalizer".into(),
            Error::Conflict(_) => "conflict".into(),
            Error::Config(_) => "config".into(),
            Error::Timeout(_) => "timeout".into(),
        }
    }
}

/// The outcome of kube-runtime's finalizer helper. An object already gone when its finalizer is
/// removed (a requeue ran on the cached copy after another run let the object go) is done, not
/// a failure: nothing is logged or retried for it.
pub fn finalizer_outcome(
    result: Result<Action, kube::runtime::finalizer::Error<Error>>,
) -> Result<Action, Error> {
    use kube::runtime::finalizer::Error as F;
    match result {
        Err(F::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(Error::from_finalizer),
    }
}

impl Error {
    /// Unwraps kube-runtime's finalizer error: the reconcile's own error stays itself, and a
    /// finalizer patch refused because the cached object is stale (409, or 422 from the JSON
    /// patch's `test`) is a conflict.
    pub fn from_finalizer(err: kube::runtime::finalizer::Error<Error>) -> Error {
        use kube::runtime::finalizer::Error as F;
        let stale = |err: &kube::Error| matches!(err, kube::Error::Api(status) if status.code == 409 || status.code == 422);
        match err {
            F::ApplyFailed(err) | F::CleanupFailed(err) => err,
            F::AddFinalizer(err) | F::RemoveFinalizer(err) if stale(&err) => {
                Error::Conflict(err.to_string())
            }
            other => Error::Finalizer(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::runtime::finalizer::Error as F;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("m", "r").with_code(code)))
    }

    #[test]
    fn an_object_gone_before_its_finalizer_is_removed_is_done() {
        assert!(finalizer_outcome(Err(F::RemoveFinalizer(api(404)))).is_ok());
        assert!(matches!(
            finalizer_outcome(Err(F::RemoveFinalizer(api(409)))),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            finalizer_outcome(Err(F::RemoveFinalizer(api(500)))),
            Err(Error::Finalizer(_))
        ));
        assert!(matches!(
            finalizer_outcome(Err(F::AddFinalizer(api(404)))),
            Err(Error::Finalizer(_))
        ));
    }
}
