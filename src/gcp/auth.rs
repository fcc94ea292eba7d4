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

// ---------------------------------------------------------------------------------------------
// Service-account keys
// ---------------------------------------------------------------------------------------------

/// A parsed Google service-account key: identity, token endpoint and an RS256 signer. The private
/// key never leaves it; `Debug` shows only the identity.
pub struct ServiceAccountKey {
    client_email: String,
    token_uri: String,
    private_key_id: Option<String>,
    project_id: Option<String>,
    account: gcp_auth::CustomServiceAccount,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parses a key in Google's JSON format (`type`, `client_email`, `private_key`, `token_uri`,
    /// ...). A missing `token_uri` means Google's endpoint. `origin` names the key in errors.
    pub fn from_json(json: &str, origin: &str) -> Result<Self, AuthError> {
        let invalid = |reason: String| AuthError::InvalidKey {
            origin: origin.to_owned(),
            reason,
        };
        // serde_json's syntax errors name a line and column, never the input.
        let value: Value = serde_json::from_str(json).map_err(|err| {
            invalid(format!(
                "not JSON (line {}, column {})",
                err.line(),
                err.column()
            ))
        })?;
        let Value::Object(fields) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        match optional_str(&fields, "type").map_err(&invalid)? {
            None => return Err(invalid("missing field 'type'".into())),
            Some("service_account") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "type is {}, not \"service_account\" (only service-account keys are supported)",
                    quote_short(other)
                )));
            }
        }
        let client_email = required_str(&fields, "client_email").map_err(&invalid)?;
        if !client_email.contains('@') || client_email.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "client_email {} is not an e-mail address",
                quote_short(client_email)
            )));
        }
        let private_key = required_str(&fields, "private_key").map_err(&invalid)?;
        check_private_key_pem(private_key).map_err(&invalid)?;
        let token_uri = optional_str(&fields, "token_uri")
            .map_err(&invalid)?
            .unwrap_or(GOOGLE_TOKEN_URI);
        match reqwest::Url::parse(token_uri) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return Err(invalid(format!(
                    "token_uri {} is not an http(s) URL",
                    quote_short(token_uri)
                )));
            }
        }
        let private_key_id = optional_str(&fields, "private_key_id")
            .map_err(&invalid)?
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        let project_id = optional_str(&fields, "project_id")
            .map_err(&invalid)?
            .map(str::to_owned);

        // gcp_auth parses the PKCS#8 key into its RS256 signer; give it only what it reads.
        let minimal = json!({
            "private_key": private_key,
            "client_email": client_email,
            "token_uri": token_uri,
        })
        .to_string();
        let account = gcp_auth::CustomServiceAccount::from_json(&minimal)
            .map_err(|err| invalid(describe_gcp_auth_error(&err)))?;
        Ok(Self {
            client_email: client_email.to_owned(),
            token_uri: token_uri.to_owned(),
            private_key_id,
            project_id,
            account,
        })
    }

    /// The service account's e-mail (`client_email`).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// Where the JWT assertion is posted (`token_uri`).
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// The key's `project_id`, if any.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// The signed JWT-bearer assertion for `scope`, issued at `iat` (Unix seconds).
    fn assertion(&self, scope: &str, iat: u64) -> Result<String, AuthError> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let (Some(kid), Some(object)) = (&self.private_key_id, header.as_object_mut()) {
            object.insert("kid".into(), Value::String(kid.clone()));
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let signature = self
            .account
            .signer()
            .sign(signing_input.as_bytes())
            .map_err(|err| AuthError::Signing {
                client_email: self.client_email.clone(),
                reason: describe_gcp_auth_error(&err),
            })?;
        Ok(format!("{signing_input}.{}", base64url(&signature)))
    }
}

fn required_str<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match optional_str(fields, name)? {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(format!("field '{name}' is empty")),
        None => Err(format!("missing field '{name}'")),
    }
}

fn optional_str<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(format!("field '{name}' is not a string")),
    }
}

