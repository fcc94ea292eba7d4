//! Access tokens for the Compute API.
//!
//! A [`Credentials`] handle turns a [`CredentialSource`] into the `Authorization` header value of
//! each Compute request: a service-account key (RS256 JWT-bearer grant against the key's
//! `token_uri`), the metadata server (GKE Workload Identity), a fixed token, or nothing at all.
//! Fetched tokens are cached and shared by every clone of the handle; concurrent callers on a
//! cold or stale cache share one fetch; a token the API refused (401) is dropped with
//! [`Credentials::invalidate`].
//!
//! Tokens and private keys are secrets: no `Debug` output, error message or log line of this
//! module contains one.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// The OAuth scope requested for service-account tokens.
pub const COMPUTE_SCOPE: &str = "https://www.googleapis.com/auth/compute";
/// Google's token endpoint, used when a key file has no `token_uri`.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's host when [`METADATA_HOST_ENV`] is unset (it resolves to
/// 169.254.169.254 on GCE and GKE).
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// Environment variable overriding the metadata server's `host[:port]`, as in Google's libraries.
pub const METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";
/// The `grant_type` of the RFC 7523 JWT-bearer grant.
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The metadata server's token path for the pod's (or VM's) default service account.
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Lifetime asked for in the JWT assertion (`exp - iat`), Google's maximum.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Lifetime assumed when a token response carries no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// A cached token is refreshed once it has no more than this left (or 10 % of its lifetime, if
/// that is more).
const MIN_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// When a refresh fails, the previous token is still handed out if it has more than this left.
const MIN_FALLBACK_REMAINING: Duration = Duration::from_secs(10);
/// Pauses before the second and third attempt of a retryable failed fetch.
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];
/// Bound on one token request (connect, send, read), whatever client is used.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on connecting, for the client this module builds itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error response's text goes into an [`AuthError`].
const MAX_ERROR_TEXT: usize = 300;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why credentials could not be loaded or a token could not be obtained. No variant carries a
/// token or key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The key file could not be read.
    #[error("reading service-account key file {path}: {source}")]
    KeyFile {
        /// The file's path, as given.
        path: String,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The key is not a usable Google service-account key (the reason names the field).
    #[error("invalid service-account key ({origin}): {reason}")]
    InvalidKey {
        /// Where the key came from: a file path or `inline JSON`.
        origin: String,
        /// What is wrong, e.g. `missing field 'client_email'`.
        reason: String,
    },
    /// Signing the JWT assertion failed.
    #[error("signing the JWT assertion for {client_email}: {reason}")]
    Signing {
        /// The service account.
        client_email: String,
        /// What the signer said.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client for token requests: {0}")]
    HttpClient(String),
    /// The request did not get an answer (connect, TLS, timeout, reading the body).
    #[error("requesting an access token from {url}: {detail}")]
    Transport {
        /// The token endpoint or metadata URL.
        url: String,
        /// The error and its causes, joined by `: `.
        detail: String,
        /// The client's error.
        #[source]
        source: Arc<reqwest::Error>,
    },
    /// The token endpoint (or metadata server) answered with an error status.
    #[error("{url} refused the token request: HTTP {status} {error}: {description}")]
    TokenEndpoint {
        /// The token endpoint or metadata URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code (e.g. `invalid_grant`), or the status' reason phrase when the
        /// answer is not an OAuth error.
        error: String,
        /// Google's `error_description` (e.g. `Invalid JWT Signature.`), or the start of the
        /// answer's text.
        description: String,
    },
    /// A 2xx answer that is not a usable token response.
    #[error("{url} answered HTTP {status} without a usable token: {reason}")]
    InvalidResponse {
        /// The token endpoint or metadata URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What is wrong with the answer (never its content).
        reason: String,
    },
}

impl AuthError {
    /// Whether trying again may succeed: transport errors, 5xx, 429 and 408 answers.
    /// Grant errors (`invalid_grant`, bad keys) are final.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::TokenEndpoint { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::KeyFile { .. }
            | Self::InvalidKey { .. }
            | Self::Signing { .. }
            | Self::HttpClient(_)
            | Self::InvalidResponse { .. } => false,
        }
    }
}

