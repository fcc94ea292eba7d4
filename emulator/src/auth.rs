//! Google-style authentication for the emulator: service-account key generation, the RFC 7523
//! JWT-bearer grant that Google's `/token` endpoint performs for service accounts, and a store of
//! issued access tokens (also used for metadata-server tokens).
//!
//! Nothing here speaks HTTP: the server maps [`AuthError`] to an OAuth error response
//! ([`AuthError::http_status`], [`AuthError::oauth_error_body`]) and [`TokenError`] to Compute's
//! v1 error envelope ([`TokenError::http_status`], [`TokenError::google_error_body`]).
//! Access tokens are secrets: no `Debug` output or error message in this module contains one.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use rand::RngCore;
use rand::rngs::OsRng;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::signature::Verifier;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Sha256;

/// The only `grant_type` the token endpoint accepts (RFC 7523 JWT bearer).
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's current token endpoint, the `token_uri` of freshly downloaded keys.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Google's older token endpoint, still found in old key files and libraries.
pub const GOOGLE_LEGACY_TOKEN_URI: &str = "https://www.googleapis.com/oauth2/v4/token";
/// Longest accepted `exp - iat` of an assertion, in seconds (Google: "short-lived token (60 minutes)").
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Clock skew tolerated on `iat` and `exp`, in seconds, both ways.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// [`TokenStore::issue_or_reuse`] reuses a cached token only if it has more than this many seconds left.
pub const REUSE_MIN_REMAINING_SECS: u64 = 300;
/// Prefix of every access token the emulator issues.
pub const ACCESS_TOKEN_PREFIX: &str = "ya29.emu.";

const RSA_BITS: usize = 2048;
const MAX_ASSERTION_LEN: usize = 16 * 1024;
const PURGE_EVERY_ISSUES: usize = 4096;
/// How many of the most recently issued tokens [`TokenStore::issued`] remembers.
pub const TOKEN_HISTORY: usize = 1024;

const MSG_MISSING_CREDENTIAL: &str = "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
const MSG_INVALID_CREDENTIAL: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";
const MSG_BAD_SIGNATURE: &str = "Invalid JWT Signature.";
const MSG_BAD_TIMEFRAME: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.";

/// Base64url decoder that accepts the segment with or without `=` padding (some clients pad).
const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why key generation or a token request (JWT-bearer grant) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `grant_type` was not the JWT-bearer grant.
    #[error("unsupported grant_type {0:?}")]
    UnsupportedGrantType(String),
    /// A required form parameter (e.g. `assertion`) was absent.
    #[error("missing required parameter {0}")]
    MissingParameter(String),
    /// The assertion is not a well-formed JWT (parts, base64url, JSON, claim types).
    #[error("malformed assertion: {0}")]
    Malformed(String),
    /// The JWT header names an algorithm other than RS256 (e.g. `none`, `HS256`).
    #[error("unsupported JWT alg {0:?}; only RS256 is accepted")]
    UnsupportedAlgorithm(String),
    /// `iss` is not a service account known to the emulator.
    #[error("unknown service account {0:?}")]
    UnknownAccount(String),
    /// The RS256 signature does not verify against the account's public key.
    #[error("JWT signature does not verify")]
    InvalidSignature,
    /// The account's configured public key could not be parsed (an emulator configuration problem).
    #[error("service account {email:?} has an unusable public key: {reason}")]
    BadAccountKey {
        /// The account's e-mail.
        email: String,
        /// What the PEM parser said.
        reason: String,
    },
    /// `aud` is missing or not one of the accepted token URIs.
    #[error("JWT aud {got:?} is not an accepted token URI")]
    WrongAudience {
        /// The audience found in the assertion (empty if absent).
        got: String,
        /// The audience Google would name as "the right audience".
        expected: String,
    },
    /// `iat`/`exp` missing, too far apart, expired or in the future.
    #[error("JWT timeframe rejected: {0}")]
    BadTimeframe(String),
    /// No (or an empty) `scope` claim; the emulator only issues access tokens, never ID tokens.
    #[error("missing scope")]
    MissingScope,
    /// RSA key generation or PEM encoding failed, or the requested identity is unusable.
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
}

impl AuthError {
    /// HTTP status of the token endpoint's error response (400 for grant errors, 500 for emulator faults).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadAccountKey { .. } | Self::KeyGeneration(_) => 500,
            _ => 400,
        }
    }

    /// The OAuth 2 error body Google's token endpoint returns for this error.
    pub fn oauth_error_body(&self) -> Value {
        let (error, description) = match self {
            Self::UnsupportedGrantType(got) => (
                "unsupported_grant_type",
                format!("Invalid grant_type: {got}"),
            ),
            Self::MissingParameter(name) => (
                "invalid_request",
                format!("Missing required parameter: {name}"),
            ),
            Self::Malformed(reason) => ("invalid_request", format!("Invalid JWT: {reason}")),
            Self::UnsupportedAlgorithm(_) | Self::InvalidSignature => {
                ("invalid_grant", MSG_BAD_SIGNATURE.to_owned())
            }
            Self::UnknownAccount(_) => (
                "invalid_grant",
                "Invalid grant: account not found".to_owned(),
            ),
            Self::WrongAudience { expected, .. } => (
                "invalid_grant",
                format!("Invalid JWT: Failed audience check. The right audience is {expected}"),
            ),
            Self::BadTimeframe(_) => ("invalid_grant", MSG_BAD_TIMEFRAME.to_owned()),
            Self::MissingScope => (
                "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.".to_owned(),
            ),
            Self::BadAccountKey { .. } | Self::KeyGeneration(_) => {
                ("internal_failure", self.to_string())
            }
        };
        json!({ "error": error, "error_description": description })
    }
}

/// Why a request's `Authorization` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No (or an empty) `Authorization` header.
    #[error("missing Authorization header")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed Authorization header (expected \"Bearer <token>\")")]
    Malformed,
    /// The token was never issued by this emulator (or has been purged).
    #[error("unknown access token")]
    Unknown,
    /// The token was issued but its lifetime is over.
    #[error("expired access token")]
    Expired,
}

impl TokenError {
    /// HTTP status Compute answers with (always 401).
    pub fn http_status(&self) -> u16 {
        401
    }

