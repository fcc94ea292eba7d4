//! The HTTP side of Compute: one call as its own request, or many calls in one batch request.
//! Everything above this module speaks in [`Call`]s and answers; nothing else builds URLs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde_json::Value;

use super::auth::Credentials;
use super::budget::RateGroup;
use super::error::GcpError;
use super::metrics::GcpMetrics;

/// One Compute call: method, the path below `compute/v1/`, query parameters and a JSON body.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
    /// The per-minute quota group the call is charged to.
    pub group: RateGroup,
    /// The discovery name, e.g. `compute.routes.insert` (metrics label).
    pub method_name: &'static str,
}

/// An answer with a 2xx status (error answers become [`GcpError`]).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// How calls travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Up to `max_calls` calls per `POST /batch/compute/v1`.
    Batch { max_calls: usize },
    /// One HTTP request per call.
    Single,
}

fn encode_query(query: &[(String, String)]) -> String {
    fn escape(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(byte as char)
                }
                other => out.push_str(&format!("%{other:02X}")),
            }
        }
        out
    }
    query
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A Compute API client for one endpoint and credentials.
#[derive(Clone)]
pub struct ComputeClient {
    http: reqwest::Client,
    /// e.g. `https://compute.googleapis.com` (no trailing slash).
    endpoint: String,
    credentials: Credentials,
    metrics: Arc<GcpMetrics>,
}

impl std::fmt::Debug for ComputeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeClient")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials.describe())
            .finish()
    }
}