fn transport_error(url: &str, err: reqwest::Error) -> AuthError {
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !detail.ends_with(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        cause = inner.source();
    }
    AuthError::Transport {
        url: url.to_owned(),
        detail,
        source: Arc::new(err),
    }
}

mod key;
pub use key::ServiceAccountKey;

// ---------------------------------------------------------------------------------------------
// Sources and the cache
// ---------------------------------------------------------------------------------------------

/// Where tokens come from.
pub enum CredentialSource {
    /// A service-account key in Google's JSON format: an RS256 JWT-bearer assertion (claims
    /// `iss`, `scope`, `aud` = `token_uri`, `iat`, `exp`) is posted to the key's `token_uri`.
    ServiceAccountKey(Box<ServiceAccountKey>),
    /// The metadata server (GKE Workload Identity, GCE):
    /// `GET http://{host}/computeMetadata/v1/instance/service-accounts/default/token` with
    /// `Metadata-Flavor: Google`.
    MetadataServer {
        /// `host[:port]`, no scheme.
        host: String,
    },
    /// A fixed token (an emulator run with `--auth any`, or a token from outside).
    Fixed(String),
    /// No `Authorization` header at all (an emulator run with `--auth none`).
    Anonymous,
}

impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServiceAccountKey(key) => f.debug_tuple("ServiceAccountKey").field(key).finish(),
            Self::MetadataServer { host } => f
                .debug_struct("MetadataServer")
                .field("host", host)
                .finish(),
            Self::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            Self::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// A fetched token, as the `Authorization` header value.
struct CachedToken {
    header: String,
    /// When the token expires (measured from just before its request was sent).
    expires_at: Instant,
    /// Its lifetime as announced (`expires_in`).
    lifetime: Duration,
}

impl CachedToken {
    fn remaining(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    fn is_fresh(&self, now: Instant) -> bool {
        is_fresh(self.remaining(now), self.lifetime)
    }
}

/// How long before expiry a token is refreshed: 10 % of its lifetime, at least 60 s.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MIN_REFRESH_MARGIN)
}

/// Whether a token with `remaining` of its `lifetime` left is served from the cache. With
/// Google's 3600 s tokens it is refreshed in its last 6 minutes; a token living 60 s or less is
/// never fresh (every call fetches).
fn is_fresh(remaining: Duration, lifetime: Duration) -> bool {
    remaining > refresh_margin(lifetime)
}

#[derive(Default)]
struct CacheState {
    token: Option<CachedToken>,
    /// Completed fetch rounds (each up to three attempts), successful or not.
    rounds: u64,
    /// The error of the last round, when it failed.
    last_error: Option<AuthError>,
}