/// `"value"` when short and printable, else a placeholder (values may be anything).
fn quote_short(value: &str) -> String {
    if value.len() <= 80 && !value.chars().any(char::is_control) {
        format!("{value:?}")
    } else {
        "(a long or non-printable value)".into()
    }
}

/// Checks the PEM framing of `private_key` without echoing any of it.
fn check_private_key_pem(pem: &str) -> Result<(), String> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
        return Err(
            "private_key is a PKCS#1 PEM key (BEGIN RSA PRIVATE KEY); Google keys are \
                    PKCS#8 (BEGIN PRIVATE KEY)"
                .into(),
        );
    }
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("private_key is an encrypted PKCS#8 key; it must be unencrypted".into());
    }
    match (pem.find(BEGIN), pem.find(END)) {
        (Some(begin), Some(end)) if begin < end => Ok(()),
        (None, _) => Err(format!(
            "private_key is not a PEM private key (no '{BEGIN}' line)"
        )),
        _ => Err(format!("private_key PEM is truncated (no '{END}' line)")),
    }
}

/// gcp_auth's error without its source chain: the sources may quote key material (base64
/// decoding errors, JSON values); the static context is enough to say what went wrong.
fn describe_gcp_auth_error(err: &gcp_auth::Error) -> String {
    match err {
        gcp_auth::Error::Other(context, _) | gcp_auth::Error::Json(context, _) => {
            format!("private_key is not a usable PKCS#8 RSA key ({context})")
        }
        gcp_auth::Error::Str(context) => {
            format!("private_key is not a usable PKCS#8 RSA key ({context})")
        }
        // Building its (unused) HTTPS client loads the system's CA certificates.
        gcp_auth::Error::Io(context, source) => {
            format!("gcp_auth could not initialise: {context}: {source}")
        }
        gcp_auth::Error::Http(context, _) => format!("gcp_auth: {context}"),
        _ => "gcp_auth refused the key".into(),
    }
}

/// RFC 4648 §5 base64url without padding, as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let symbol = |index: u32| char::from(ALPHABET[(index & 63) as usize]);
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = u32::from(chunk[0]);
        let b1 = chunk.get(1).copied().map_or(0, u32::from);
        let b2 = chunk.get(2).copied().map_or(0, u32::from);
        let n = (b0 << 16) | (b1 << 8) | b2;
        out.push(symbol(n >> 18));
        out.push(symbol(n >> 12));
        if chunk.len() > 1 {
            out.push(symbol(n >> 6));
        }
        if chunk.len() > 2 {
            out.push(symbol(n));
        }
    }
    out
}

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

// ---------------------------------------------------------------------------------------------
// Token responses
// ---------------------------------------------------------------------------------------------

/// A token from a successful answer.
struct FetchedToken {
    access_token: String,
    lifetime: Duration,
}

/// Reads a token endpoint's or metadata server's answer. Error answers keep the OAuth
/// `error`/`error_description` (or the start of their text); a success never puts any of its
/// content (it holds the token) into an error.
fn parse_token_response(
    url: &str,
    status: reqwest::StatusCode,
    body: &[u8],
) -> Result<FetchedToken, AuthError> {
    if !status.is_success() {
        let (error, description) = oauth_error(status, body);
        return Err(AuthError::TokenEndpoint {
            url: url.to_owned(),
            status: status.as_u16(),
            error,
            description,
        });
    }
    let invalid = |reason: &str| AuthError::InvalidResponse {
        url: url.to_owned(),
        status: status.as_u16(),
        reason: reason.to_owned(),
    };
    let value: Value =
        serde_json::from_slice(body).map_err(|_| invalid("the answer is not JSON"))?;
    let access_token = match value.get("access_token") {
        Some(Value::String(token)) if !token.is_empty() => token.clone(),
        Some(_) => return Err(invalid("access_token is empty or not a string")),
        None => return Err(invalid("no access_token in the answer")),
    };
    if !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "access_token has characters not allowed in a header",
        ));
    }
    if let Some(kind) = value.get("token_type").and_then(Value::as_str)
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(invalid("token_type is not Bearer"));
    }
    let lifetime = match value.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_TOKEN_LIFETIME,
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Duration::from_secs)
            .ok_or_else(|| invalid("expires_in is not a non-negative number"))?,
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| invalid("expires_in is not a number"))?,
        Some(_) => return Err(invalid("expires_in is not a number")),
    };
    Ok(FetchedToken {
        access_token,
        lifetime,
    })
}

