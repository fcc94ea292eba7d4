//! Service-account keys in Google's JSON format: parsed and checked field by field (errors name
//! the field, never the key), and the RS256 signer of the JWT-bearer assertion.

use super::*;

/// A parsed Google service-account key: identity, token endpoint and an RS256 signer. The private
/// key never leaves it; `Debug` shows only the identity.
pub struct ServiceAccountKey {
    pub(super) client_email: String,
    pub(super) token_uri: String,
    pub(super) private_key_id: Option<String>,
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
    pub(super) fn assertion(&self, scope: &str, iat: u64) -> Result<String, AuthError> {
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

pub(super) fn required_str<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, String> {
    match optional_str(fields, name)? {
        Some(value) if !value.trim().is_empty() => Ok(value),
        Some(_) => Err(format!("field '{name}' is empty")),
        None => Err(format!("missing field '{name}'")),
    }
}

pub(super) fn optional_str<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(format!("field '{name}' is not a string")),
    }
}

/// `"value"` when short and printable, else a placeholder (values may be anything).
pub(super) fn quote_short(value: &str) -> String {
    if value.len() <= 80 && !value.chars().any(char::is_control) {
        format!("{value:?}")
    } else {
        "(a long or non-printable value)".into()
    }
}

/// Checks the PEM framing of `private_key` without echoing any of it.
pub(super) fn check_private_key_pem(pem: &str) -> Result<(), String> {
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
pub(super) fn describe_gcp_auth_error(err: &gcp_auth::Error) -> String {
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
pub(super) fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
