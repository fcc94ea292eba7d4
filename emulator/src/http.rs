//! The HTTP surface: Compute API v1 paths, the batch endpoint, /token, the metadata server's
//! token path, and the admin API under /_emulator/.

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::auth::{self, ServiceAccountKey};
use crate::error::ApiError;
use crate::faults::Faults;
use crate::filter::Filter;
use crate::model::{Quotas, RateLimits};
use crate::multipart::{self, InnerResponse};
use crate::service::{AuthMode, Call, Emulator, Reply, unix_now};

/// Most inner calls one batch may carry.
pub const MAX_BATCH_CALLS: usize = 1000;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct App {
    pub emulator: Arc<Emulator>,
    /// `http://ADDR`, the emulator's own base URL (for the token audience).
    pub base_url: String,
}

/// The router: everything goes through one handler that dispatches on the path.
pub fn router(app: App) -> Router {
    Router::new().fallback(handle).with_state(app)
}

fn json_response(status: u16, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

/// A 401 in Google's shape, with the challenge RFC 6750 §3 asks for.
fn unauthorized(status: u16, body: String) -> Box<Response> {
    let mut response = json_response(status, body);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
    );
    Box::new(response)
}

/// Applies `X-HTTP-Method-Override` (Google's clients send a long GET as a POST with the query
/// as a form body): returns the effective method and the extra query pairs.
fn method_override(
    method: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<(String, Vec<(String, String)>)> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let overridden = header("x-http-method-override")?.to_ascii_uppercase();
    let form = header("content-type")
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let extra = if form {
        parse_form(&String::from_utf8_lossy(body))
    } else {
        Vec::new()
    };
    Some((overridden, extra))
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

fn api_error(err: &ApiError) -> Response {
    json_response(err.code, err.body().to_string())
}

/// A response whose body fails after the headers: the client sees the connection cut.
fn reset_response() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected connection reset",
        ))
    });
    let mut response = Response::new(Body::from_stream(failing));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
    response
}

/// Decodes `%XX` and `+` of a form or query string into pairs.
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    fn decode(part: &str) -> String {
        let bytes = part.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

fn gunzip_if_needed(headers: &HeaderMap, body: Bytes) -> Result<Bytes, ApiError> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(64 * 1024 * 1024)
        .read_to_end(&mut out)
        .map_err(|err| {
            ApiError::invalid(format!("The gzip request body could not be decoded: {err}"))
        })?;
    Ok(Bytes::from(out))
}

async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let emulator = &app.emulator;
    let path = uri.path().to_string();
    let query = parse_form(uri.query().unwrap_or_default());
    // The admin API is not Google's: harnesses polling it must not show in the counters.
    if let Some(rest) = path.strip_prefix("/_emulator/") {
        let body = match gunzip_if_needed(&headers, body) {
            Ok(body) => body,
            Err(err) => return api_error(&err),
        };
        return admin(emulator, &method, rest, &query, &body);
    }
    let _in_flight = emulator.stats.request();
    let body = match gunzip_if_needed(&headers, body) {
        Ok(body) => body,
        Err(err) => return api_error(&err),
    };
    if path == "/token" && method == Method::POST {
        return token(&app, &headers, &body);
    }
    if let Some(rest) = path.strip_prefix("/computeMetadata/v1") {
        return metadata(emulator, &headers, rest);
    }

    let principal = match authenticate(emulator, &headers, &query) {
        Ok(principal) => principal,
        Err(response) => return *response,
    };
    let reset = emulator.draw_reset();
    let response = if path == "/batch/compute/v1" || path == "/batch/compute/v1/" {
        if method != Method::POST {
            return api_error(&ApiError::method_not_allowed(method.as_str(), &path));
        }
        batch(emulator, &headers, &body, &principal).await
    } else if let Some(rest) = path.strip_prefix("/compute/v1/") {
        let (method, query, body) =
            match method_override(method.as_str(), &header_pairs(&headers), &body) {
                Some((overridden, extra)) => (
                    overridden,
                    query.into_iter().chain(extra).collect(),
                    Vec::new(),
                ),
                None => (method.as_str().to_string(), query, body.to_vec()),
            };
        let reply = emulator
            .call(Call {
                method,
                path: rest.to_string(),
                query,
                body,
                principal,
            })
            .await;
        tokio::time::sleep(reply.delay).await;
        json_response(reply.status, reply.body)
    } else {
        api_error(&ApiError::no_such_method(method.as_str(), &path))
    };
    if reset {
        emulator
            .stats
            .resets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return reset_response();
    }
    response
}