struct Inner {
    source: Arc<CredentialSource>,
    http: OnceLock<reqwest::Client>,
    state: Mutex<CacheState>,
    /// Held by the one caller fetching; the others wait and share its outcome.
    flight: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl Inner {
    fn new(source: Arc<CredentialSource>, http: Option<reqwest::Client>) -> Self {
        let cell = OnceLock::new();
        if let Some(client) = http {
            let _ = cell.set(client);
        }
        Self {
            source,
            http: cell,
            state: Mutex::new(CacheState::default()),
            flight: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cloneable, thread-safe handle to a [`CredentialSource`] and its token cache. Clones share
/// the cache.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.describe())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials from any source.
    pub fn new(source: CredentialSource) -> Self {
        Self {
            inner: Arc::new(Inner::new(Arc::new(source), None)),
        }
    }

    /// A service-account key in Google's JSON format. The error names what is wrong and never
    /// contains the private key.
    pub fn from_service_account_json(json: &str) -> Result<Self, AuthError> {
        let key = ServiceAccountKey::from_json(json, "inline JSON")?;
        Ok(Self::new(CredentialSource::ServiceAccountKey(Box::new(
            key,
        ))))
    }

    /// A service-account key file in Google's JSON format.
    pub fn from_service_account_file(path: &Path) -> Result<Self, AuthError> {
        let origin = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|source| AuthError::KeyFile {
            path: origin.clone(),
            source: Arc::new(source),
        })?;
        let key = ServiceAccountKey::from_json(&json, &origin)?;
        Ok(Self::new(CredentialSource::ServiceAccountKey(Box::new(
            key,
        ))))
    }

    /// The metadata server at `$GCE_METADATA_HOST` (`host[:port]`), else
    /// `metadata.google.internal`.
    pub fn metadata_server() -> Self {
        let host = std::env::var(METADATA_HOST_ENV).unwrap_or_default();
        if host.trim().is_empty() {
            Self::metadata_server_at(DEFAULT_METADATA_HOST)
        } else {
            Self::metadata_server_at(&host)
        }
    }

    /// The metadata server at `host[:port]` (a leading `http://` and trailing `/` are ignored).
    pub fn metadata_server_at(host: &str) -> Self {
        let host = host.trim();
        let host = host.strip_prefix("http://").unwrap_or(host);
        Self::new(CredentialSource::MetadataServer {
            host: host.trim_end_matches('/').to_owned(),
        })
    }

    /// A fixed token, sent as `Bearer TOKEN` (a value already starting with `Bearer ` is sent as
    /// is).
    pub fn fixed(token: impl Into<String>) -> Self {
        Self::new(CredentialSource::Fixed(token.into().trim().to_owned()))
    }

    /// No `Authorization` header.
    pub fn anonymous() -> Self {
        Self::new(CredentialSource::Anonymous)
    }

    /// Uses `client` for token requests instead of one built on first use. The returned handle
    /// starts with an empty cache; clones made before this call keep the old client and cache.
    pub fn with_http_client(self, client: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner::new(Arc::clone(&self.inner.source), Some(client))),
        }
    }

    /// The source behind this handle.
    pub fn source(&self) -> &CredentialSource {
        &self.inner.source
    }

    /// What kind of source, for logs (never the token): `service-account:EMAIL`,
    /// `metadata:HOST`, `fixed` or `anonymous`.
    pub fn describe(&self) -> String {
        match &*self.inner.source {
            CredentialSource::ServiceAccountKey(key) => {
                format!("service-account:{}", key.client_email)
            }
            CredentialSource::MetadataServer { host } => format!("metadata:{host}"),
            CredentialSource::Fixed(_) => "fixed".into(),
            CredentialSource::Anonymous => "anonymous".into(),
        }
    }

    /// How many token requests this handle and its clones have sent (retries included), for
    /// metrics and tests.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// The `Authorization` header value (`Bearer ...`); `None` for [`CredentialSource::Anonymous`].
    ///
    /// A cached token is used while it has more than max(60 s, 10 % of its lifetime) left;
    /// otherwise one caller fetches (retrying a retryable failure twice, after 100 ms and 400 ms)
    /// while concurrent callers wait and share its outcome. If a refresh fails while the previous
    /// token still has more than 10 s left, that token is returned.
    pub async fn authorization(&self) -> Result<Option<String>, AuthError> {
        match &*self.inner.source {
            CredentialSource::Anonymous => return Ok(None),
            CredentialSource::Fixed(token) => return Ok(Some(fixed_header(token))),
            CredentialSource::ServiceAccountKey(_) | CredentialSource::MetadataServer { .. } => {}
        }
        let observed_round = {
            let state = self.inner.state();
            if let Some(token) = &state.token
                && token.is_fresh(Instant::now())
            {
                return Ok(Some(token.header.clone()));
            }
            state.rounds
        };

        let _flight = self.inner.flight.lock().await;
        {
            let state = self.inner.state();
            let now = Instant::now();
            if let Some(token) = &state.token
                && token.is_fresh(now)
            {
                return Ok(Some(token.header.clone()));
            }
            if state.rounds != observed_round {
                // A fetch finished while we waited: its outcome is as good as our own would be.
                if let Some(token) = &state.token
                    && token.remaining(now) > Duration::ZERO
                {
                    return Ok(Some(token.header.clone()));
                }
                if let Some(err) = &state.last_error {
                    return Err(err.clone());
                }
            }
        }

        let started = Instant::now();
        let result = self.fetch_with_retries().await;
        let mut state = self.inner.state();
        state.rounds += 1;
        match result {
            Ok(fetched) => {
                tracing::debug!(
                    source = %self.describe(),
                    expires_in_secs = fetched.lifetime.as_secs(),
                    "fetched an access token"
                );
                let header = format!("Bearer {}", fetched.access_token);
                state.token = Some(CachedToken {
                    header: header.clone(),
                    expires_at: started + fetched.lifetime,
                    lifetime: fetched.lifetime,
                });
                state.last_error = None;
                Ok(Some(header))
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                match &state.token {
                    Some(token) if token.remaining(Instant::now()) > MIN_FALLBACK_REMAINING => {
                        tracing::warn!(
                            source = %self.describe(),
                            error = %err,
                            remaining_secs = token.remaining(Instant::now()).as_secs(),
                            "refreshing the access token failed; using the current one"
                        );
                        Ok(Some(token.header.clone()))
                    }
                    _ => Err(err),
                }
            }
        }
    }