impl ComputeClient {
    /// A client for `endpoint` (`https://compute.googleapis.com` or an emulator's base URL).
    pub fn new(
        endpoint: &str,
        credentials: Credentials,
        metrics: Arc<GcpMetrics>,
    ) -> Result<Self, GcpError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(150))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("adc-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| GcpError::Transport(format!("building the HTTP client: {err}")))?;
        Ok(Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
            metrics,
        })
    }

    fn url(&self, call: &Call) -> String {
        let mut url = format!("{}/compute/v1/{}", self.endpoint, call.path);
        if !call.query.is_empty() {
            url.push('?');
            url.push_str(&encode_query(&call.query));
        }
        url
    }

    /// Sends calls the way `transport` says; answers come back in the calls' order.
    pub async fn exchange(
        &self,
        transport: Transport,
        calls: Vec<Call>,
    ) -> Vec<Result<Answer, GcpError>> {
        match transport {
            Transport::Single => {
                futures::future::join_all(calls.iter().map(|call| self.send(call))).await
            }
            Transport::Batch { max_calls } => {
                let mut answers = Vec::with_capacity(calls.len());
                for chunk in calls.chunks(max_calls.clamp(1, 1000)) {
                    if chunk.len() == 1 {
                        answers.push(self.send(&chunk[0]).await);
                    } else {
                        answers.extend(self.send_batch(chunk).await);
                    }
                }
                answers
            }
        }
    }

    /// One call as its own HTTP request; a 401 refreshes the token and retries once.
    pub async fn send(&self, call: &Call) -> Result<Answer, GcpError> {
        self.metrics.http_request("single");
        for attempt in 0..2 {
            let auth = self.credentials.authorization().await?;
            let mut request = self.http.request(call.method.clone(), self.url(call));
            if let Some(auth) = &auth {
                request = request.header(reqwest::header::AUTHORIZATION, auth);
            }
            if let Some(body) = &call.body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|err| {
                GcpError::Transport(format!("{} {}: {err}", call.method, call.path))
            })?;
            let status = response.status().as_u16();
            let wait = retry_after(response.headers());
            let body = response.bytes().await.map_err(|err| {
                GcpError::Transport(format!(
                    "{} {}: reading the answer: {err}",
                    call.method, call.path
                ))
            })?;
            if status == 401 && attempt == 0 {
                if let Some(auth) = &auth {
                    self.credentials.invalidate(auth);
                }
                continue;
            }
            let outcome = if (200..300).contains(&status) {
                Ok(Answer { status, body })
            } else {
                Err(GcpError::from_response(status, &body, wait))
            };
            self.metrics.call(call.method_name, &outcome);
            return outcome;
        }
        Err(GcpError::Auth(
            "the Compute API refused a freshly fetched token (401)".into(),
        ))
    }

    /// Many calls in one `POST /batch/compute/v1`. A failure of the whole request fails each call
    /// with that error; parts are matched by Content-ID, whatever their order.
    pub async fn send_batch(&self, calls: &[Call]) -> Vec<Result<Answer, GcpError>> {
        self.metrics.http_request("batch");
        self.metrics.batch_size(calls.len());
        match self.try_send_batch(calls).await {
            Ok(answers) => {
                for (call, outcome) in calls.iter().zip(&answers) {
                    self.metrics.call(call.method_name, outcome);
                }
                answers
            }
            Err(err) => {
                for call in calls {
                    self.metrics
                        .call::<Answer>(call.method_name, &Err(err.clone()));
                }
                calls.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }

    async fn try_send_batch(
        &self,
        calls: &[Call],
    ) -> Result<Vec<Result<Answer, GcpError>>, GcpError> {
        let tag = uuid::Uuid::new_v4();
        let parts: Vec<gce_batch::InnerRequest> = calls
            .iter()
            .enumerate()
            .map(|(i, call)| {
                let mut path = format!("/compute/v1/{}", call.path);
                if !call.query.is_empty() {
                    path.push('?');
                    path.push_str(&encode_query(&call.query));
                }
                gce_batch::InnerRequest {
                    content_id: Some(format!("{tag}+{i}")),
                    method: call.method.as_str().to_string(),
                    path_and_query: path,
                    headers: vec![("Content-Type".into(), "application/json".into())],
                    body: call
                        .body
                        .as_ref()
                        .map(|b| b.to_string().into_bytes())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let boundary = gce_batch::new_boundary();
        let payload = Bytes::from(gce_batch::encode_requests(&boundary, &parts));
        for attempt in 0..2 {
            let auth = self.credentials.authorization().await?;
            let mut request = self
                .http
                .post(format!("{}/batch/compute/v1", self.endpoint))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    format!("multipart/mixed; boundary={boundary}"),
                )
                .body(payload.clone());
            if let Some(auth) = &auth {
                request = request.header(reqwest::header::AUTHORIZATION, auth);
            }
            let response = request
                .send()
                .await
                .map_err(|err| GcpError::Transport(format!("batch of {}: {err}", calls.len())))?;
            let status = response.status().as_u16();
            let wait = retry_after(response.headers());
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = response.bytes().await.map_err(|err| {
                GcpError::Transport(format!(
                    "batch of {}: reading the answer: {err}",
                    calls.len()
                ))
            })?;
            if status == 401 && attempt == 0 {
                if let Some(auth) = &auth {
                    self.credentials.invalidate(auth);
                }
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(GcpError::from_response(status, &body, wait));
            }
            let parsed = gce_batch::parse_responses(&content_type, &body)
                .map_err(|err| GcpError::Decode(format!("batch answer: {err}")))?;
            let mut answers: Vec<Option<Result<Answer, GcpError>>> = vec![None; calls.len()];
            for part in parsed {
                let index = part
                    .content_id
                    .as_deref()
                    .and_then(|id| id.rsplit_once('+'))
                    .and_then(|(prefix, n)| {
                        (prefix.trim() == tag.to_string())
                            .then(|| n.trim().parse::<usize>().ok())
                            .flatten()
                    });
                let Some(slot) = index.and_then(|i| answers.get_mut(i)) else {
                    continue;
                };
                let wait = part
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                *slot = Some(if (200..300).contains(&part.status) {
                    Ok(Answer {
                        status: part.status,
                        body: Bytes::from(part.body),
                    })
                } else {
                    Err(GcpError::from_response(part.status, &part.body, wait))
                });
            }
            return Ok(answers
                .into_iter()
                .map(|answer| {
                    answer.unwrap_or_else(|| {
                        Err(GcpError::Transport(
                            "the batch answer has no part for this call".into(),
                        ))
                    })
                })
                .collect());
        }
        Err(GcpError::Auth(
            "the Compute API refused a freshly fetched token (401)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_percent_encoded() {
        let query = vec![
            ("filter".to_string(), "name eq adc-.*".to_string()),
            ("maxResults".into(), "500".into()),
        ];
        assert_eq!(
            encode_query(&query),
            "filter=name%20eq%20adc-.%2A&maxResults=500"
        );
    }
}