    /// Compute's v1 error envelope for this failure (status `UNAUTHENTICATED`).
    pub fn google_error_body(&self) -> Value {
        let (message, reason) = match self {
            Self::Missing => (MSG_MISSING_CREDENTIAL, "required"),
            Self::Malformed | Self::Unknown | Self::Expired => {
                (MSG_INVALID_CREDENTIAL, "authError")
            }
        };
        json!({
            "error": {
                "code": 401,
                "message": message,
                "errors": [{
                    "message": message,
                    "domain": "global",
                    "reason": reason,
                    "location": "Authorization",
                    "locationType": "header",
                }],
                "status": "UNAUTHENTICATED",
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Service-account key generation
// ---------------------------------------------------------------------------------------------

/// A freshly generated service-account key: the JSON key file plus what the world file needs.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// The key file exactly as Google emits it (contains the private key).
    pub key_json: String,
    /// The service account's e-mail (`client_email`).
    pub client_email: String,
    /// The SPKI public key, `-----BEGIN PUBLIC KEY-----` PEM.
    pub public_key_pem: String,
    /// 40 lowercase hex characters, the key file's `private_key_id` (JWT `kid`).
    pub private_key_id: String,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("key_json", &"<redacted: contains the private key>")
            .field("client_email", &self.client_email)
            .field("public_key_pem", &self.public_key_pem)
            .field("private_key_id", &self.private_key_id)
            .finish()
    }
}

/// Field order and names of Google's JSON key file.
#[derive(Serialize)]
struct KeyFile<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    project_id: &'a str,
    private_key_id: &'a str,
    private_key: &'a str,
    client_email: &'a str,
    client_id: &'a str,
    auth_uri: &'a str,
    token_uri: &'a str,
    auth_provider_x509_cert_url: &'a str,
    client_x509_cert_url: &'a str,
    universe_domain: &'a str,
}

/// Generates an RSA-2048 service-account key in Google's JSON key format.
pub fn generate_service_account_key(
    client_email: &str,
    project_id: &str,
    token_uri: &str,
) -> Result<GeneratedKey, AuthError> {
    if !is_plausible_email(client_email) {
        return Err(AuthError::KeyGeneration(format!(
            "client_email {client_email:?} is not an e-mail address"
        )));
    }
    let mut rng = OsRng;
    let private = RsaPrivateKey::new(&mut rng, RSA_BITS)
        .map_err(|e| AuthError::KeyGeneration(format!("RSA key generation: {e}")))?;
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| AuthError::KeyGeneration(format!("PKCS#8 encoding: {e}")))?;
    let public_key_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| AuthError::KeyGeneration(format!("SPKI encoding: {e}")))?;

    let mut id_bytes = [0u8; 20];
    rng.fill_bytes(&mut id_bytes);
    let private_key_id = hex(&id_bytes);
    let client_id = random_client_id(&mut rng);
    let client_x509_cert_url = format!(
        "https://www.googleapis.com/robot/v1/metadata/x509/{}",
        percent_encode(client_email)
    );

    let file = KeyFile {
        kind: "service_account",
        project_id,
        private_key_id: &private_key_id,
        private_key: private_pem.as_str(),
        client_email,
        client_id: &client_id,
        auth_uri: "https://accounts.google.com/o/oauth2/auth",
        token_uri,
        auth_provider_x509_cert_url: "https://www.googleapis.com/oauth2/v1/certs",
        client_x509_cert_url: &client_x509_cert_url,
        universe_domain: "googleapis.com",
    };
    let mut key_json = serde_json::to_string_pretty(&file)
        .map_err(|e| AuthError::KeyGeneration(format!("JSON encoding: {e}")))?;
    key_json.push('\n');

    Ok(GeneratedKey {
        key_json,
        client_email: client_email.to_owned(),
        public_key_pem,
        private_key_id,
    })
}

