//! What a reconcile can fail with; the variant names become metric labels.

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("GCP: {0}")]
    Gcp(#[from] crate::gcp::GcpError),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Gcp(_) => "gcp",
            Error::Finalizer(_) => "finalizer",
            Error::Config(_) => "config",
        }
    }
}