    /// After a 401: drops the cached token if it is still `rejected` (the refused header value,
    /// or the bare token), so the next [`Credentials::authorization`] fetches a fresh one. A newer
    /// token, already fetched by another caller, is kept.
    pub fn invalidate(&self, rejected: &str) {
        let mut state = self.inner.state();
        let matches = state.token.as_ref().is_some_and(|token| {
            token.header == rejected || token.header.strip_prefix("Bearer ") == Some(rejected)
        });
        if matches {
            state.token = None;
            tracing::debug!(source = %self.describe(), "dropped a rejected access token");
        }
    }

    async fn fetch_with_retries(&self) -> Result<FetchedToken, AuthError> {
        let mut attempt = 0;
        loop {
            match self.fetch_once().await {
                Ok(fetched) => return Ok(fetched),
                Err(err) => match RETRY_BACKOFF.get(attempt) {
                    Some(delay) if err.retryable() => {
                        tracing::warn!(
                            source = %self.describe(),
                            error = %err,
                            retry_in_ms = delay.as_millis(),
                            "fetching an access token failed; retrying"
                        );
                        attempt += 1;
                        tokio::time::sleep(*delay).await;
                    }
                    _ => return Err(err),
                },
            }
        }
    }

    async fn fetch_once(&self) -> Result<FetchedToken, AuthError> {
        let client = self.http_client()?;
        let (url, request) = match &*self.inner.source {
            CredentialSource::ServiceAccountKey(key) => {
                let iat = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let assertion = key.assertion(COMPUTE_SCOPE, iat)?;
                let request = client.post(&key.token_uri).form(&[
                    ("grant_type", JWT_BEARER_GRANT_TYPE),
                    ("assertion", assertion.as_str()),
                ]);
                (key.token_uri.clone(), request)
            }
            CredentialSource::MetadataServer { host } => {
                let url = format!("http://{host}{METADATA_TOKEN_PATH}");
                let request = client.get(&url).header("Metadata-Flavor", "Google");
                (url, request)
            }
            CredentialSource::Fixed(_) | CredentialSource::Anonymous => {
                return Err(AuthError::HttpClient(
                    "this source fetches no tokens".into(),
                ));
            }
        };
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let response = request
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|err| transport_error(&url, err))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| transport_error(&url, err))?;
        parse_token_response(&url, status, &body)
    }

    fn http_client(&self) -> Result<reqwest::Client, AuthError> {
        if let Some(client) = self.inner.http.get() {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if matches!(&*self.inner.source, CredentialSource::MetadataServer { .. }) {
            // The metadata server is link-local: never through a proxy, as Google's libraries do.
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|err| AuthError::HttpClient(err.to_string()))?;
        Ok(self.inner.http.get_or_init(|| client).clone())
    }
}

fn fixed_header(token: &str) -> String {
    let has_scheme = token
        .get(..7)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("bearer "));
    if has_scheme {
        token.to_owned()
    } else {
        format!("Bearer {token}")
    }
}

mod token;
use token::{FetchedToken, parse_token_response};

#[cfg(test)]
#[path = "auth/tests.rs"]
mod tests;