/// The YAML list item for the world file's `serviceAccounts:` list (two-space indented, ready to paste).
pub fn world_entry_yaml(key: &GeneratedKey) -> String {
    let mut out = format!(
        "  - clientEmail: {}\n    publicKeyPem: |\n",
        yaml_scalar(&key.client_email)
    );
    for line in key.public_key_pem.lines() {
        out.push_str("      ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn is_plausible_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// 21 decimal digits, leading `1` like Google's numeric service-account ids.
fn random_client_id(rng: &mut impl RngCore) -> String {
    let mut out = String::with_capacity(21);
    out.push('1');
    while out.len() < 21 {
        // Rejection sampling keeps the digits uniform.
        let b = (rng.next_u32() & 0xff) as u8;
        if b < 250 {
            out.push(char::from(b'0' + b % 10));
        }
    }
    out
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A YAML plain scalar when that is unambiguous, else a JSON (= YAML double-quoted) string.
fn yaml_scalar(s: &str) -> String {
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-' | '+'));
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// JWT-bearer grant
// ---------------------------------------------------------------------------------------------

/// A service account the emulator knows, as listed in the world file's `serviceAccounts:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountKey {
    /// The account's e-mail, matched against the JWT's `iss`.
    pub client_email: String,
    /// The account's RSA public key, SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM.
    pub public_key_pem: String,
}

/// What a valid assertion grants: who, which scopes, and until when the assertion itself is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The service account (`iss`).
    pub client_email: String,
    /// The requested scopes, in the assertion's order.
    pub scopes: Vec<String>,
    /// The assertion's `exp` claim, unix seconds.
    pub expires_at: u64,
}

/// Checks the `grant_type` form field of a token request.
pub fn check_grant_type(grant_type: &str) -> Result<(), AuthError> {
    if grant_type == JWT_BEARER_GRANT_TYPE {
        Ok(())
    } else {
        Err(AuthError::UnsupportedGrantType(grant_type.to_owned()))
    }
}

/// Parses an RSA public key from SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM.
pub fn parse_public_key_pem(pem: &str) -> Result<RsaPublicKey, String> {
    // Tolerate indentation and CRLF from hand-edited YAML.
    let mut normalized = String::with_capacity(pem.len());
    for line in pem.lines().map(str::trim).filter(|l| !l.is_empty()) {
        normalized.push_str(line);
        normalized.push('\n');
    }
    if normalized.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        RsaPublicKey::from_pkcs1_pem(&normalized).map_err(|e| format!("PKCS#1 PEM: {e}"))
    } else {
        RsaPublicKey::from_public_key_pem(&normalized).map_err(|e| format!("SPKI PEM: {e}"))
    }
}

/// Verifies an RFC 7523 JWT-bearer assertion the way Google's token endpoint does for service accounts.
pub fn verify_assertion(
    assertion: &str,
    accounts: &[ServiceAccountKey],
    accepted_audiences: &[String],
    now_unix: u64,
) -> Result<VerifiedAssertion, AuthError> {
    let malformed = |reason: &str| AuthError::Malformed(reason.to_owned());
    let assertion = assertion.trim();
    if assertion.is_empty() {
        return Err(AuthError::MissingParameter("assertion".to_owned()));
    }
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(malformed("assertion is too large"));
    }
    let mut parts = assertion.split('.');
    let (header_b64, claims_b64, signature_b64) =
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(c), Some(s), None) => (h, c, s),
            _ => return Err(malformed("a JWT has exactly three dot-separated parts")),
        };

    let header = decode_json_segment(header_b64, "header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("header has no alg"))?;
    if alg != "RS256" {
        return Err(AuthError::UnsupportedAlgorithm(alg.to_owned()));
    }
    let claims = decode_json_segment(claims_b64, "claim set")?;
    let signature = B64URL_LENIENT
        .decode(signature_b64)
        .map_err(|_| malformed("signature is not base64url"))?;

    // `kid` is informational only: the account is always found by `iss`.
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("missing iss claim"))?;
    let account = accounts
        .iter()
        .find(|a| a.client_email == iss)
        .ok_or_else(|| AuthError::UnknownAccount(iss.to_owned()))?;
    let public_key = parse_public_key_pem(&account.public_key_pem).map_err(|reason| {
        AuthError::BadAccountKey {
            email: account.client_email.clone(),
            reason,
        }
    })?;

    // The signature covers the segments exactly as sent (padding included, if any).
    let signing_input_len = header_b64.len() + 1 + claims_b64.len();
    let signing_input = &assertion.as_bytes()[..signing_input_len];
    let signature =
        Signature::try_from(signature.as_slice()).map_err(|_| AuthError::InvalidSignature)?;
    VerifyingKey::<Sha256>::new(public_key)
        .verify(signing_input, &signature)
        .map_err(|_| AuthError::InvalidSignature)?;

    check_audience(&claims, accepted_audiences)?;
    let expires_at = check_timeframe(&claims, now_unix)?;
    let scopes = match claims.get("scope") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(_) => return Err(malformed("scope claim is not a string")),
    };
    if scopes.is_empty() {
        return Err(AuthError::MissingScope);
    }

    Ok(VerifiedAssertion {
        client_email: account.client_email.clone(),
        scopes,
        expires_at,
    })
}

fn decode_json_segment(segment: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = B64URL_LENIENT
        .decode(segment)
        .map_err(|_| AuthError::Malformed(format!("{what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed(format!("{what} is not a JSON object"))),
    }
}

fn check_audience(claims: &Map<String, Value>, accepted: &[String]) -> Result<(), AuthError> {
    let accepted_has = |aud: &str| accepted.iter().any(|a| a == aud);
    let (ok, got) = match claims.get("aud") {
        Some(Value::String(aud)) => (accepted_has(aud), aud.clone()),
        // RFC 7519 allows an array; Google's libraries always send a string.
        Some(Value::Array(auds)) => {
            let strs: Vec<&str> = auds.iter().filter_map(Value::as_str).collect();
            (strs.iter().any(|a| accepted_has(a)), strs.join(" "))
        }
        _ => (false, String::new()),
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::WrongAudience {
            got,
            expected: accepted.first().cloned().unwrap_or_default(),
        })
    }
}

fn claim_time(claims: &Map<String, Value>, name: &str) -> Result<u64, AuthError> {
    let value = claims.get(name);
    let secs = value.and_then(Value::as_u64).or_else(|| {
        value
            .and_then(Value::as_f64)
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
            .map(|f| f as u64)
    });
    secs.ok_or_else(|| {
        AuthError::BadTimeframe(format!(
            "{name} claim is missing or not a non-negative number"
        ))
    })
}

fn check_timeframe(claims: &Map<String, Value>, now: u64) -> Result<u64, AuthError> {
    let iat = claim_time(claims, "iat")?;
    let exp = claim_time(claims, "exp")?;
    let bad = |reason: &str| Err(AuthError::BadTimeframe(reason.to_owned()));
    if exp <= iat {
        return bad("exp is not after iat");
    }
    if exp - iat > MAX_ASSERTION_LIFETIME_SECS {
        return bad("exp - iat exceeds 3600 seconds");
    }
    if iat > now.saturating_add(CLOCK_SKEW_SECS) {
        return bad("iat is in the future");
    }
    if exp.saturating_add(CLOCK_SKEW_SECS) <= now {
        return bad("assertion has expired");
    }
    Ok(exp)
}

// ---------------------------------------------------------------------------------------------
// Issued access tokens
// ---------------------------------------------------------------------------------------------

/// An access token as the token endpoint and the metadata server return it.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct IssuedToken {
    /// The bearer token, `ya29.emu.` followed by 43 base64url characters.
    pub access_token: String,
    /// Seconds of life left.
    pub expires_in: u64,
    /// Always `Bearer`.
    pub token_type: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("token_type", &self.token_type)
            .finish()
    }
}

struct TokenEntry {
    principal: Arc<str>,
    expires_at: u64,
}

/// One token as the store issued it, for the admin API (`GET /_emulator/tokens`): harnesses
/// learn every token a client was handed, e.g. to prove that none of them leaks into its logs.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedRecord {
    /// The bearer token.
    pub access_token: String,
    /// Who it was issued to (a service account's e-mail).
    pub principal: String,
    /// Unix seconds when it was issued.
    pub issued_at: u64,
    /// Unix seconds when it stops being accepted.
    pub expires_at: u64,
}

impl fmt::Debug for IssuedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedRecord")
            .field("access_token", &"<redacted>")
            .field("principal", &self.principal)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Default)]
struct TokenTable {
    tokens: HashMap<String, TokenEntry>,
    /// The most recently issued token of each principal (also interns principal names).
    latest: HashMap<Arc<str>, String>,
    issued_since_purge: usize,
    /// The last [`TOKEN_HISTORY`] tokens issued, oldest first; purging does not touch it.
    history: VecDeque<(String, Arc<str>, u64, u64)>,
}

