//! The emulator as a separate process over HTTP: lifecycle, limits, idempotence, faults, auth,
//! batches and concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::HashSet;

use gce_emulator::multipart::{self, InnerRequest};
use reqwest::Method;
use serde_json::{Value, json};
use support::{Emulator, PROJECT, route, world};

async fn send_batch(
    emu: &Emulator,
    parts: Vec<InnerRequest>,
) -> (u16, Vec<multipart::InnerResponse>) {
    let boundary = multipart::new_boundary();
    let response = emu
        .client
        .post(format!("{}/batch/compute/v1", emu.base))
        .header(
            "content-type",
            format!("multipart/mixed; boundary={boundary}"),
        )
        .body(multipart::encode_requests(&boundary, &parts))
        .send()
        .await
        .expect("batch");
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.bytes().await.unwrap();
    if status != 200 {
        return (status, Vec::new());
    }
    (
        status,
        multipart::parse_responses(&content_type, &body).expect("batch response"),
    )
}

fn insert_part(id: usize, body: &Value) -> InnerRequest {
    InnerRequest {
        content_id: Some(format!("test+{id}")),
        method: "POST".into(),
        path_and_query: format!("/compute/v1/projects/{PROJECT}/global/routes"),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

#[tokio::test]
async fn route_lifecycle_and_errors_in_googles_shape() {
    let emu = Emulator::start(&world(""), &[]);
    let (status, op) = emu.post("global/routes", route("r1", "10.10.0.5/32")).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["kind"], "compute#operation");
    assert_eq!(op["status"], "DONE", "instant profile");
    assert_eq!(op["operationType"], "insert");
    assert!(
        op["targetLink"]
            .as_str()
            .unwrap()
            .ends_with("/global/routes/r1")
    );

    let (status, got) = emu.get("global/routes/r1").await;
    assert_eq!(status, 200);
    assert_eq!(got["destRange"], "10.10.0.5/32");
    assert_eq!(got["priority"], 1000);
    assert_eq!(
        got["network"],
        "https://www.googleapis.com/compute/v1/projects/demo-project/global/networks/default"
    );
    assert_eq!(got["id"], op["targetId"]);

    // The admin API's one-collection dump: routes only, no operations.
    let dump: Value = emu
        .client
        .get(format!("{}/_emulator/state?collection=routes", emu.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = dump["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r1"], "{dump}");
    assert!(dump.get("projects").is_none());
    for (filter, expected) in [
        ("destRange eq 10\\.9\\..*", 0),
        ("destRange eq 10\\.10\\..*", 1),
    ] {
        let dump: Value = emu
            .client
            .get(format!("{}/_emulator/state", emu.base))
            .query(&[("collection", "routes"), ("filter", filter)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            dump["items"].as_array().unwrap().len(),
            expected,
            "{filter}: {dump}"
        );
    }

    let (status, dup) = emu.post("global/routes", route("r1", "10.10.0.5/32")).await;
    assert_eq!(status, 409);
    assert_eq!(dup["error"]["errors"][0]["reason"], "alreadyExists");

    let response = emu
        .client
        .patch(emu.url("global/routes/r1"))
        .json(&json!({"priority": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405, "routes are immutable");

    let (status, op) = emu.delete("global/routes/r1").await;
    assert_eq!((status, op["status"].as_str()), (200, Some("DONE")));
    let (status, missing) = emu.get("global/routes/r1").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["errors"][0]["reason"], "notFound");
    assert_eq!(
        missing["error"]["message"],
        "The resource 'projects/demo-project/global/routes/r1' was not found"
    );
    assert_eq!(emu.delete("global/routes/r1").await.0, 404);
}

#[tokio::test]
async fn validation_names_the_field() {
    let emu = Emulator::start(&world(""), &[]);
    let cases = [
        (route("Bad_Name", "10.10.0.5/32"), "resource.name"),
        (route("r", "10.10.0.5/33"), "resource.destRange"),
        (route("r", "10.10.0.1/24"), "resource.destRange"),
        (
            json!({"name": "r", "network": "global/networks/default", "destRange": "10.10.0.0/24", "priority": 70000, "nextHopIp": "10.0.0.1"}),
            "resource.priority",
        ),
        (
            json!({"name": "r", "network": "global/networks/default", "destRange": "10.10.0.0/24", "nextHopIp": "10.0.0.1", "nextHopGateway": "global/gateways/default-internet-gateway"}),
            "exactly one of",
        ),
        (
            json!({"name": "r", "network": "global/networks/default", "destRange": "10.10.0.0/24"}),
            "exactly one of",
        ),
        (route("r", "10.128.1.0/24"), "subnetwork 'default'"),
        (
            json!({"name": "r", "network": "global/networks/default", "destRange": "10.10.0.0/24", "nextHopInstance": "zones/us-central1-a/instances/nope"}),
            "instances/nope",
        ),
    ];
    for (body, needle) in cases {
        let (status, error) = emu.post("global/routes", body.clone()).await;
        assert!(status == 400 || status == 404, "{body}: {status} {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let (status, error) = emu.get("global/routes?maxResults=501").await;
    assert_eq!(status, 400, "{error}");
    let (status, _) = emu.get("regions/mars-north1/addresses").await;
    assert_eq!(status, 404);
    let state = emu.admin(Method::GET, "state", None).await;
    assert!(
        state["projects"][PROJECT]["resources"]["projects/demo-project/global/routes"].is_null()
    );
}

#[tokio::test]
async fn list_pages_by_name_and_filters() {
    let emu = Emulator::start(&world(""), &[]);
    let parts: Vec<InnerRequest> = (0..25)
        .map(|i| {
            insert_part(
                i,
                &route(&format!("page-{:02}", 24 - i), &format!("10.20.{i}.0/24")),
            )
        })
        .collect();
    let (status, replies) = send_batch(&emu, parts).await;
    assert_eq!(status, 200);
    assert!(replies.iter().all(|r| r.status == 200));

    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = "global/routes?maxResults=10".to_string();
        if let Some(token) = &token {
            path.push_str(&format!("&pageToken={token}"));
        }
        let (status, page) = emu.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        names.extend(
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap().to_string()),
        );
        match page["nextPageToken"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    assert_eq!(names, expected, "every route once, sorted by name");

    let (_, filtered) = emu.get("global/routes?filter=name%20eq%20page-1.*").await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 10);
    let (_, exact) = emu
        .get("global/routes?filter=destRange%20%3D%20%2210.20.3.0%2F24%22")
        .await;
    assert_eq!(exact["items"][0]["name"], "page-21");
    let (status, _) = emu.get("global/routes?filter=name%20eq%20(").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn gcp_profile_operations_run_then_finish() {
    let emu = Emulator::start(&world(""), &["--profile", "gcp", "--time-scale", "0.01"]);
    let (status, op) = emu
        .post("global/routes", route("slow", "10.30.0.0/24"))
        .await;
    assert_eq!(status, 200, "{op}");
    assert_ne!(
        op["status"], "DONE",
        "a route insert takes seconds (scaled)"
    );
    assert_eq!(
        emu.get("global/routes/slow").await.0,
        404,
        "invisible until DONE"
    );
    let (_, pending) = emu
        .get("global/operations?filter=status%20!%3D%20DONE")
        .await;
    assert_eq!(pending["items"][0]["name"], op["name"]);
    let done = emu.wait_done(&op).await;
    assert!(done["endTime"].is_string() && done["startTime"].is_string());
    assert_eq!(done["progress"], 100);
    assert_eq!(emu.get("global/routes/slow").await.0, 200);
}

#[tokio::test]
async fn serialised_network_queues_mutations_one_at_a_time() {
    let emu = Emulator::start(
        &world(""),
        &[
            "--profile",
            "gcp",
            "--time-scale",
            "0.01",
            "--network-concurrency",
            "1",
        ],
    );
    let parts: Vec<InnerRequest> = (0..3)
        .map(|i| insert_part(i, &route(&format!("q{i}"), &format!("10.40.{i}.0/24"))))
        .collect();
    let (_, replies) = send_batch(&emu, parts).await;
    let ops: Vec<Value> = replies
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let pending = ops.iter().filter(|op| op["status"] == "PENDING").count();
    assert!(pending >= 2, "one runs, the others wait: {ops:?}");
    let mut done = Vec::new();
    for op in &ops {
        done.push(emu.wait_done(op).await);
    }
    let mut spans: Vec<(String, String)> = done
        .iter()
        .map(|op| {
            (
                op["startTime"].as_str().unwrap().to_string(),
                op["endTime"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "no overlap on a serialised network: {spans:?}"
        );
    }
}

#[tokio::test]
async fn busy_network_can_refuse_with_resource_not_ready() {
    let emu = Emulator::start(
        &world(""),
        &[
            "--profile",
            "gcp",
            "--time-scale",
            "0.05",
            "--network-concurrency",
            "1",
            "--network-busy",
            "refuse",
        ],
    );
    let (status, _) = emu.post("global/routes", route("a", "10.50.0.0/24")).await;
    assert_eq!(status, 200);
    let (status, error) = emu.post("global/routes", route("b", "10.50.1.0/24")).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["errors"][0]["reason"], "resourceNotReady");
    let (status, _) = emu.post("global/routes", json!({"name": "c", "network": "global/networks/other", "destRange": "10.50.2.0/24", "nextHopIp": "10.0.0.1"})).await;
    assert_eq!(status, 200, "another network is not busy");
}

#[tokio::test]
async fn write_rate_quota_answers_rate_limit_exceeded() {
    let emu = Emulator::start(
        &world("    rateLimits: {writesPerMinute: 5}"),
        &["--profile", "gcp"],
    );
    // Windows are aligned to wall-clock minutes: keep the batch clear of a boundary.
    let into_minute = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 60
    };
    while into_minute() > 55 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let parts: Vec<InnerRequest> = (0..8)
        .map(|i| insert_part(i, &route(&format!("rl{i}"), &format!("10.60.{i}.0/24"))))
        .collect();
    let (_, replies) = send_batch(&emu, parts).await;
    let limited: Vec<&multipart::InnerResponse> =
        replies.iter().filter(|r| r.status == 403).collect();
    assert_eq!(limited.len(), 3, "5 writes per minute, 8 sent");
    let body: Value = serde_json::from_slice(&limited[0].body).unwrap();
    assert_eq!(body["error"]["errors"][0]["reason"], "rateLimitExceeded");
    assert_eq!(body["error"]["errors"][0]["domain"], "usageLimits");
    let stats = emu.admin(Method::GET, "stats", None).await;
    assert_eq!(stats["rateLimited"], json!(limited.len()));
    assert_eq!(stats["innerCalls"], 8, "each inner call counts");
    assert_eq!(stats["batchRequests"], 1);
}

#[tokio::test]
async fn resource_quota_fails_the_operation_until_raised() {
    let emu = Emulator::start(&world("").replace("ROUTES: 5000", "ROUTES: 2"), &[]);
    for i in 0..2 {
        let (_, op) = emu
            .post(
                "global/routes",
                route(&format!("qa{i}"), &format!("10.70.{i}.0/24")),
            )
            .await;
        assert!(op["error"].is_null(), "{op}");
    }
    let (status, op) = emu
        .post("global/routes", route("qa2", "10.70.2.0/24"))
        .await;
    assert_eq!(status, 200, "accepted, then the operation fails");
    assert_eq!(op["error"]["errors"][0]["code"], "QUOTA_EXCEEDED");
    assert_eq!(
        op["error"]["errors"][0]["message"],
        "Quota 'ROUTES' exceeded.  Limit: 2.0 globally."
    );
    assert_eq!(op["httpErrorStatusCode"], 403);
    assert_eq!(emu.get("global/routes/qa2").await.0, 404);
    emu.admin(
        Method::POST,
        "quotas",
        Some(json!({"project": PROJECT, "quotas": {"ROUTES": 3}})),
    )
    .await;
    let (_, op) = emu
        .post("global/routes", route("qa2", "10.70.2.0/24"))
        .await;
    assert!(op["error"].is_null(), "{op}");
}

#[tokio::test]
async fn request_id_makes_a_retry_after_a_lost_response_act_once() {
    let emu = Emulator::start(&world(""), &["--faults", "reset=1.0"]);
    let url = emu.url("global/routes?requestId=3f0c5a9e-7d1b-4c2e-8f3a-9b8c7d6e5f4a");
    let lost = emu
        .client
        .post(&url)
        .json(&route("once", "10.80.0.0/24"))
        .send()
        .await;
    let lost_body = match lost {
        Ok(response) => response.bytes().await.is_err(),
        Err(_) => true,
    };
    assert!(lost_body, "the response was cut");
    emu.admin(Method::POST, "faults", Some(json!({"spec": ""})))
        .await;
    let (status, op) = support::decode(
        emu.client
            .post(&url)
            .json(&route("once", "10.80.0.0/24"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 200,
        "the retry returns the original operation, not alreadyExists: {op}"
    );
    assert_eq!(
        op["clientOperationId"],
        "3f0c5a9e-7d1b-4c2e-8f3a-9b8c7d6e5f4a"
    );
    let stats = emu.admin(Method::GET, "stats", None).await;
    assert_eq!(stats["operationsCreated"], 1, "acted once");
    let (status, error) = emu
        .post(
            "global/routes?requestId=00000000-0000-0000-0000-000000000000",
            route("z", "10.80.1.0/24"),
        )
        .await;
    assert_eq!(status, 400, "{error}");
}

#[tokio::test]
async fn injected_faults_are_googles_errors() {
    let emu = Emulator::start(&world(""), &["--faults", "http503=1.0"]);
    let (status, error) = emu.get("global/routes").await;
    assert_eq!(status, 503);
    assert_eq!(error["error"]["errors"][0]["reason"], "backendError");
    emu.admin(Method::POST, "faults", Some(json!({"spec": "opfail=1.0"})))
        .await;
    let (status, op) = emu.post("global/routes", route("f", "10.90.0.0/24")).await;
    assert_eq!(status, 200);
    assert_eq!(op["error"]["errors"][0]["code"], "INTERNAL_ERROR");
    assert_eq!(
        emu.get("global/routes/f").await.0,
        404,
        "a failed operation changes nothing"
    );
    emu.admin(
        Method::POST,
        "faults",
        Some(json!({"spec": "ratelimit=1.0"})),
    )
    .await;
    let (status, error) = emu.get("global/routes").await;
    assert_eq!(
        (status, error["error"]["errors"][0]["reason"].as_str()),
        (403, Some("rateLimitExceeded"))
    );
    let response = emu
        .client
        .post(format!("{}/_emulator/faults", emu.base))
        .body("boom=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn batch_limits_and_mixed_results() {
    let emu = Emulator::start(&world(""), &[]);
    let too_many: Vec<InnerRequest> = (0..1001)
        .map(|i| insert_part(i, &route(&format!("b{i}"), "10.99.0.0/24")))
        .collect();
    let (status, _) = send_batch(&emu, too_many).await;
    assert_eq!(status, 400);
    let mut parts = vec![
        insert_part(0, &route("mixed", "10.99.1.0/24")),
        insert_part(1, &route("BAD", "10.99.2.0/24")),
        insert_part(2, &route("mixed", "10.99.1.0/24")),
    ];
    parts.push(InnerRequest {
        content_id: Some("test+3".into()),
        method: "GET".into(),
        path_and_query: format!("/compute/v1/projects/{PROJECT}/global/routes/absent"),
        ..Default::default()
    });
    let (status, replies) = send_batch(&emu, parts).await;
    assert_eq!(status, 200);
    let by_id = |id: &str| {
        replies
            .iter()
            .find(|r| r.content_id.as_deref() == Some(id))
            .unwrap()
            .status
    };
    assert_eq!(by_id("test+1"), 400);
    assert_eq!(by_id("test+3"), 404);
    let mut outcomes = [by_id("test+0"), by_id("test+2")];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [200, 409],
        "the same name inserted twice in one batch: one wins"
    );
}

#[tokio::test]
async fn concurrent_batches_lose_and_duplicate_nothing() {
    let emu = Emulator::start(&world(""), &[]);
    // Eight batches of 250, every name sent by two batches.
    let mut batches = Vec::new();
    for b in 0..8usize {
        let parts: Vec<InnerRequest> = (0..250)
            .map(|i| {
                let n = (b / 2) * 250 + i;
                insert_part(
                    i,
                    &route(
                        &format!("c-{n:04}"),
                        &format!("10.{}.{}.0/24", 100 + n / 256, n % 256),
                    ),
                )
            })
            .collect();
        batches.push(send_batch(&emu, parts));
    }
    let results = futures::future::join_all(batches).await;
    let ok: usize = results
        .iter()
        .map(|(_, r)| r.iter().filter(|r| r.status == 200).count())
        .sum();
    let conflicts: usize = results
        .iter()
        .map(|(_, r)| r.iter().filter(|r| r.status == 409).count())
        .sum();
    assert_eq!((ok, conflicts), (1000, 1000));
    let mut names = HashSet::new();
    let mut token = String::new();
    loop {
        let (_, page) = emu.get(&format!("global/routes?pageToken={token}")).await;
        for item in page["items"].as_array().unwrap() {
            assert!(
                names.insert(item["name"].as_str().unwrap().to_string()),
                "duplicate"
            );
        }
        match page["nextPageToken"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    assert_eq!(names.len(), 1000);
}

#[tokio::test]
async fn instance_stop_and_start() {
    let emu = Emulator::start(&world(""), &[]);
    let (status, op) = emu
        .post("zones/us-central1-a/instances/se-1/stop", json!({}))
        .await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["operationType"], "stop");
    assert!(
        op["zone"]
            .as_str()
            .unwrap()
            .ends_with("/zones/us-central1-a")
    );
    assert_eq!(
        emu.get("zones/us-central1-a/instances/se-1").await.1["status"],
        "TERMINATED"
    );
    let (_, op) = emu
        .post("zones/us-central1-a/instances/se-1/start", json!({}))
        .await;
    let (_, zonal) = emu
        .get(&format!(
            "zones/us-central1-a/operations/{}",
            op["name"].as_str().unwrap()
        ))
        .await;
    assert_eq!(zonal["status"], "DONE");
    assert_eq!(
        emu.get("zones/us-central1-a/instances/se-1").await.1["status"],
        "RUNNING"
    );
}

#[tokio::test]
async fn token_auth_issues_and_checks_bearer_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .args([
            "keygen",
            "--client-email",
            "op@demo-project.iam.gserviceaccount.com",
            "--out",
        ])
        .arg(&key_path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let entry = String::from_utf8(output.stdout).unwrap();
    let emu = Emulator::start(
        &format!("{}serviceAccounts:\n{entry}", world("")),
        &["--auth", "token"],
    );

    let (status, error) = emu.get("global/routes").await;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["errors"][0]["location"], "Authorization");

    let key: Value = serde_json::from_str(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let assertion = sign_assertion(&key, &format!("{}/token", emu.base));
    let response = emu
        .client
        .post(format!("{}/token", emu.base))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let (status, token) = support::decode(response).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    let access = token["access_token"].as_str().unwrap();
    let response = emu
        .client
        .get(emu.url("global/routes"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, op) = support::decode(
        emu.client
            .post(emu.url("global/routes"))
            .bearer_auth(access)
            .json(&route("authed", "10.11.0.0/24"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(op["user"], "op@demo-project.iam.gserviceaccount.com");
    let response = emu
        .client
        .get(emu.url("global/routes"))
        .bearer_auth("ya29.forged")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let response = emu
        .client
        .get(format!(
            "{}/computeMetadata/v1/instance/service-accounts/default/token",
            emu.base
        ))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .unwrap();
    let (status, metadata_token) = support::decode(response).await;
    assert_eq!(status, 200);
    let response = emu
        .client
        .get(emu.url("global/routes"))
        .bearer_auth(metadata_token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "metadata tokens are valid too"
    );

    // The metadata server hands out the principal's latest token again (it has more than
    // 300 s left); the admin API lists every token issued once, with its principal.
    let issued: Value = emu
        .client
        .get(format!("{}/_emulator/tokens", emu.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<(&str, &str)> = issued["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["accessToken"].as_str().unwrap(),
                t["principal"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [(access, "op@demo-project.iam.gserviceaccount.com")],
        "{issued}"
    );
    assert_eq!(metadata_token["access_token"], access);
}

fn sign_assertion(key: &Value, audience: &str) -> String {
    use base64::Engine as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": key["private_key_id"]});
    let claims = json!({"iss": key["client_email"], "scope": "https://www.googleapis.com/auth/compute", "aud": audience, "iat": now, "exp": now + 3600});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let private = rsa::RsaPrivateKey::from_pkcs8_pem(key["private_key"].as_str().unwrap()).unwrap();
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(private);
    let signature = signer.sign(signing_input.as_bytes()).to_bytes();
    format!("{signing_input}.{}", b64(&signature))
}

#[test]
fn a_bad_world_is_refused_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("world.yaml");
    std::fs::write(&path, "projects:\n  - id: p\n    netwerks: []\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .args(["--listen", "127.0.0.1:0", "--world"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("netwerks") && stderr.contains("line 3"),
        "{stderr}"
    );
}

/// `quotas[]` of a Project or Region as `metric → (limit, usage)`; both must be JSON doubles
/// (`250.0`), as Compute sends them.
fn quotas_of(resource: &Value) -> std::collections::BTreeMap<String, (f64, f64)> {
    resource["quotas"]
        .as_array()
        .unwrap_or_else(|| panic!("no quotas in {resource}"))
        .iter()
        .map(|q| {
            assert!(q["limit"].is_f64() && q["usage"].is_f64(), "{q}");
            (
                q["metric"].as_str().unwrap().to_string(),
                (q["limit"].as_f64().unwrap(), q["usage"].as_f64().unwrap()),
            )
        })
        .collect()
}

fn firewall(name: &str) -> Value {
    json!({"name": name, "network": "global/networks/default", "sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["80"]}]})
}

#[tokio::test]
async fn project_and_region_quotas_follow_inserts_and_deletes() {
    let emu = Emulator::start(
        &world("").replace(
            "FIREWALLS: 1000}",
            "FIREWALLS: 1000, STATIC_ADDRESSES: 2, FORWARDING_RULES: 15}",
        ),
        &[],
    );
    let project_url = format!("{}/compute/v1/projects/{PROJECT}", emu.base);
    let get_project = || async {
        let response = emu.client.get(&project_url).send().await.unwrap();
        support::decode(response).await
    };

    let (status, project) = get_project().await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["kind"], "compute#project");
    assert_eq!(project["name"], PROJECT);
    assert_eq!(project["selfLink"], format!("{}{PROJECT}", LINK));
    assert!(project["id"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(project["creationTimestamp"].is_string());
    assert_eq!(
        project["commonInstanceMetadata"]["kind"],
        "compute#metadata"
    );
    assert!(project["commonInstanceMetadata"]["fingerprint"].is_string());
    assert_eq!(
        project["xpnProjectStatus"],
        "UNSPECIFIED_XPN_PROJECT_STATUS"
    );
    assert_eq!(project["defaultNetworkTier"], "PREMIUM");
    let quotas = quotas_of(&project);
    assert_eq!(quotas["ROUTES"], (5000.0, 0.0), "the world's limit");
    assert_eq!(quotas["FIREWALLS"], (1000.0, 0.0));
    assert_eq!(
        quotas.keys().collect::<Vec<_>>(),
        ["FIREWALLS", "ROUTES"],
        "only the project-wide quotas; STATIC_ROUTES_PER_NETWORK is not a Compute quota metric"
    );

    for (i, dest) in ["10.10.1.0/24", "10.10.2.0/24"].iter().enumerate() {
        let (_, op) = emu
            .post("global/routes", route(&format!("q{i}"), dest))
            .await;
        assert!(op["error"].is_null(), "{op}");
    }
    let (_, op) = emu.post("global/firewalls", firewall("fw")).await;
    assert!(op["error"].is_null(), "{op}");
    let quotas = quotas_of(&get_project().await.1);
    assert_eq!(quotas["ROUTES"], (5000.0, 2.0));
    assert_eq!(quotas["FIREWALLS"], (1000.0, 1.0));
    emu.delete("global/routes/q0").await;
    assert_eq!(quotas_of(&get_project().await.1)["ROUTES"], (5000.0, 1.0));

    // A limit raised or lowered at run time shows at once; an insert refused for quota leaves
    // the usage alone; usage == limit is exactly when the next insert fails.
    emu.admin(
        Method::POST,
        "quotas",
        Some(json!({"project": PROJECT, "quotas": {"ROUTES": 1}})),
    )
    .await;
    let (_, op) = emu.post("global/routes", route("q2", "10.10.3.0/24")).await;
    assert_eq!(op["error"]["errors"][0]["code"], "QUOTA_EXCEEDED");
    assert_eq!(quotas_of(&get_project().await.1)["ROUTES"], (1.0, 1.0));

    // The region: its zones, and the regional quotas.
    let (status, region) = emu.get("regions/us-central1").await;
    assert_eq!(status, 200, "{region}");
    assert_eq!(region["kind"], "compute#region");
    assert_eq!(region["name"], "us-central1");
    assert_eq!(region["status"], "UP");
    assert_eq!(
        region["selfLink"],
        format!("{LINK}{PROJECT}/regions/us-central1")
    );
    let zones: Vec<&str> = region["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z.as_str().unwrap())
        .collect();
    assert_eq!(
        zones,
        ["a", "b", "c", "f"]
            .iter()
            .map(|s| format!("{LINK}{PROJECT}/zones/us-central1-{s}"))
            .collect::<Vec<_>>()
    );
    let quotas = quotas_of(&region);
    assert_eq!(
        quotas.keys().collect::<Vec<_>>(),
        ["FORWARDING_RULES", "STATIC_ADDRESSES"]
    );
    assert_eq!(quotas["STATIC_ADDRESSES"], (2.0, 0.0));
    assert_eq!(quotas["FORWARDING_RULES"], (15.0, 0.0));

    emu.post("regions/us-central1/addresses", json!({"name": "a1"}))
        .await;
    emu.post("global/addresses", json!({"name": "g1"})).await;
    emu.post(
        "regions/us-central1/forwardingRules",
        json!({"name": "fr1"}),
    )
    .await;
    let quotas = quotas_of(&emu.get("regions/us-central1").await.1);
    assert_eq!(
        quotas["STATIC_ADDRESSES"],
        (2.0, 1.0),
        "global addresses do not count in a region"
    );
    assert_eq!(quotas["FORWARDING_RULES"], (15.0, 1.0));
    emu.post("regions/us-central1/addresses", json!({"name": "a2"}))
        .await;
    let (_, op) = emu
        .post("regions/us-central1/addresses", json!({"name": "a3"}))
        .await;
    assert_eq!(
        op["error"]["errors"][0]["message"],
        "Quota 'STATIC_ADDRESSES' exceeded.  Limit: 2.0 in region us-central1."
    );
    let quotas = quotas_of(&emu.get("regions/us-central1").await.1);
    assert_eq!(quotas["STATIC_ADDRESSES"], (2.0, 2.0));
    emu.delete("regions/us-central1/addresses/a1").await;
    emu.delete("regions/us-central1/forwardingRules/fr1").await;
    let quotas = quotas_of(&emu.get("regions/us-central1").await.1);
    assert_eq!(quotas["STATIC_ADDRESSES"], (2.0, 1.0));
    assert_eq!(quotas["FORWARDING_RULES"], (15.0, 0.0));

    // `fields` works as on every other get.
    let (_, partial) = emu
        .get("regions/us-central1?fields=name,quotas(metric)")
        .await;
    assert_eq!(
        partial,
        json!({"name": "us-central1", "quotas": [{"metric": "STATIC_ADDRESSES"}, {"metric": "FORWARDING_RULES"}]})
    );
}

const LINK: &str = "https://www.googleapis.com/compute/v1/projects/";

#[tokio::test]
async fn regions_list_and_unknown_project_or_region_are_404() {
    let emu = Emulator::start(
        &world("").replace(
            "      - name: other\n",
            "      - name: other\n        subnetworks:\n          - {name: eu, region: europe-west1, ipCidrRange: 10.132.0.0/20}\n",
        ),
        &[],
    );
    let (status, list) = emu.get("regions").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["kind"], "compute#regionList");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["europe-west1", "us-central1"]);
    let ids: HashSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "unique ids");
    let (_, page) = emu.get("regions?maxResults=1").await;
    assert_eq!(page["items"][0]["name"], "europe-west1");
    let token = page["nextPageToken"].as_str().unwrap();
    let (_, next) = emu
        .get(&format!("regions?maxResults=1&pageToken={token}"))
        .await;
    assert_eq!(next["items"][0]["name"], "us-central1");
    assert!(next["nextPageToken"].is_null());
    let (_, filtered) = emu.get("regions?filter=name%20eq%20europe-.*").await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);

    for (path, resource) in [
        ("projects/nope".to_string(), "projects/nope".to_string()),
        (
            format!("projects/{PROJECT}/regions/mars-north1"),
            format!("projects/{PROJECT}/regions/mars-north1"),
        ),
        (
            "projects/nope/regions/us-central1".to_string(),
            "projects/nope".to_string(),
        ),
        (
            "projects/nope/regions".to_string(),
            "projects/nope".to_string(),
        ),
    ] {
        let response = emu
            .client
            .get(format!("{}/compute/v1/{path}", emu.base))
            .send()
            .await
            .unwrap();
        let (status, error) = support::decode(response).await;
        assert_eq!(status, 404, "{path}: {error}");
        assert_eq!(error["error"]["errors"][0]["reason"], "notFound");
        assert_eq!(
            error["error"]["message"],
            format!("The resource '{resource}' was not found")
        );
    }
    let stats = emu.admin(Method::GET, "stats", None).await;
    assert_eq!(stats["callsByMethod"]["compute.projects.get"], 1);
    assert_eq!(stats["callsByMethod"]["compute.regions.get"], 2);
    assert_eq!(stats["callsByMethod"]["compute.regions.list"], 5);
}

#[tokio::test]
async fn project_and_region_gets_are_reads_with_rates_faults_and_auth() {
    // The gcp profile charges them to the read group (RATE: get and list are reads).
    let emu = Emulator::start(
        &world("    rateLimits: {readsPerMinute: 3}"),
        &["--profile", "gcp", "--time-scale", "0.1"],
    );
    // A scaled window is 6 s: start early in one.
    let into_window = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 6000
    };
    while into_window() > 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let project_url = format!("{}/compute/v1/projects/{PROJECT}", emu.base);
    let mut statuses = Vec::new();
    for url in [
        project_url.clone(),
        emu.url("regions/us-central1"),
        emu.url("regions"),
        project_url.clone(),
    ] {
        let response = emu.client.get(&url).send().await.unwrap();
        let (status, body) = support::decode(response).await;
        if status == 403 {
            assert_eq!(body["error"]["errors"][0]["reason"], "rateLimitExceeded");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("read_requests"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 403], "3 reads per window");
    let stats = emu.admin(Method::GET, "stats", None).await;
    assert_eq!(stats["callsByGroup"]["read"], 4);

    // In the gcp profile an accepted insert counts at once (as the quota check counts it),
    // before its operation is DONE.
    emu.admin(
        Method::POST,
        "quotas",
        Some(json!({"project": PROJECT, "rateLimits": {"readsPerMinute": 1500}})),
    )
    .await;
    let (_, op) = emu
        .post("global/routes", route("slow", "10.30.0.0/24"))
        .await;
    assert_ne!(op["status"], "DONE");
    let response = emu.client.get(&project_url).send().await.unwrap();
    let (status, project) = support::decode(response).await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(quotas_of(&project)["ROUTES"].1, 1.0);

    let emu = Emulator::start(&world(""), &["--faults", "http500=1.0"]);
    let (status, error) = emu.get("regions/us-central1").await;
    assert_eq!(
        (status, error["error"]["errors"][0]["reason"].as_str()),
        (500, Some("backendError"))
    );

    let emu = Emulator::start(&world(""), &["--auth", "token"]);
    let response = emu
        .client
        .get(format!("{}/compute/v1/projects/{PROJECT}", emu.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

/// Every key of an aggregated list's `items`, in the order sent.
fn scopes(page: &Value) -> Vec<String> {
    page["items"].as_object().unwrap().keys().cloned().collect()
}

/// `(scope, name)` of every item on an aggregated page whose scoped lists hold `field`.
fn aggregated_names(page: &Value, field: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (scope, scoped) in page["items"].as_object().unwrap() {
        match scoped.get(field).and_then(Value::as_array) {
            Some(items) => {
                assert!(
                    !items.is_empty(),
                    "{scope}: an empty list instead of the warning"
                );
                assert!(scoped.get("warning").is_none(), "{scope}: list and warning");
                for item in items {
                    out.push((scope.clone(), item["name"].as_str().unwrap().to_string()));
                }
            }
            None => {
                assert_eq!(
                    scoped,
                    &json!({"warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": format!("There are no results for scope '{scope}' on this page."),
                        "data": [{"key": "scope", "value": scope}],
                    }}),
                    "{scope}"
                );
            }
        }
    }
    out
}

#[tokio::test]
async fn aggregated_lists_span_every_scope_in_computes_shape() {
    let emu = Emulator::start(&world(""), &[]);
    for (path, body) in [
        ("regions/us-central1/addresses", json!({"name": "addr-r"})),
        ("global/addresses", json!({"name": "addr-g"})),
        (
            "regions/us-central1/forwardingRules",
            json!({"name": "fr-1"}),
        ),
        (
            "zones/us-central1-b/targetInstances",
            json!({"name": "ti-1", "instance": "zones/us-central1-b/instances/se-2"}),
        ),
        ("zones/us-central1-a/instances/se-1/stop", json!({})),
    ] {
        let (status, op) = emu.post(path, body).await;
        assert_eq!(status, 200, "{path}: {op}");
        emu.wait_done(&op).await;
    }
    let zones = [
        "zones/us-central1-a",
        "zones/us-central1-b",
        "zones/us-central1-c",
        "zones/us-central1-f",
    ];

    let (status, page) = emu.get("aggregated/instances").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["kind"], "compute#instanceAggregatedList");
    assert_eq!(
        page["id"],
        format!("projects/{PROJECT}/aggregated/instances")
    );
    assert_eq!(
        page["selfLink"],
        format!("{LINK}{PROJECT}/aggregated/instances")
    );
    assert!(page.get("nextPageToken").is_none() && page.get("unreachables").is_none());
    assert_eq!(scopes(&page), zones);
    assert_eq!(
        aggregated_names(&page, "instances"),
        [
            ("zones/us-central1-a".to_string(), "se-1".to_string()),
            ("zones/us-central1-b".to_string(), "se-2".to_string()),
        ]
    );
    let (_, se1) = emu.get("zones/us-central1-a/instances/se-1").await;
    assert_eq!(page["items"]["zones/us-central1-a"]["instances"][0], se1);

    // Paging counts items across scopes; every scope is on every page.
    let (_, first) = emu.get("aggregated/instances?maxResults=1").await;
    assert_eq!(scopes(&first), zones);
    assert_eq!(aggregated_names(&first, "instances")[0].1, "se-1");
    let token = first["nextPageToken"].as_str().unwrap();
    let (_, second) = emu
        .get(&format!(
            "aggregated/instances?maxResults=1&pageToken={token}"
        ))
        .await;
    assert_eq!(scopes(&second), zones);
    assert_eq!(aggregated_names(&second, "instances")[0].1, "se-2");
    assert!(second.get("nextPageToken").is_none());

    // filter, and fields with the map wildcard.
    let (_, filtered) = emu
        .get("aggregated/instances?filter=status%20%3D%20TERMINATED")
        .await;
    assert_eq!(
        aggregated_names(&filtered, "instances"),
        [("zones/us-central1-a".to_string(), "se-1".to_string())]
    );
    let (_, partial) = emu
        .get(
            "aggregated/instances?maxResults=1&fields=items/*/instances(name,status),nextPageToken",
        )
        .await;
    assert_eq!(
        partial,
        json!({
            "items": {
                "zones/us-central1-a": {"instances": [{"name": "se-1", "status": "TERMINATED"}]},
                "zones/us-central1-b": {},
                "zones/us-central1-c": {},
                "zones/us-central1-f": {},
            },
            "nextPageToken": first["nextPageToken"],
        })
    );
    // gcloud's parameters.
    let (status, _) = emu
        .get("aggregated/instances?alt=json&includeAllScopes=True&maxResults=500&returnPartialSuccess=True")
        .await;
    assert_eq!(status, 200);
    let (_, all_scopes) = emu.get("aggregated/instances?includeAllScopes=true").await;
    assert_eq!(scopes(&all_scopes)[..2], ["global", "regions/us-central1"]);

    // Operations: the same operation JSON as the per-scope lists.
    let (status, ops) = emu.get("aggregated/operations").await;
    assert_eq!(status, 200, "{ops}");
    assert_eq!(ops["kind"], "compute#operationAggregatedList");
    let mut expected_scopes = vec!["global".to_string(), "regions/us-central1".to_string()];
    expected_scopes.extend(zones.iter().map(|z| z.to_string()));
    assert_eq!(scopes(&ops), expected_scopes);
    for scope in [
        "global",
        "regions/us-central1",
        "zones/us-central1-a",
        "zones/us-central1-b",
    ] {
        let (_, list) = emu.get(&format!("{scope}/operations")).await;
        assert_eq!(ops["items"][scope]["operations"], list["items"], "{scope}");
    }
    assert_eq!(aggregated_names(&ops, "operations").len(), 5);

    let (_, addresses) = emu.get("aggregated/addresses").await;
    assert_eq!(addresses["kind"], "compute#addressAggregatedList");
    assert_eq!(
        aggregated_names(&addresses, "addresses"),
        [
            ("global".to_string(), "addr-g".to_string()),
            ("regions/us-central1".to_string(), "addr-r".to_string()),
        ]
    );
    let (_, rules) = emu.get("aggregated/forwardingRules").await;
    assert_eq!(rules["kind"], "compute#forwardingRuleAggregatedList");
    assert_eq!(scopes(&rules), ["global", "regions/us-central1"]);
    assert_eq!(
        aggregated_names(&rules, "forwardingRules"),
        [("regions/us-central1".to_string(), "fr-1".to_string())]
    );
    let (_, targets) = emu.get("aggregated/targetInstances").await;
    assert_eq!(targets["kind"], "compute#targetInstanceAggregatedList");
    assert_eq!(
        aggregated_names(&targets, "targetInstances"),
        [("zones/us-central1-b".to_string(), "ti-1".to_string())]
    );

    // Bad values get the list errors; unknown collections and methods, 404 and 405.
    for query in [
        "maxResults=501",
        "maxResults=x",
        "returnPartialSuccess=maybe",
        "includeAllScopes=2",
        "orderBy=zone",
        "pageToken=not-a-token",
        "filter=name%20eq%20(",
    ] {
        let (status, error) = emu.get(&format!("aggregated/instances?{query}")).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert_eq!(error["error"]["errors"][0]["reason"], "invalid", "{query}");
    }
    let (status, _) = emu.get("aggregated/routes").await;
    assert_eq!(status, 404);
    let (status, error) = emu.post("aggregated/instances", json!({})).await;
    assert_eq!(status, 405, "{error}");
    let response = emu
        .client
        .get(format!(
            "{}/compute/v1/projects/nope/aggregated/operations",
            emu.base
        ))
        .send()
        .await
        .unwrap();
    let (status, error) = support::decode(response).await;
    assert_eq!(status, 404);
    assert_eq!(
        error["error"]["message"],
        "The resource 'projects/nope' was not found"
    );

    // A batch carries them too.
    let part = |id: usize, collection: &str| InnerRequest {
        content_id: Some(format!("agg+{id}")),
        method: "GET".into(),
        path_and_query: format!(
            "/compute/v1/projects/{PROJECT}/aggregated/{collection}?maxResults=1"
        ),
        headers: Vec::new(),
        body: Vec::new(),
    };
    let (status, replies) =
        send_batch(&emu, vec![part(1, "instances"), part(2, "operations")]).await;
    assert_eq!(status, 200);
    let mut kinds: Vec<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200);
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert!(body["nextPageToken"].is_string());
            body["kind"].as_str().unwrap().to_string()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "compute#instanceAggregatedList",
            "compute#operationAggregatedList"
        ]
    );

    let stats = emu.admin(Method::GET, "stats", None).await;
    let by_method = &stats["callsByMethod"];
    assert_eq!(by_method["compute.instances.aggregatedList"], 16);
    assert_eq!(by_method["compute.globalOperations.aggregatedList"], 3);
    assert_eq!(by_method["compute.addresses.aggregatedList"], 1);
    assert_eq!(by_method["compute.forwardingRules.aggregatedList"], 1);
    assert_eq!(by_method["compute.targetInstances.aggregatedList"], 1);
}

#[tokio::test]
async fn aggregated_lists_are_reads_with_rates_and_auth() {
    let emu = Emulator::start(
        &world("    rateLimits: {readsPerMinute: 2}"),
        &["--profile", "gcp", "--time-scale", "0.1"],
    );
    // A scaled window is 6 s: start early in one.
    let into_window = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 6000
    };
    while into_window() > 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut statuses = Vec::new();
    for path in [
        "aggregated/instances",
        "aggregated/operations",
        "aggregated/addresses",
    ] {
        let (status, body) = emu.get(path).await;
        if status == 403 {
            assert_eq!(body["error"]["errors"][0]["reason"], "rateLimitExceeded");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("read_requests"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 403], "2 reads per window");
    let stats = emu.admin(Method::GET, "stats", None).await;
    assert_eq!(stats["callsByGroup"]["read"], 3);
    assert!(stats["callsByGroup"].get("operationRead").is_none());

    let emu = Emulator::start(&world(""), &["--auth", "token"]);
    let (status, _) = emu.get("aggregated/instances").await;
    assert_eq!(status, 401);
}