fn authenticate(
    emulator: &Emulator,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<String, Box<Response>> {
    let header_value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let query_token = query
        .iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.as_str());
    let fallback = emulator.world().service_accounts.first().map_or_else(
        || "user@emulator.local".to_string(),
        |sa| sa.client_email.clone(),
    );
    match emulator.settings.auth {
        AuthMode::None => Ok(fallback),
        AuthMode::Any => {
            let bearer = header_value
                .and_then(|h| h.split_once(' '))
                .filter(|(scheme, token)| {
                    scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()
                });
            if bearer.is_some() || query_token.is_some_and(|t| !t.is_empty()) {
                Ok(fallback)
            } else {
                let err = auth::TokenError::Missing;
                emulator.stats.error("required");
                Err(unauthorized(
                    err.http_status(),
                    err.google_error_body().to_string(),
                ))
            }
        }
        AuthMode::Token => {
            let now = unix_now();
            let result = match (header_value, query_token) {
                (None, Some(token)) => emulator.tokens.validate_token(token, now),
                (header, _) => emulator.tokens.validate(header, now),
            };
            result.map_err(|err| {
                emulator.stats.error("authError");
                unauthorized(err.http_status(), err.google_error_body().to_string())
            })
        }
    }
}

async fn batch(
    emulator: &Arc<Emulator>,
    headers: &HeaderMap,
    body: &Bytes,
    principal: &str,
) -> Response {
    emulator
        .stats
        .batch_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parts = match multipart::parse_requests(content_type, body) {
        Ok(parts) => parts,
        Err(err) => {
            return api_error(&ApiError::invalid(format!(
                "Failed to parse batch request: {err}"
            )));
        }
    };
    if parts.len() > MAX_BATCH_CALLS {
        return api_error(&ApiError::invalid(format!(
            "A batch request may contain at most {MAX_BATCH_CALLS} calls; this one has {}.",
            parts.len()
        )));
    }
    let calls = parts.into_iter().map(|part| {
        let emulator = Arc::clone(emulator);
        let principal = principal.to_string();
        async move {
            let (path, query) = part
                .path_and_query
                .split_once('?')
                .unwrap_or((part.path_and_query.as_str(), ""));
            let reply = match path.strip_prefix("/compute/v1/") {
                Some(rest) => {
                    emulator
                        .call(Call {
                            method: part.method.clone(),
                            path: rest.to_string(),
                            query: parse_form(query),
                            body: part.body.clone(),
                            principal,
                        })
                        .await
                }
                None => {
                    let err = ApiError::no_such_method(&part.method, path);
                    Reply {
                        status: err.code,
                        body: err.body().to_string(),
                        delay: Duration::ZERO,
                    }
                }
            };
            (part.content_id, reply)
        }
    });
    let mut replies = futures::future::join_all(calls).await;
    emulator.shuffle(&mut replies);
    let slowest = replies
        .iter()
        .map(|(_, r)| r.delay)
        .max()
        .unwrap_or_default();
    let overhead = emulator.settings.timing.batch_overhead;
    tokio::time::sleep(slowest + overhead).await;
    let responses: Vec<InnerResponse> = replies
        .into_iter()
        .map(|(content_id, reply)| InnerResponse {
            content_id,
            status: reply.status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=UTF-8".into(),
            )],
            body: reply.body.into_bytes(),
        })
        .collect();
    let boundary = multipart::new_boundary();
    let mut response = Response::new(Body::from(multipart::encode_responses(
        &boundary, &responses,
    )));
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn token(app: &App, headers: &HeaderMap, body: &Bytes) -> Response {
    let emulator = &app.emulator;
    let form = parse_form(&String::from_utf8_lossy(body));
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let oauth_error =
        |err: auth::AuthError| json_response(err.http_status(), err.oauth_error_body().to_string());
    if let Err(err) = auth::check_grant_type(field("grant_type").unwrap_or_default()) {
        return oauth_error(err);
    }
    let accounts: Vec<ServiceAccountKey> = emulator
        .world()
        .service_accounts
        .iter()
        .map(|sa| ServiceAccountKey {
            client_email: sa.client_email.clone(),
            public_key_pem: sa.public_key_pem.clone(),
        })
        .collect();
    let mut audiences = vec![format!("{}/token", app.base_url)];
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        audiences.push(format!("http://{host}/token"));
    }
    audiences.push(auth::GOOGLE_TOKEN_URI.to_string());
    audiences.push(auth::GOOGLE_LEGACY_TOKEN_URI.to_string());
    let now = unix_now();
    match auth::verify_assertion(
        field("assertion").unwrap_or_default(),
        &accounts,
        &audiences,
        now,
    ) {
        Ok(verified) => {
            let issued = emulator.tokens.issue(&verified.client_email, now);
            json_response(200, serde_json::to_string(&issued).unwrap_or_default())
        }
        Err(err) => oauth_error(err),
    }
}