impl TokenTable {
    fn issue(&mut self, principal: &str, now: u64, lifetime_secs: u64) -> IssuedToken {
        self.issued_since_purge += 1;
        if self.issued_since_purge >= PURGE_EVERY_ISSUES {
            self.purge(now);
        }
        let principal: Arc<str> = match self.latest.get_key_value(principal) {
            Some((interned, _)) => Arc::clone(interned),
            None => Arc::from(principal),
        };
        let access_token = new_access_token();
        self.tokens.insert(
            access_token.clone(),
            TokenEntry {
                principal: Arc::clone(&principal),
                expires_at: now.saturating_add(lifetime_secs),
            },
        );
        if self.history.len() >= TOKEN_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((
            access_token.clone(),
            Arc::clone(&principal),
            now,
            now.saturating_add(lifetime_secs),
        ));
        self.latest.insert(principal, access_token.clone());
        IssuedToken {
            access_token,
            expires_in: lifetime_secs,
            token_type: "Bearer".to_owned(),
        }
    }

    fn purge(&mut self, now: u64) {
        self.tokens.retain(|_, e| e.expires_at > now);
        let tokens = &self.tokens;
        self.latest.retain(|_, t| tokens.contains_key(t));
        self.issued_since_purge = 0;
    }
}

/// Thread-safe store of issued access tokens (token → principal, expiry); share it behind an `Arc`.
pub struct TokenStore {
    lifetime_secs: u64,
    table: RwLock<TokenTable>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("lifetime_secs", &self.lifetime_secs)
            .field("tokens", &self.len())
            .finish()
    }
}

