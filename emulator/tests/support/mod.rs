//! Starts gce-emulator as a separate process on a free port and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// A running emulator process, killed on drop.
pub struct Emulator {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub const PROJECT: &str = "demo-project";

/// The world most tests use.
pub fn world(extra_project_yaml: &str) -> String {
    format!(
        "projects:
  - id: demo-project
    quotas: {{ROUTES: 5000, STATIC_ROUTES_PER_NETWORK: 5000, FIREWALLS: 1000}}
{extra_project_yaml}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
      - name: other
    instances:
      - {{name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}}
      - {{name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}}
"
    )
}

impl Emulator {
    /// Starts the emulator with `world` and extra flags (auth defaults to none).
    pub fn start(world_yaml: &str, args: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().expect("tempdir");
        let world_path = dir.path().join("world.yaml");
        std::fs::write(&world_path, world_yaml).expect("writing the world");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gce-emulator"));
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--world")
            .arg(&world_path);
        if !args.contains(&"--auth") {
            command.args(["--auth", "none"]);
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting gce-emulator");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Emulator {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// `BASE/compute/v1/projects/demo-project/` + path.
    pub fn url(&self, path: &str) -> String {
        format!("{}/compute/v1/projects/{PROJECT}/{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        decode(response).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        decode(response).await
    }

    /// Any method on `BASE/compute/v1/projects/` + path (the path names its project).
    pub async fn at(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}/compute/v1/projects/{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        decode(request.send().await.expect("request")).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}/_emulator/{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, value) = decode(request.send().await.expect("admin")).await;
        assert_eq!(status, 200, "admin {path}: {value}");
        value
    }

    /// Waits on an operation until DONE (bounded).
    pub async fn wait_done(&self, op: &Value) -> Value {
        let self_link = op["selfLink"].as_str().expect("selfLink");
        let path = self_link.split_once("/compute/v1/").expect("path").1;
        let url = format!("{}/compute/v1/{path}/wait", self.base);
        for _ in 0..100 {
            let response = self.client.post(&url).send().await.expect("wait");
            let (status, body) = decode(response).await;
            assert_eq!(status, 200, "{body}");
            if body["status"] == "DONE" {
                return body;
            }
        }
        panic!("operation {} never DONE", op["name"]);
    }
}

pub async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(json!({"raw": text}))
    };
    (status, value)
}

/// A route body with a next-hop IP.
pub fn route(name: &str, dest: &str) -> Value {
    json!({"name": name, "network": "global/networks/default", "destRange": dest, "priority": 1000, "nextHopIp": "10.128.0.9"})
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