/// `(error, description)` of an error answer: OAuth's `{"error", "error_description"}`,
/// Google's `{"error": {"status", "message"}}`, or the status' reason phrase and the start of
/// the text.
fn oauth_error(status: reqwest::StatusCode, body: &[u8]) -> (String, String) {
    let reason = status.canonical_reason().unwrap_or("error").to_owned();
    let text = String::from_utf8_lossy(body);
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        match value.get("error") {
            Some(Value::String(error)) => {
                let description = value
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                return (error.clone(), truncate(description));
            }
            Some(Value::Object(error)) => {
                let code = error
                    .get("status")
                    .and_then(Value::as_str)
                    .map_or(reason, str::to_owned);
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                return (code, truncate(message));
            }
            _ => {}
        }
    }
    (reason, truncate(text.trim()))
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    const SECRET: &str = "TOPSECRETKEYMATERIALabcdefghijklmnopqrstuvwxyz0123456789";

    fn key_json(private_key: &str) -> Value {
        json!({
            "type": "service_account",
            "project_id": "demo-project",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": private_key,
            "client_email": "operator@demo-project.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "token_uri": "http://127.0.0.1:1/token",
        })
    }

    fn pem_with_secret() -> String {
        format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n{SECRET}\n-----END PRIVATE KEY-----\n")
    }

    fn key_error(json: &str) -> String {
        let err = Credentials::from_service_account_json(json).unwrap_err();
        assert!(matches!(err, AuthError::InvalidKey { .. }), "{err:?}");
        assert!(!err.retryable());
        let text = format!("{err} {err:?}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains("TOPSECRET"), "{text}");
        text
    }

    fn without(mut value: Value, field: &str) -> String {
        value.as_object_mut().unwrap().remove(field);
        value.to_string()
    }

    fn with(mut value: Value, field: &str, new: Value) -> String {
        value[field] = new;
        value.to_string()
    }

    #[test]
    fn freshness_rule() {
        let h = Duration::from_secs(3600);
        assert_eq!(refresh_margin(h), Duration::from_secs(360));
        assert!(is_fresh(Duration::from_secs(3599), h));
        assert!(is_fresh(Duration::from_secs(361), h));
        assert!(!is_fresh(Duration::from_secs(360), h));
        assert!(!is_fresh(Duration::ZERO, h));

        // Short lifetimes: the 60 s floor wins.
        let five_min = Duration::from_secs(300);
        assert_eq!(refresh_margin(five_min), Duration::from_secs(60));
        assert!(is_fresh(Duration::from_secs(61), five_min));
        assert!(!is_fresh(Duration::from_secs(60), five_min));

        // A token living 60 s or less is never fresh: every call fetches.
        for secs in [0, 1, 2, 30, 60] {
            let lifetime = Duration::from_secs(secs);
            assert!(!is_fresh(lifetime, lifetime), "{secs}");
        }
        assert!(is_fresh(Duration::from_secs(61), Duration::from_secs(61)));

        let now = Instant::now();
        let token = CachedToken {
            header: "Bearer x".into(),
            expires_at: now + h,
            lifetime: h,
        };
        assert!(token.is_fresh(now));
        assert!(!token.is_fresh(now + Duration::from_secs(3300)));
        assert_eq!(
            token.remaining(now + Duration::from_secs(4000)),
            Duration::ZERO
        );
    }

    #[test]
    fn describe_and_debug_never_show_tokens() {
        let fixed = Credentials::fixed("ya29.secret-token");
        assert_eq!(fixed.describe(), "fixed");
        assert!(!format!("{fixed:?}").contains("secret-token"));
        assert!(!format!("{:?}", fixed.source()).contains("secret-token"));
        assert_eq!(Credentials::anonymous().describe(), "anonymous");
        assert_eq!(
            Credentials::metadata_server_at("127.0.0.1:8085").describe(),
            "metadata:127.0.0.1:8085"
        );
        assert_eq!(
            Credentials::metadata_server_at(" http://169.254.169.254/ ").describe(),
            "metadata:169.254.169.254"
        );
        assert_eq!(
            format!("{:?}", Credentials::metadata_server_at("h:1")),
            "Credentials { source: \"metadata:h:1\", .. }"
        );
    }

    #[tokio::test]
    async fn fixed_and_anonymous_need_no_fetch() {
        let fixed = Credentials::fixed(" tok ");
        assert_eq!(
            fixed.authorization().await.unwrap().as_deref(),
            Some("Bearer tok")
        );
        fixed.invalidate("Bearer tok");
        assert_eq!(
            fixed.authorization().await.unwrap().as_deref(),
            Some("Bearer tok")
        );
        let already = Credentials::fixed("Bearer abc");
        assert_eq!(
            already.authorization().await.unwrap().as_deref(),
            Some("Bearer abc")
        );
        let anonymous = Credentials::anonymous();
        assert_eq!(anonymous.authorization().await.unwrap(), None);
        assert_eq!(fixed.fetches() + anonymous.fetches(), 0);
    }

    #[test]
    fn key_errors_name_the_problem_without_the_key() {
        let pem = pem_with_secret();
        let good = key_json(&pem);

        let text = key_error("{not json");
        assert!(text.contains("not JSON"), "{text}");
        assert!(key_error("[1]").contains("not a JSON object"));
        for field in ["client_email", "private_key", "type"] {
            let text = key_error(&without(good.clone(), field));
            assert!(text.contains(&format!("missing field '{field}'")), "{text}");
        }
        let text = key_error(&with(good.clone(), "type", json!("authorized_user")));
        assert!(text.contains("\"authorized_user\""), "{text}");
        let text = key_error(&with(good.clone(), "client_email", json!(42)));
        assert!(
            text.contains("field 'client_email' is not a string"),
            "{text}"
        );
        let text = key_error(&with(good.clone(), "client_email", json!("nobody")));
        assert!(text.contains("not an e-mail address"), "{text}");
        let text = key_error(&with(good.clone(), "token_uri", json!("ftp://x/token")));
        assert!(text.contains("token_uri"), "{text}");

        // A PEM-framed key that is not a key: gcp_auth refuses it, and its base64 is not echoed.
        let text = key_error(&good.to_string());
        assert!(text.contains("PKCS#8"), "{text}");

        // A private key without PEM framing, PKCS#1, truncated.
        let text = key_error(&with(good.clone(), "private_key", json!(SECRET)));
        assert!(text.contains("not a PEM private key"), "{text}");
        let pkcs1 =
            format!("-----BEGIN RSA PRIVATE KEY-----\n{SECRET}\n-----END RSA PRIVATE KEY-----\n");
        let text = key_error(&with(good.clone(), "private_key", json!(pkcs1)));
        assert!(text.contains("PKCS#1"), "{text}");
        let truncated = format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n");
        let text = key_error(&with(good.clone(), "private_key", json!(truncated)));
        assert!(text.contains("truncated"), "{text}");

        // The secret in an unexpected value type is not echoed either.
        let text = key_error(&with(good, "private_key", json!([SECRET])));
        assert!(
            text.contains("field 'private_key' is not a string"),
            "{text}"
        );
    }

    #[test]
    fn key_file_errors_name_the_path() {
        let err =
            Credentials::from_service_account_file(Path::new("/nonexistent/key.json")).unwrap_err();
        assert!(matches!(err, AuthError::KeyFile { .. }));
        assert!(err.to_string().contains("/nonexistent/key.json"), "{err}");
        assert!(!err.retryable());
    }

    #[test]
    fn base64url_vectors() {
        // RFC 4648 §10, in the URL-safe alphabet without padding.
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), expected);
        }
        assert_eq!(base64url(&[0xfb, 0xff, 0xbf]), "-_-_");
        assert_eq!(base64url(b"{\"alg\":\"RS256\"}"), "eyJhbGciOiJSUzI1NiJ9");
    }

    #[test]
    fn token_responses() {
        let url = "http://127.0.0.1:1/token";
        let ok = parse_token_response(
            url,
            StatusCode::OK,
            br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(ok.access_token, "ya29.abc");
        assert_eq!(ok.lifetime, Duration::from_secs(3599));
        let ok = parse_token_response(
            url,
            StatusCode::OK,
            br#"{"access_token":"t","expires_in":"120"}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(ok.lifetime, Duration::from_secs(120));
        let ok = parse_token_response(url, StatusCode::OK, br#"{"access_token":"t"}"#)
            .ok()
            .unwrap();
        assert_eq!(ok.lifetime, DEFAULT_TOKEN_LIFETIME);

        // Bad successes never echo the body (it may hold a token).
        for body in [
            &br#"{"access_token":"ya29.SECRET bad","expires_in":1}"#[..],
            br#"{"access_token":"ya29.SECRET","expires_in":"soon"}"#,
            br#"{"access_token":"ya29.SECRET","token_type":"MAC"}"#,
            br#"{"token":"ya29.SECRET"}"#,
            b"ya29.SECRET",
        ] {
            let Err(err) = parse_token_response(url, StatusCode::OK, body) else {
                panic!("accepted {}", String::from_utf8_lossy(body));
            };
            assert!(matches!(err, AuthError::InvalidResponse { .. }), "{err:?}");
            assert!(!format!("{err} {err:?}").contains("SECRET"));
            assert!(!err.retryable());
        }
    }

    #[test]
    fn error_answers_and_retryability() {
        let url = "http://127.0.0.1:1/token";
        let Err(err) = parse_token_response(
            url,
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        ) else {
            panic!("accepted an error");
        };
        assert_eq!(
            err.to_string(),
            "http://127.0.0.1:1/token refused the token request: HTTP 400 invalid_grant: Invalid JWT Signature."
        );
        assert!(!err.retryable());

        let Err(err) = parse_token_response(
            url,
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":503,"message":"backend down","status":"UNAVAILABLE"}}"#,
        ) else {
            panic!("accepted an error");
        };
        assert!(err.retryable());
        assert!(
            err.to_string()
                .contains("HTTP 503 UNAVAILABLE: backend down"),
            "{err}"
        );

        let Err(err) = parse_token_response(
            url,
            StatusCode::FORBIDDEN,
            b"Missing Metadata-Flavor:Google header.\n",
        ) else {
            panic!("accepted an error");
        };
        assert!(!err.retryable());
        assert!(
            err.to_string()
                .ends_with("HTTP 403 Forbidden: Missing Metadata-Flavor:Google header."),
            "{err}"
        );

        let long = "x".repeat(5000);
        let Err(err) = parse_token_response(url, StatusCode::BAD_GATEWAY, long.as_bytes()) else {
            panic!("accepted an error");
        };
        assert!(err.retryable());
        assert!(err.to_string().len() < 500);

        for status in [429, 408, 500, 502] {
            let err = AuthError::TokenEndpoint {
                url: url.into(),
                status,
                error: String::new(),
                description: String::new(),
            };
            assert!(err.retryable(), "{status}");
        }
        for status in [400, 401, 403, 404] {
            let err = AuthError::TokenEndpoint {
                url: url.into(),
                status,
                error: String::new(),
                description: String::new(),
            };
            assert!(!err.retryable(), "{status}");
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let text = "é".repeat(400);
        let cut = truncate(&text);
        assert!(cut.ends_with("..."));
        assert!(cut.len() <= MAX_ERROR_TEXT + 3);
    }

    #[test]
    fn credentials_are_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Credentials>();
        fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<AuthError>();
    }
}
