//! Token responses: the token endpoint's and the metadata server's answers, parsed; OAuth
//! errors reduced to what may be logged.

use super::*;

/// A token from a successful answer.
pub(super) struct FetchedToken {
    pub(super) access_token: String,
    pub(super) lifetime: Duration,
}

/// Reads a token endpoint's or metadata server's answer. Error answers keep the OAuth
/// `error`/`error_description` (or the start of their text); a success never puts any of its
/// content (it holds the token) into an error.
pub(super) fn parse_token_response(
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
pub(super) fn oauth_error(status: reqwest::StatusCode, body: &[u8]) -> (String, String) {
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

pub(super) fn truncate(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