fn metadata(emulator: &Emulator, headers: &HeaderMap, rest: &str) -> Response {
    let flavor = headers.get("metadata-flavor").and_then(|v| v.to_str().ok());
    if !flavor.is_some_and(|f| f.eq_ignore_ascii_case("google")) {
        let mut response = Response::new(Body::from("Missing Metadata-Flavor:Google header.\n"));
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let principal = emulator.world().service_accounts.first().map_or_else(
        || "default@emulator.local".to_string(),
        |sa| sa.client_email.clone(),
    );
    let text = |body: String| {
        let mut response = Response::new(Body::from(body));
        response
            .headers_mut()
            .insert("metadata-flavor", HeaderValue::from_static("Google"));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/text"),
        );
        response
    };
    match rest.trim_end_matches('/') {
        "" => text(String::new()),
        "/instance/service-accounts/default/token" => {
            let issued = emulator.tokens.issue_or_reuse(&principal, unix_now());
            let mut response =
                json_response(200, serde_json::to_string(&issued).unwrap_or_default());
            response
                .headers_mut()
                .insert("metadata-flavor", HeaderValue::from_static("Google"));
            response
        }
        "/instance/service-accounts/default/email" => text(principal),
        "/project/project-id" => text(
            emulator
                .world()
                .projects
                .first()
                .map(|p| p.id.clone())
                .unwrap_or_default(),
        ),
        other => {
            let mut response = Response::new(Body::from(format!(
                "metadata path {other} not served by the emulator\n"
            )));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}

fn admin(
    emulator: &Emulator,
    method: &Method,
    rest: &str,
    query: &[(String, String)],
    body: &Bytes,
) -> Response {
    let admin_error =
        |status: u16, message: String| json_response(status, json!({"error": message}).to_string());
    match (method.as_str(), rest.trim_end_matches('/')) {
        ("GET", "stats") => {
            let mut stats = emulator.stats.to_json();
            let mut state = match emulator.state.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let counts = state.counts(tokio::time::Instant::now());
            stats["operationsCreated"] = json!(state.ops_created);
            stats["operationsDone"] = json!(state.ops_done);
            stats["operationsPending"] = json!(counts.operations_pending);
            stats["resources"] = json!(counts.resources);
            json_response(200, stats.to_string())
        }
        ("GET", "state") => {
            let mut state = match emulator.state.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = tokio::time::Instant::now();
            let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            let filter = match param("filter").map(|f| Filter::parse(f)).transpose() {
                Ok(filter) => filter,
                Err(err) => return admin_error(400, format!("filter: {err}")),
            };
            let dump = match param("collection") {
                Some(collection) => state.dump_collection(now, collection, filter.as_ref()),
                None => state.dump(now),
            };
            json_response(200, dump.to_string())
        }
        ("GET", "tokens") => {
            json_response(200, json!({"items": emulator.tokens.issued()}).to_string())
        }
        ("POST", "reset") => {
            emulator.reset();
            json_response(200, json!({"reset": true}).to_string())
        }
        ("GET", "faults") => json_response(
            200,
            serde_json::to_string(&emulator.current_faults()).unwrap_or_default(),
        ),
        ("POST", "faults") => {
            let text = String::from_utf8_lossy(body);
            let spec = match serde_json::from_str::<Value>(&text) {
                Ok(value) => value
                    .get("spec")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                Err(_) => text.trim().to_string(),
            };
            match Faults::parse(&spec) {
                Ok(faults) => {
                    emulator.set_faults(faults.clone());
                    json_response(200, serde_json::to_string(&faults).unwrap_or_default())
                }
                Err(err) => admin_error(400, err.to_string()),
            }
        }
        ("POST", "health") => match mark_health(emulator, body) {
            Ok(value) => json_response(200, value.to_string()),
            Err((status, message)) => admin_error(status, message),
        },
        ("POST", "quotas") => match update_quotas(emulator, body) {
            Ok(value) => json_response(200, value.to_string()),
            Err(message) => admin_error(400, message),
        },
        _ => admin_error(404, format!("no admin endpoint {method} /_emulator/{rest}")),
    }
}

/// `{"project": P, "zone": Z, "instance": I, "healthy": false|true}`: marks an instance
/// unhealthy for every health check, or clears the mark. 404 for an unknown instance.
fn mark_health(emulator: &Emulator, body: &Bytes) -> Result<Value, (u16, String)> {
    let request: Value =
        serde_json::from_slice(body).map_err(|err| (400, format!("body is not JSON: {err}")))?;
    let text = |field: &str| {
        request
            .get(field)
            .and_then(Value::as_str)
            .ok_or((400, format!("missing field '{field}' (a string)")))
    };
    let (project, zone, instance) = (text("project")?, text("zone")?, text("instance")?);
    let healthy = request
        .get("healthy")
        .and_then(Value::as_bool)
        .ok_or((400, "missing field 'healthy' (a boolean)".to_string()))?;
    let mut state = match emulator.state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    state
        .mark_health(project, zone, instance, healthy)
        .map_err(|err| (err.code, err.message))?;
    Ok(json!({"project": project, "zone": zone, "instance": instance, "healthy": healthy}))
}

/// `{"project": P, "quotas": {...}, "rateLimits": {...}}`, each map partial.
fn update_quotas(emulator: &Emulator, body: &Bytes) -> Result<Value, String> {
    let request: Value =
        serde_json::from_slice(body).map_err(|err| format!("body is not JSON: {err}"))?;
    let project_id = request
        .get("project")
        .and_then(Value::as_str)
        .ok_or("missing field 'project'")?;
    let mut state = match emulator.state.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let project = state
        .projects
        .get_mut(project_id)
        .ok_or_else(|| format!("no project '{project_id}'"))?;
    if let Some(patch) = request.get("quotas") {
        let mut merged = serde_json::to_value(project.quotas).map_err(|e| e.to_string())?;
        crate::resources::merge_patch(&mut merged, patch);
        project.quotas =
            serde_json::from_value::<Quotas>(merged).map_err(|err| format!("quotas: {err}"))?;
    }
    if let Some(patch) = request.get("rateLimits") {
        let mut merged = serde_json::to_value(project.rate_limits).map_err(|e| e.to_string())?;
        crate::resources::merge_patch(&mut merged, patch);
        project.rate_limits = serde_json::from_value::<RateLimits>(merged)
            .map_err(|err| format!("rateLimits: {err}"))?;
    }
    Ok(json!({"project": project_id, "quotas": project.quotas, "rateLimits": project.rate_limits}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let pairs = parse_form(
            "grant_type=urn%3Aietf%3Aparams&assertion=a.b.c&filter=name+eq+x&bad=%zz&end=%4",
        );
        assert_eq!(pairs[0], ("grant_type".into(), "urn:ietf:params".into()));
        assert_eq!(pairs[1], ("assertion".into(), "a.b.c".into()));
        assert_eq!(pairs[2], ("filter".into(), "name eq x".into()));
        assert_eq!(pairs[3], ("bad".into(), "%zz".into()));
        assert_eq!(pairs[4], ("end".into(), "%4".into()));
    }
}
