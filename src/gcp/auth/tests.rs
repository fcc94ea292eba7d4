//! Credentials: key parsing, token freshness and caching, token answers and refusals, and that
//! no secret reaches a Debug output or an error.

use super::key::base64url;
use super::token::truncate;
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