impl TokenStore {
    /// A store whose tokens live `lifetime` (whole seconds, at least one).
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime_secs: lifetime.as_secs().max(1),
            table: RwLock::new(TokenTable::default()),
        }
    }

    /// Issues a new token for `principal`, valid for the store's lifetime from `now_unix`.
    pub fn issue(&self, principal: &str, now_unix: u64) -> IssuedToken {
        self.write().issue(principal, now_unix, self.lifetime_secs)
    }

    /// Returns `principal`'s latest token if it has more than 300 s left (with its remaining life), else issues one.
    pub fn issue_or_reuse(&self, principal: &str, now_unix: u64) -> IssuedToken {
        let mut table = self.write();
        let reusable = table.latest.get(principal).and_then(|token| {
            table
                .tokens
                .get(token)
                .filter(|e| e.expires_at > now_unix.saturating_add(REUSE_MIN_REMAINING_SECS))
                .map(|e| IssuedToken {
                    access_token: token.clone(),
                    expires_in: e.expires_at - now_unix,
                    token_type: "Bearer".to_owned(),
                })
        });
        match reusable {
            Some(token) => token,
            None => table.issue(principal, now_unix, self.lifetime_secs),
        }
    }

    /// Checks an `Authorization` header (`Bearer <token>`, scheme case-insensitive) and returns the principal.
    pub fn validate(
        &self,
        authorization_header: Option<&str>,
        now_unix: u64,
    ) -> Result<String, TokenError> {
        let header = authorization_header
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or(TokenError::Missing)?;
        let (scheme, token) = header
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or(TokenError::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer")
            || token.is_empty()
            || token.contains(|c: char| c.is_ascii_whitespace())
        {
            return Err(TokenError::Malformed);
        }
        self.validate_token(token, now_unix)
    }

    /// Checks a bare token (e.g. from the `access_token` query parameter) and returns the principal.
    pub fn validate_token(&self, token: &str, now_unix: u64) -> Result<String, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let table = self.read();
        let entry = table.tokens.get(token).ok_or(TokenError::Unknown)?;
        if entry.expires_at <= now_unix {
            return Err(TokenError::Expired);
        }
        Ok(entry.principal.to_string())
    }

    /// Forgets every token whose lifetime is over at `now_unix` (also done every 4096 issues).
    pub fn purge_expired(&self, now_unix: u64) {
        self.write().purge(now_unix);
    }

    /// The last [`TOKEN_HISTORY`] tokens issued (by `/token` or the metadata server), oldest
    /// first, expired and purged ones included. A token handed out again by
    /// [`TokenStore::issue_or_reuse`] appears once, when it was issued.
    pub fn issued(&self) -> Vec<IssuedRecord> {
        self.read()
            .history
            .iter()
            .map(|(token, principal, issued_at, expires_at)| IssuedRecord {
                access_token: token.clone(),
                principal: principal.to_string(),
                issued_at: *issued_at,
                expires_at: *expires_at,
            })
            .collect()
    }

    /// Number of tokens held (including expired ones not yet purged).
    pub fn len(&self) -> usize {
        self.read().tokens.len()
    }

    /// Whether the store holds no tokens at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> RwLockReadGuard<'_, TokenTable> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that matters.
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, TokenTable> {
        self.table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn new_access_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut token = String::with_capacity(ACCESS_TOKEN_PREFIX.len() + 43);
    token.push_str(ACCESS_TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut token);
    token
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE;
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs1v15::SigningKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use std::sync::OnceLock;

    const EMAIL: &str = "operator@demo-project.iam.gserviceaccount.com";
    const PROJECT: &str = "demo-project";
    const LOCAL_AUD: &str = "http://127.0.0.1:8080/token";
    const NOW: u64 = 1_750_000_000;
    const SCOPE: &str = "https://www.googleapis.com/auth/compute";

    struct Fixture {
        generated: GeneratedKey,
        private: RsaPrivateKey,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let generated = generate_service_account_key(EMAIL, PROJECT, GOOGLE_TOKEN_URI).unwrap();
            let file: Value = serde_json::from_str(&generated.key_json).unwrap();
            let private =
                RsaPrivateKey::from_pkcs8_pem(file["private_key"].as_str().unwrap()).unwrap();
            Fixture { generated, private }
        })
    }

    fn other_private_key() -> &'static RsaPrivateKey {
        static K: OnceLock<RsaPrivateKey> = OnceLock::new();
        K.get_or_init(|| RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
    }

    fn accounts() -> Vec<ServiceAccountKey> {
        vec![
            ServiceAccountKey {
                client_email: "someone-else@demo-project.iam.gserviceaccount.com".into(),
                public_key_pem: other_private_key()
                    .to_public_key()
                    .to_public_key_pem(LineEnding::LF)
                    .unwrap(),
            },
            ServiceAccountKey {
                client_email: EMAIL.into(),
                public_key_pem: fixture().generated.public_key_pem.clone(),
            },
        ]
    }

    fn audiences() -> Vec<String> {
        vec![
            LOCAL_AUD.into(),
            GOOGLE_TOKEN_URI.into(),
            GOOGLE_LEGACY_TOKEN_URI.into(),
        ]
    }

    fn header() -> Value {
        json!({"alg": "RS256", "typ": "JWT", "kid": fixture().generated.private_key_id})
    }

    fn claims() -> Value {
        json!({"iss": EMAIL, "scope": SCOPE, "aud": GOOGLE_TOKEN_URI, "iat": NOW, "exp": NOW + 3600})
    }

    /// Builds a JWT the way Google's client libraries do (unpadded base64url, RS256).
    fn sign_with(private: &RsaPrivateKey, header: &Value, claims: &Value) -> String {
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = SigningKey::<Sha256>::new(private.clone()).sign(jwt.as_bytes());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig.to_vec()));
        jwt
    }

    fn sign(claims: &Value) -> String {
        sign_with(&fixture().private, &header(), claims)
    }

    fn verify(jwt: &str) -> Result<VerifiedAssertion, AuthError> {
        verify_assertion(jwt, &accounts(), &audiences(), NOW)
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        base.as_object_mut().unwrap().remove(key);
        base
    }

    // --- key generation ---

    #[test]
    fn key_json_has_googles_shape() {
        let g = &fixture().generated;
        assert!(g.key_json.ends_with("}\n"));
        let file: Value = serde_json::from_str(&g.key_json).unwrap();
        let obj = file.as_object().unwrap();
        assert_eq!(obj.len(), 11);
        assert_eq!(file["type"], "service_account");
        assert_eq!(file["project_id"], PROJECT);
        assert_eq!(file["client_email"], EMAIL);
        assert_eq!(file["token_uri"], GOOGLE_TOKEN_URI);
        assert_eq!(
            file["auth_uri"],
            "https://accounts.google.com/o/oauth2/auth"
        );
        assert_eq!(
            file["auth_provider_x509_cert_url"],
            "https://www.googleapis.com/oauth2/v1/certs"
        );
        assert_eq!(
            file["client_x509_cert_url"],
            "https://www.googleapis.com/robot/v1/metadata/x509/operator%40demo-project.iam.gserviceaccount.com"
        );
        assert_eq!(file["universe_domain"], "googleapis.com");

        let id = file["private_key_id"].as_str().unwrap();
        assert_eq!(id, g.private_key_id);
        assert_eq!(id.len(), 40);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );

        let client_id = file["client_id"].as_str().unwrap();
        assert_eq!(client_id.len(), 21);
        assert!(client_id.bytes().all(|b| b.is_ascii_digit()));

        let pem = file["private_key"].as_str().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("\n-----END PRIVATE KEY-----\n"));
        assert!(g.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(g.public_key_pem.ends_with("\n-----END PUBLIC KEY-----\n"));
        assert_eq!(
            RsaPrivateKey::from_pkcs8_pem(pem).unwrap().to_public_key(),
            parse_public_key_pem(&g.public_key_pem).unwrap()
        );

        // Google's field order.
        let order = [
            "\"type\"",
            "\"project_id\"",
            "\"private_key_id\"",
            "\"private_key\"",
            "\"client_email\"",
            "\"client_id\"",
            "\"auth_uri\"",
            "\"token_uri\"",
            "\"auth_provider_x509_cert_url\"",
            "\"client_x509_cert_url\"",
            "\"universe_domain\"",
        ];
        let positions: Vec<usize> = order.iter().map(|k| g.key_json.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }

    #[test]
    fn generated_key_debug_hides_private_key() {
        let dbg = format!("{:?}", fixture().generated);
        assert!(!dbg.contains("PRIVATE KEY"));
        assert!(dbg.contains(EMAIL));
    }

    #[test]
    fn key_generation_rejects_non_email() {
        let err = generate_service_account_key("not-an-email", PROJECT, GOOGLE_TOKEN_URI);
        assert!(matches!(err, Err(AuthError::KeyGeneration(_))));
    }

    #[test]
    fn world_entry_yaml_parses_back() {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct World {
            service_accounts: Vec<ServiceAccountKey>,
        }
        let g = &fixture().generated;
        let entry = world_entry_yaml(g);
        assert!(entry.starts_with(&format!("  - clientEmail: {EMAIL}\n    publicKeyPem: |\n")));
        assert!(entry.contains("\n      -----BEGIN PUBLIC KEY-----\n"));
        let world: World = serde_yaml::from_str(&format!("serviceAccounts:\n{entry}")).unwrap();
        assert_eq!(world.service_accounts.len(), 1);
        assert_eq!(world.service_accounts[0].client_email, EMAIL);
        assert_eq!(world.service_accounts[0].public_key_pem, g.public_key_pem);

        // Two pasted entries form a two-item list.
        let twice: World =
            serde_yaml::from_str(&format!("serviceAccounts:\n{entry}{entry}")).unwrap();
        assert_eq!(twice.service_accounts.len(), 2);

        // An e-mail that would not be a safe plain scalar is quoted.
        let odd = GeneratedKey {
            client_email: "a b#c@x: y".into(),
            ..g.clone()
        };
        let world: World =
            serde_yaml::from_str(&format!("serviceAccounts:\n{}", world_entry_yaml(&odd))).unwrap();
        assert_eq!(world.service_accounts[0].client_email, "a b#c@x: y");
    }

    // --- JWT-bearer grant: acceptance ---

    #[test]
    fn round_trip_verifies() {
        let v = verify(&sign(&claims())).unwrap();
        assert_eq!(
            v,
            VerifiedAssertion {
                client_email: EMAIL.into(),
                scopes: vec![SCOPE.into()],
                expires_at: NOW + 3600,
            }
        );
    }

    #[test]
    fn accepts_every_configured_audience_and_multiple_scopes() {
        for aud in audiences() {
            let c = with(
                with(claims(), "aud", json!(aud)),
                "scope",
                json!(format!(
                    "{SCOPE}  https://www.googleapis.com/auth/cloud-platform"
                )),
            );
            let v = verify(&sign(&c)).unwrap();
            assert_eq!(
                v.scopes,
                vec![SCOPE, "https://www.googleapis.com/auth/cloud-platform"]
            );
        }
        // RFC 7519 array form.
        let c = with(claims(), "aud", json!(["https://example.com", LOCAL_AUD]));
        verify(&sign(&c)).unwrap();
    }

    #[test]
    fn accepts_padded_segments_like_gcp_auth() {
        // gcp_auth encodes every segment with padded URL_SAFE, iat as i64 and `"sub": null`.
        let header = r#"{"alg":"RS256","typ":"JWT"}"#;
        let c = json!({"iss": EMAIL, "aud": LOCAL_AUD, "exp": NOW + 3595, "iat": NOW,
                       "sub": null, "scope": SCOPE});
        let mut jwt = URL_SAFE.encode(header);
        jwt.push('.');
        let mut payload = c.to_string();
        if payload.len().is_multiple_of(3) {
            payload.push(' '); // still valid JSON; forces padding on the claim segment
        }
        jwt.push_str(&URL_SAFE.encode(&payload));
        assert!(jwt.ends_with('='));
        let sig = SigningKey::<Sha256>::new(fixture().private.clone()).sign(jwt.as_bytes());
        jwt.push('.');
        jwt.push_str(&URL_SAFE.encode(sig.to_vec()));
        assert_eq!(verify(&jwt).unwrap().expires_at, NOW + 3595);
    }

    #[test]
    fn unknown_kid_and_missing_kid_still_use_iss() {
        let h = json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef0123456789abcdef01234567"});
        verify(&sign_with(&fixture().private, &h, &claims())).unwrap();
        let h = json!({"alg": "RS256"});
        verify(&sign_with(&fixture().private, &h, &claims())).unwrap();
    }

    #[test]
    fn accepts_pkcs1_public_key_and_indented_pem() {
        let pkcs1 = fixture()
            .private
            .to_public_key()
            .to_pkcs1_pem(LineEnding::CRLF)
            .unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        let indented: String = pkcs1.lines().map(|l| format!("    {l}\n")).collect();
        for pem in [pkcs1, indented] {
            let accounts = vec![ServiceAccountKey {
                client_email: EMAIL.into(),
                public_key_pem: pem,
            }];
            verify_assertion(&sign(&claims()), &accounts, &audiences(), NOW).unwrap();
        }
    }

    #[test]
    fn clock_skew_is_tolerated_within_60_seconds() {
        // iat slightly in the future.
        let c = with(
            with(claims(), "iat", json!(NOW + 60)),
            "exp",
            json!(NOW + 600),
        );
        verify(&sign(&c)).unwrap();
        // exp slightly in the past.
        let c = with(
            with(claims(), "iat", json!(NOW - 1000)),
            "exp",
            json!(NOW - 59),
        );
        verify(&sign(&c)).unwrap();
        // Exactly one hour is fine.
        let c = with(
            with(claims(), "iat", json!(NOW - 10)),
            "exp",
            json!(NOW + 3590),
        );
        verify(&sign(&c)).unwrap();
    }

    // --- JWT-bearer grant: refusals ---

    #[test]
    fn refuses_signature_by_another_key() {
        let jwt = sign_with(other_private_key(), &header(), &claims());
        assert_eq!(verify(&jwt), Err(AuthError::InvalidSignature));
    }

    #[test]
    fn refuses_tampered_payload() {
        let jwt = sign(&claims());
        let parts: Vec<&str> = jwt.split('.').collect();
        let forged = with(
            claims(),
            "scope",
            json!("https://www.googleapis.com/auth/cloud-platform"),
        );
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged.to_string()),
            parts[2]
        );
        assert_eq!(verify(&tampered), Err(AuthError::InvalidSignature));
        // A truncated signature is refused too.
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
        assert_eq!(verify(&truncated), Err(AuthError::InvalidSignature));
    }

    #[test]
    fn refuses_unknown_iss() {
        let c = with(
            claims(),
            "iss",
            json!("intruder@evil.iam.gserviceaccount.com"),
        );
        let err = verify(&sign(&c)).unwrap_err();
        assert_eq!(
            err,
            AuthError::UnknownAccount("intruder@evil.iam.gserviceaccount.com".into())
        );
        assert_eq!(
            err.oauth_error_body(),
            json!({"error": "invalid_grant", "error_description": "Invalid grant: account not found"})
        );
    }

    #[test]
    fn refuses_wrong_or_missing_aud() {
        for c in [
            with(claims(), "aud", json!("https://evil.example/token")),
            with(claims(), "aud", json!(["https://evil.example/token"])),
            without(claims(), "aud"),
        ] {
            let err = verify(&sign(&c)).unwrap_err();
            assert!(matches!(err, AuthError::WrongAudience { .. }), "{err:?}");
            assert_eq!(err.http_status(), 400);
            assert_eq!(
                err.oauth_error_body(),
                json!({"error": "invalid_grant", "error_description":
                    format!("Invalid JWT: Failed audience check. The right audience is {LOCAL_AUD}")})
            );
        }
    }

    #[test]
    fn refuses_bad_timeframes() {
        let cases = [
            // expired (beyond skew)
            with(
                with(claims(), "iat", json!(NOW - 3000)),
                "exp",
                json!(NOW - 60),
            ),
            // longer than an hour
            with(claims(), "exp", json!(NOW + 3601)),
            // iat in the future (beyond skew)
            with(
                with(claims(), "iat", json!(NOW + 61)),
                "exp",
                json!(NOW + 600),
            ),
            // exp before iat
            with(claims(), "exp", json!(NOW - 1)),
            // missing / non-numeric
            without(claims(), "iat"),
            without(claims(), "exp"),
            with(claims(), "exp", json!("soon")),
            with(claims(), "iat", json!(-5)),
        ];
        for c in cases {
            let err = verify(&sign(&c)).unwrap_err();
            assert!(matches!(err, AuthError::BadTimeframe(_)), "{c}: {err:?}");
            assert_eq!(err.http_status(), 400);
            assert_eq!(
                err.oauth_error_body(),
                json!({"error": "invalid_grant", "error_description": MSG_BAD_TIMEFRAME})
            );
        }
    }

    #[test]
    fn refuses_missing_scope() {
        for c in [
            without(claims(), "scope"),
            with(claims(), "scope", json!("   ")),
            // ID-token requests (target_audience) are not supported by a Compute emulator.
            with(
                without(claims(), "scope"),
                "target_audience",
                json!("https://x.example"),
            ),
        ] {
            let err = verify(&sign(&c)).unwrap_err();
            assert_eq!(err, AuthError::MissingScope);
            assert_eq!(err.to_string(), "missing scope");
            assert_eq!(err.oauth_error_body()["error"], "invalid_scope");
        }
        let err = verify(&sign(&with(claims(), "scope", json!(["a"])))).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)));
    }

    #[test]
    fn refuses_alg_none_and_hs256() {
        let c = claims();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        assert_eq!(
            verify(&none),
            Err(AuthError::UnsupportedAlgorithm("none".into()))
        );
        // HS256 "signed" with the public key as the HMAC secret (the classic confusion attack);
        // the signature bytes do not matter, the alg alone is refused.
        let hs = sign_with(
            &fixture().private,
            &json!({"alg": "HS256", "typ": "JWT"}),
            &c,
        );
        let err = verify(&hs).unwrap_err();
        assert_eq!(err, AuthError::UnsupportedAlgorithm("HS256".into()));
        assert_eq!(
            err.oauth_error_body(),
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        );
        let no_alg = sign_with(&fixture().private, &json!({"typ": "JWT"}), &c);
        assert!(matches!(verify(&no_alg), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn refuses_malformed_input() {
        let good = sign(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let cases = [
            "onlyone".to_owned(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{good}.extra"),
            format!("{}.{}.{}", "!!not base64!!", parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], "a*b", parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], "sig with spaces"),
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("{not json"),
                parts[1],
                parts[2]
            ),
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode("[1,2]"),
                parts[2]
            ),
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode("\"str\""),
                parts[2]
            ),
            "a".repeat(MAX_ASSERTION_LEN + 1),
        ];
        for jwt in cases {
            let err = verify(&jwt).unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{jwt}: {err:?}");
            assert_eq!(err.http_status(), 400);
            assert_eq!(err.oauth_error_body()["error"], "invalid_request");
        }
        // Missing iss is malformed too.
        let err = verify(&sign(&without(claims(), "iss"))).unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)));
        // An empty assertion is a missing parameter.
        let err = verify("  ").unwrap_err();
        assert_eq!(err, AuthError::MissingParameter("assertion".into()));
        assert_eq!(
            err.oauth_error_body(),
            json!({"error": "invalid_request", "error_description": "Missing required parameter: assertion"})
        );
    }

    #[test]
    fn broken_account_key_is_an_emulator_fault() {
        let accounts = vec![ServiceAccountKey {
            client_email: EMAIL.into(),
            public_key_pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        }];
        let err = verify_assertion(&sign(&claims()), &accounts, &audiences(), NOW).unwrap_err();
        assert!(matches!(err, AuthError::BadAccountKey { .. }), "{err:?}");
        assert_eq!(err.http_status(), 500);
    }

    #[test]
    fn grant_type_check() {
        check_grant_type("urn:ietf:params:oauth:grant-type:jwt-bearer").unwrap();
        for bad in [
            "",
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:JWT-BEARER",
        ] {
            let err = check_grant_type(bad).unwrap_err();
            assert_eq!(err.http_status(), 400);
            assert_eq!(
                err.oauth_error_body(),
                json!({"error": "unsupported_grant_type", "error_description": format!("Invalid grant_type: {bad}")})
            );
        }
    }

    #[test]
    fn signature_error_body() {
        let err = AuthError::InvalidSignature;
        assert_eq!(err.http_status(), 400);
        assert_eq!(
            err.oauth_error_body(),
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        );
    }

    // --- token store ---

    fn store() -> TokenStore {
        TokenStore::new(Duration::from_secs(3599))
    }

    #[test]
    fn issue_and_validate() {
        let s = store();
        let t = s.issue(EMAIL, NOW);
        assert!(t.access_token.starts_with("ya29.emu."));
        let rest = &t.access_token["ya29.emu.".len()..];
        assert!(rest.len() >= 43);
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(t.expires_in, 3599);
        assert_eq!(t.token_type, "Bearer");
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"access_token": t.access_token, "expires_in": 3599, "token_type": "Bearer"})
        );

        let header = format!("Bearer {}", t.access_token);
        assert_eq!(s.validate(Some(&header), NOW).unwrap(), EMAIL);
        assert_eq!(s.validate(Some(&header), NOW + 3598).unwrap(), EMAIL);
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let h = format!("{scheme}  {} ", t.access_token);
            assert_eq!(s.validate(Some(&h), NOW).unwrap(), EMAIL);
        }
        assert_eq!(s.validate_token(&t.access_token, NOW).unwrap(), EMAIL);

        // Tokens are distinct and tied to their principal.
        let other = s.issue("default@demo-project.iam.gserviceaccount.com", NOW);
        assert_ne!(other.access_token, t.access_token);
        assert_eq!(
            s.validate_token(&other.access_token, NOW).unwrap(),
            "default@demo-project.iam.gserviceaccount.com"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn expired_unknown_missing_and_malformed() {
        let s = store();
        let t = s.issue(EMAIL, NOW);
        let header = format!("Bearer {}", t.access_token);
        assert_eq!(
            s.validate(Some(&header), NOW + 3599),
            Err(TokenError::Expired)
        );
        assert_eq!(
            s.validate(Some("Bearer ya29.emu.nope"), NOW),
            Err(TokenError::Unknown)
        );
        assert_eq!(s.validate(None, NOW), Err(TokenError::Missing));
        assert_eq!(s.validate(Some("   "), NOW), Err(TokenError::Missing));
        for bad in [
            format!("Basic {}", t.access_token),
            format!("Token {}", t.access_token),
            t.access_token.clone(),
            "Bearer".to_owned(),
            "Bearer    ".to_owned(),
            format!("Bearer {} extra", t.access_token),
        ] {
            assert_eq!(
                s.validate(Some(&bad), NOW),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }

        s.purge_expired(NOW + 3599);
        assert!(s.is_empty());
        assert_eq!(
            s.validate(Some(&header), NOW + 3599),
            Err(TokenError::Unknown)
        );
    }

    #[test]
    fn issue_or_reuse_reuses_then_renews() {
        let s = store();
        let first = s.issue_or_reuse(EMAIL, NOW);
        assert_eq!(first.expires_in, 3599);

        // Reused with its remaining life.
        let again = s.issue_or_reuse(EMAIL, NOW + 1632);
        assert_eq!(again.access_token, first.access_token);
        assert_eq!(again.expires_in, 1967);
        assert_eq!(s.len(), 1);

        // 301 s left: still reused.
        let late = s.issue_or_reuse(EMAIL, NOW + 3599 - 301);
        assert_eq!(late.access_token, first.access_token);
        assert_eq!(late.expires_in, 301);

        // 300 s left: renewed; the old token stays valid until it expires.
        let renewed = s.issue_or_reuse(EMAIL, NOW + 3599 - 300);
        assert_ne!(renewed.access_token, first.access_token);
        assert_eq!(renewed.expires_in, 3599);
        assert_eq!(
            s.validate_token(&first.access_token, NOW + 3598).unwrap(),
            EMAIL
        );

        // Another principal gets its own token.
        let other = s.issue_or_reuse("x@y", NOW + 3599 - 300);
        assert_ne!(other.access_token, renewed.access_token);

        // After a purge the renewed one is still reused.
        s.purge_expired(NOW + 3599);
        let after = s.issue_or_reuse(EMAIL, NOW + 3599);
        assert_eq!(after.access_token, renewed.access_token);
        assert_eq!(after.expires_in, 3599 - 300);
    }

    #[test]
    fn token_error_bodies() {
        let missing = TokenError::Missing.google_error_body();
        assert_eq!(
            missing,
            json!({"error": {
                "code": 401,
                "message": MSG_MISSING_CREDENTIAL,
                "errors": [{
                    "message": MSG_MISSING_CREDENTIAL,
                    "domain": "global",
                    "reason": "required",
                    "location": "Authorization",
                    "locationType": "header",
                }],
                "status": "UNAUTHENTICATED",
            }})
        );
        for err in [
            TokenError::Malformed,
            TokenError::Unknown,
            TokenError::Expired,
        ] {
            assert_eq!(err.http_status(), 401);
            assert_eq!(
                err.google_error_body(),
                json!({"error": {
                    "code": 401,
                    "message": MSG_INVALID_CREDENTIAL,
                    "errors": [{
                        "message": MSG_INVALID_CREDENTIAL,
                        "domain": "global",
                        "reason": "authError",
                        "location": "Authorization",
                        "locationType": "header",
                    }],
                    "status": "UNAUTHENTICATED",
                }})
            );
        }
    }

    #[test]
    fn tokens_never_appear_in_debug_or_errors() {
        let s = store();
        let t = s.issue(EMAIL, NOW);
        assert!(!format!("{t:?}").contains(&t.access_token));
        assert!(!format!("{s:?}").contains(&t.access_token));
        let err = s.validate(Some(&format!("Bearer {}", t.access_token)), NOW + 99_999);
        let err = err.unwrap_err();
        assert!(!format!("{err:?} {err}").contains(&t.access_token));
        assert!(
            !err.google_error_body()
                .to_string()
                .contains(&t.access_token)
        );
    }

    #[test]
    fn issued_tokens_are_listed_until_the_history_is_full() {
        let s = store();
        assert!(s.issued().is_empty());
        let first = s.issue(EMAIL, NOW);
        let reused = s.issue_or_reuse(EMAIL, NOW + 10);
        assert_eq!(reused.access_token, first.access_token);
        let other = s.issue("default@demo-project.iam.gserviceaccount.com", NOW + 20);
        let listed = s.issued();
        assert_eq!(
            listed,
            [
                IssuedRecord {
                    access_token: first.access_token.clone(),
                    principal: EMAIL.into(),
                    issued_at: NOW,
                    expires_at: NOW + 3599,
                },
                IssuedRecord {
                    access_token: other.access_token.clone(),
                    principal: "default@demo-project.iam.gserviceaccount.com".into(),
                    issued_at: NOW + 20,
                    expires_at: NOW + 20 + 3599,
                },
            ],
            "a reused token is listed once"
        );
        assert_eq!(
            serde_json::to_value(&listed[0]).unwrap(),
            json!({"accessToken": first.access_token, "principal": EMAIL,
                   "issuedAt": NOW, "expiresAt": NOW + 3599})
        );
        assert!(!format!("{listed:?}").contains(&first.access_token));

        // Purged (expired) tokens stay listed; the oldest go once the history is full.
        s.purge_expired(NOW + 99_999);
        assert!(s.is_empty());
        assert_eq!(s.issued().len(), 2);
        for _ in 0..TOKEN_HISTORY - 1 {
            s.issue(EMAIL, NOW + 100_000);
        }
        let listed = s.issued();
        assert_eq!(listed.len(), TOKEN_HISTORY);
        assert_eq!(listed[0].access_token, other.access_token);
        assert!(listed.iter().all(|r| r.access_token != first.access_token));
    }

    #[test]
    fn many_tokens_stay_cheap_and_get_purged() {
        let s = Arc::new(TokenStore::new(Duration::from_secs(60)));
        let start = std::time::Instant::now();
        let mut kept = Vec::new();
        for i in 0..100_000u64 {
            let t = s.issue("bulk@demo-project.iam.gserviceaccount.com", NOW);
            if i % 10_000 == 0 {
                kept.push(t.access_token);
            }
        }
        assert_eq!(s.len(), 100_000);
        for t in &kept {
            assert!(s.validate_token(t, NOW + 59).is_ok());
        }
        // Issuing after expiry purges automatically within PURGE_EVERY_ISSUES issues.
        for _ in 0..PURGE_EVERY_ISSUES {
            s.issue("bulk@demo-project.iam.gserviceaccount.com", NOW + 60);
        }
        assert!(s.len() <= PURGE_EVERY_ISSUES);
        assert!(start.elapsed() < Duration::from_secs(30));

        // Shared across threads.
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let t = s.issue(&format!("t{i}@x"), NOW + 60);
                    s.validate_token(&t.access_token, NOW + 61).unwrap()
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), format!("t{i}@x"));
        }
    }
}
