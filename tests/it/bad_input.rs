//! The bad-input corpus of tests/fixtures/bad/ (issue 8) on the real pieces: kube-apiserver, the
//! gce-emulator process and the adc-operator binary.
//!
//! Every manifest there is applied as a user would (the YAML text itself, server-side apply with
//! strict field validation) and must either be refused by the API server with a message that
//! names the field, or be accepted and end Stalled (or Ready=False) with the reason and message
//! its header names. Meanwhile good objects converge, nothing of a bad object is written to GCP,
//! stalled objects are not retried in a loop, and the operator never crashes. A VIP claimed
//! twice stays with the object that held it first.
//!
//! A manifest starts with header comments that say what it tests and what must happen:
//!
//! ```text
//! # One line: what is wrong with it.
//! # expect: rejected | stalled | not-ready | ready
//! # field: spec.vip.address          (rejected: text the API server's message contains)
//! # reason: GuardRail                (stalled, not-ready: the condition's reason)
//! # message: allowedDestinationRanges  (stalled, not-ready: text the message contains)
//! # pending: why, and where the fix belongs   (optional: a known defect; applied by nobody)
//! ```
//!
//! Placeholders: `${NAMESPACE}` (a tenant the cloud allows), `${OTHER_TENANT}` (another one),
//! `${OTHER_NAMESPACE}` (a namespace the cloud does not allow), `${CLOUD}` (the tenants' Ready
//! GcpCloud), `${EMULATOR}` (the emulator's URL, for GcpCloud endpoints) and `${HELD_VIP}` (the
//! VIP of the good VirtualService `holder` in `${NAMESPACE}`). Bad manifests' VIPs and ranges lie
//! in 10.77.0.0/16 or outside 10.0.0.0/8; good objects use 10.78.0.0/16.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use adc_operator::api::{GcpCloud, VirtualService, VpcRoute};
use adc_testenv::{EmulatorProcess, emulator_binary};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};

use serde::Deserialize;
use serde_json::{Value, json};
use support::Plane;
use support::operator::{
    OperatorSpec, WORLD, apply, condition, emulator_collection, emulator_stats, label_tenant,
    routes_to, tenant, virtual_service, wait_ready,
};

/// This suite's control plane, shared with no other suite: its operator reconciles every GcpCloud
/// of the cluster and the test counts every write it makes.
const PLANE: Plane = Plane::BadInput;

/// The operator's `--cluster-id`: part of every ownership marker it writes.
const CLUSTER_ID: &str = "bad-input";
/// The VIP the good VirtualService `holder` serves; bad manifests try to take it.
const HELD_VIP: &str = "10.78.0.100";
/// Where every good object's VIP and destination lies.
const GOOD_RANGE: &str = "10.78.0.0/16";
/// The field manager of every apply here.
const FIELD_MANAGER: &str = "bad-input-test";
/// How long a quiet, settled operator is watched for retries.
const QUIET_WINDOW: Duration = Duration::from_secs(10);
/// The most reconciles (all kinds together) a settled operator may run in `QUIET_WINDOW`. The
/// objects that requeue soonest while stuck — a missing or stalled GcpCloud, the stalled clouds
/// themselves — come back every 30 to 60 s, guard-rail stalls every 300 s, converged objects
/// hourly: a few may fall into any 10 s window, a retry loop would not fit.
const QUIET_RECONCILES: u64 = 8;

// ----- the corpus -----

/// What must happen to a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// The API server refuses it; its message contains `field`.
    Rejected { field: String },
    /// Accepted, then Stalled=True with this reason and a message containing `message`.
    Stalled { reason: String, message: String },
    /// Accepted, then Ready=False (not Stalled) with this reason and message.
    NotReady { reason: String, message: String },
    /// Accepted, then Ready=True: tricky but valid input.
    Ready,
}

/// One manifest of the corpus.
#[derive(Debug, Clone)]
struct Case {
    file: String,
    /// What is wrong with it (the header's first line).
    what: String,
    expect: Expect,
    /// A known defect that keeps it from being applied, and where the fix belongs.
    pending: Option<String>,
    /// The manifest as written, placeholders and all.
    text: String,
}

impl Case {
    /// Whether the object should be in the API server afterwards.
    fn accepted(&self) -> bool {
        !matches!(self.expect, Expect::Rejected { .. })
    }

    /// Bad input proper: refused, stalled or not ready (not a tricky-but-valid one).
    fn bad(&self) -> bool {
        self.expect != Expect::Ready
    }
}

/// The corpus directory.
fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

const HEADER_KEYS: [&str; 5] = ["expect", "field", "reason", "message", "pending"];

/// Parses a manifest's header comments.
fn parse_case(file: &str, text: &str) -> Result<Case, String> {
    let name_ok = regex::Regex::new(r"^[0-9]{2}-[a-z0-9]+(-[a-z0-9]+)*\.yaml$").unwrap();
    if !name_ok.is_match(file) {
        return Err("the file name is not NN-short-description.yaml".into());
    }
    let key_line = regex::Regex::new(r"^([a-z]+):\s*(.*)$").unwrap();
    let mut what = None;
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        match key_line.captures(comment) {
            Some(found) => {
                let key = found[1].to_string();
                if !HEADER_KEYS.contains(&key.as_str()) {
                    return Err(format!("unknown header key {key:?}"));
                }
                let value = found[2].trim().to_string();
                if value.is_empty() {
                    return Err(format!("header {key:?} is empty"));
                }
                if keys.insert(key.clone(), value).is_some() {
                    return Err(format!("header {key:?} appears twice"));
                }
            }
            None if what.is_none() && !comment.is_empty() => what = Some(comment.to_string()),
            None => return Err(format!("a second description line: {comment:?}")),
        }
    }
    let what = what.ok_or("no description line (what is wrong with it)")?;
    let mut take = |key: &str| keys.remove(key);
    let expect = match take("expect").as_deref() {
        Some("rejected") => Expect::Rejected {
            field: take("field").ok_or("expect: rejected needs a field header")?,
        },
        Some(kind @ ("stalled" | "not-ready")) => {
            let reason = take("reason").ok_or("expect: stalled/not-ready needs a reason header")?;
            let message =
                take("message").ok_or("expect: stalled/not-ready needs a message header")?;
            if kind == "stalled" {
                Expect::Stalled { reason, message }
            } else {
                Expect::NotReady { reason, message }
            }
        }
        Some("ready") => Expect::Ready,
        Some(other) => return Err(format!("unknown expectation {other:?}")),
        None => return Err("no `# expect:` header".into()),
    };
    let pending = take("pending");
    if let Some(extra) = keys.keys().next() {
        return Err(format!(
            "header {extra:?} does not apply to this expectation"
        ));
    }
    // The manifest itself: one object of the operator's kinds, with a name.
    let head: Head = serde_yaml::from_str(text).map_err(|err| format!("not a manifest: {err}"))?;
    if !["GcpCloud", "VirtualService", "VpcRoute"].contains(&head.kind.as_str()) {
        return Err(format!("kind {:?} is not one of the operator's", head.kind));
    }
    if (head.kind == "GcpCloud") == head.metadata.namespace.is_some() {
        return Err("a GcpCloud has no namespace; the other kinds need one".into());
    }
    Ok(Case {
        file: file.to_string(),
        what,
        expect,
        pending,
        text: text.to_string(),
    })
}

/// Every manifest of the corpus, sorted by file name, each parsed or the reason it is not.
fn load_corpus() -> Vec<(String, Result<Case, String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("reading tests/fixtures/bad")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let parsed = std::fs::read_to_string(&path)
                .map_err(|err| format!("unreadable: {err}"))
                .and_then(|text| parse_case(&file, &text));
            (file, parsed)
        })
        .collect()
}

/// The corpus, every header valid (the test fails naming each file whose header is not).
fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut broken = Vec::new();
    for (file, parsed) in load_corpus() {
        match parsed {
            Ok(case) => cases.push(case),
            Err(why) => broken.push(format!("{file}: {why}")),
        }
    }
    assert!(
        broken.is_empty(),
        "tests/fixtures/bad has manifests without a valid header:\n{}",
        broken.join("\n")
    );
    cases
}

/// The part of a manifest the test needs to address it. Everything else is left to the API
/// server, duplicate keys included.
#[derive(Debug, Deserialize)]
struct Head {
    kind: String,
    metadata: HeadMeta,
}

#[derive(Debug, Deserialize)]
struct HeadMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Replaces every `${NAME}` of `vars`; any placeholder left is an error.
fn substitute(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !out.contains("${"),
        "an unknown placeholder is left in:\n{out}"
    );
    out
}

#[test]
fn corpus_is_large_enough_and_every_header_is_valid() {
    let cases = corpus();
    let active_bad = cases
        .iter()
        .filter(|c| c.bad() && c.pending.is_none())
        .count();
    assert!(
        active_bad >= 40,
        "the corpus has {active_bad} bad manifests that are checked; issue 8 asks for at least 40"
    );
    assert!(
        cases
            .iter()
            .any(|c| c.pending.is_none() && matches!(c.expect, Expect::Rejected { .. })),
        "no rejected case"
    );
    assert!(
        cases
            .iter()
            .any(|c| c.pending.is_none() && matches!(c.expect, Expect::Stalled { .. })),
        "no stalled case"
    );
    // The parser itself refuses what it should, naming why.
    let body = "apiVersion: adc.dev/v1alpha1\nkind: VpcRoute\nmetadata: {name: r, namespace: n}\n";
    for (file, text, why) in [
        ("01-x.yaml", body.to_string(), "no description line"),
        (
            "01-x.yaml",
            format!("# Bad.\n{body}"),
            "no `# expect:` header",
        ),
        (
            "01-x.yaml",
            format!("# Bad.\n# expect: rejected\n{body}"),
            "needs a field header",
        ),
        (
            "01-x.yaml",
            format!("# Bad.\n# expect: stalled\n# reasn: GuardRail\n{body}"),
            "unknown header key",
        ),
        (
            "x.yaml",
            format!("# Bad.\n# expect: ready\n{body}"),
            "NN-short-description",
        ),
    ] {
        let err = parse_case(file, &text).expect_err(why);
        assert!(err.contains(why), "{err}");
    }
}

// ----- the world -----

struct Fixture {
    emulator: EmulatorProcess,
    operator: Mutex<Child>,
    metrics_port: u16,
}

/// The CRDs, one emulator and one operator for this suite.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        PLANE.install_crds();
        let emulator = EmulatorProcess::start(
            &emulator_binary().expect("emulator"),
            WORLD,
            &["--auth", "token"],
        )
        .expect("emulator");
        let metrics_port = adc_testenv::free_port().expect("a free loopback port");
        let mut spec = OperatorSpec::shared(PLANE, &emulator, CLUSTER_ID);
        spec.args = vec!["--metrics-addr".into(), format!("127.0.0.1:{metrics_port}")];
        let operator = spec.start();
        Fixture {
            emulator,
            operator: Mutex::new(operator),
            metrics_port,
        }
    })
}

/// Percent-encodes a name for a URL path (a manifest's name may be anything a user typed).
fn url_encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Applies a manifest's YAML text as it is (server-side apply, `fieldValidation=Strict`): the
/// API server parses it, as it does for `kubectl apply --server-side`.
async fn apply_yaml(client: &Client, yaml: &str) -> Result<(), kube::Error> {
    let head: Head = serde_yaml::from_str(yaml).expect("a manifest");
    let namespace = head.metadata.namespace.as_deref();
    let url = match head.kind.as_str() {
        "GcpCloud" => GcpCloud::url_path(&(), None),
        "VirtualService" => VirtualService::url_path(&(), namespace),
        "VpcRoute" => VpcRoute::url_path(&(), namespace),
        other => panic!("cannot apply a {other}"),
    };
    let params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    let mut request = kube::core::Request::new(url)
        .patch(&url_encode(&head.metadata.name), &params, &Patch::Apply(()))
        .expect("building the apply request");
    *request.body_mut() = yaml.as_bytes().to_vec();
    client.request_text(request).await.map(|_| ())
}

/// The object a manifest names, as JSON; None when it does not exist.
async fn object_of(client: &Client, yaml: &str) -> Option<Value> {
    let head: Head = serde_yaml::from_str(yaml).expect("a manifest");
    let name = &head.metadata.name;
    let ns = head.metadata.namespace.as_deref().unwrap_or_default();
    let object = match head.kind.as_str() {
        "GcpCloud" => Api::<GcpCloud>::all(client.clone())
            .get_opt(name)
            .await
            .map(|o| o.map(|o| serde_json::to_value(o).unwrap())),
        "VirtualService" => Api::<VirtualService>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map(|o| o.map(|o| serde_json::to_value(o).unwrap())),
        "VpcRoute" => Api::<VpcRoute>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map(|o| o.map(|o| serde_json::to_value(o).unwrap())),
        other => panic!("cannot read a {other}"),
    };
    object.expect("reading an object")
}

/// `Kind namespace/name` of a manifest, and the ownership-marker fragment its GCP resources
/// would carry (`/Kind/namespace/name ` after the cloud's name).
fn identity(yaml: &str) -> (String, String) {
    let head: Head = serde_yaml::from_str(yaml).expect("a manifest");
    let ns = head.metadata.namespace.unwrap_or_default();
    (
        format!("{} {ns}/{}", head.kind, head.metadata.name),
        format!("/{}/{ns}/{} ", head.kind, head.metadata.name),
    )
}

/// Whether `status` meets `expect`; Err says what it shows instead.
fn meets(expect: &Expect, status: &Value) -> Result<(), String> {
    let found = |type_: &str| condition(status, type_);
    let describe = || format!("{:?} / {:?}", found("Ready"), found("Stalled"));
    let ok = match expect {
        Expect::Rejected { .. } => false,
        Expect::Ready => found("Ready").is_some_and(|(s, _, _)| s == "True"),
        Expect::Stalled { reason, message } => found("Stalled")
            .is_some_and(|(s, r, m)| s == "True" && &r == reason && m.contains(message.as_str())),
        Expect::NotReady { reason, message } => {
            found("Ready").is_some_and(|(s, r, m)| {
                s == "False" && &r == reason && m.contains(message.as_str())
            }) && found("Stalled").is_none_or(|(s, _, _)| s != "True")
        }
    };
    if ok { Ok(()) } else { Err(describe()) }
}

/// Sums every sample of a counter family on the operator's /metrics.
async fn metric_total(port: u16, family: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("reading /metrics")
        .text()
        .await
        .expect("the metrics text");
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{family}{{")) || line.starts_with(&format!("{family} "))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The emulator's calls by method.
async fn calls_by_method(url: &str) -> BTreeMap<String, u64> {
    serde_json::from_value(emulator_stats(url).await["callsByMethod"].clone())
        .expect("callsByMethod is a map of counts")
}

fn is_write(method: &str) -> bool {
    [".insert", ".delete", ".patch", ".update", ".start", ".stop"]
        .iter()
        .any(|verb| method.ends_with(verb))
}

/// Whether `range` (a CIDR or a bare address) lies inside 10.78.0.0/16.
fn in_good_range(range: &str) -> bool {
    let good: ipnet::Ipv4Net = GOOD_RANGE.parse().unwrap();
    range
        .parse::<ipnet::Ipv4Net>()
        .ok()
        .or_else(|| {
            range
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .map(ipnet::Ipv4Net::from)
        })
        .is_some_and(|net| good.contains(&net))
}

/// The resourceVersion of every object of `cases`, by file.
async fn resource_versions(client: &Client, cases: &[&(Case, String)]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (case, yaml) in cases {
        let object = object_of(client, yaml).await.expect("the object exists");
        out.insert(
            case.file.clone(),
            object["metadata"]["resourceVersion"].clone(),
        );
    }
    out
}

// ----- the test -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_or_stalled_and_nothing_else_suffers() {
    let started = Instant::now();
    let cases = corpus();
    let fixture = fixture();
    let url = fixture.emulator.base_url.clone();
    let client = PLANE.admin_client().await;

    // A tenant with its Ready cloud, a second tenant (its name sorts first, so no tie-break by
    // name favours the holder) and a namespace the cloud does not allow.
    let (namespace, cloud) = tenant(&client, &url, "bad-input", json!({})).await;
    let other_tenant = support::test_namespace(&client, "bad-hijack").await;
    label_tenant(&client, &other_tenant).await;
    let outsider = support::test_namespace(&client, "bad-outsider").await;
    let vars: BTreeMap<&str, String> = [
        ("NAMESPACE", namespace.clone()),
        ("OTHER_TENANT", other_tenant.clone()),
        ("OTHER_NAMESPACE", outsider),
        ("CLOUD", cloud.clone()),
        ("EMULATOR", url.clone()),
        ("HELD_VIP", HELD_VIP.to_string()),
    ]
    .into();

    // The VIP's first holder converges before anyone else claims it.
    apply(
        &client,
        virtual_service(
            "holder",
            &cloud,
            HELD_VIP,
            &[("se-1", "us-central1-a"), ("se-2", "us-central1-b")],
            "ActiveActive",
        ),
        Some(&namespace),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&namespace), "holder").await;
    let held = format!("{HELD_VIP}/32");
    let held_routes = routes_to(&url, &held).await;
    assert_eq!(
        held_routes.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["se-1", "se-2"],
        "{held_routes:?}"
    );

    // Good objects applied alongside the bad ones must converge all the same.
    let mut good: Vec<(String, Value)> = vec![
        (
            "good-standby".into(),
            virtual_service(
                "good-standby",
                &cloud,
                "10.78.0.101",
                &[("se-3", "us-central1-c"), ("se-4", "us-central1-a")],
                "ActiveStandby",
            ),
        ),
        (
            "good-route".into(),
            json!({"apiVersion": "adc.dev/v1alpha1", "kind": "VpcRoute",
                   "metadata": {"name": "good-route"},
                   "spec": {"cloudRef": cloud, "destRange": "10.78.1.0/24",
                            "nextHop": {"ip": "10.128.0.20"}}}),
        ),
    ];
    for (_, manifest) in &mut good {
        manifest["metadata"]["namespace"] = json!(namespace);
    }

    // Every manifest at once, as a user's `kubectl apply -f tests/fixtures/bad/` would.
    let active: Vec<(Case, String)> = cases
        .iter()
        .filter(|c| c.pending.is_none())
        .map(|c| (c.clone(), substitute(&c.text, &vars)))
        .collect();
    let good_yaml: Vec<String> = good
        .iter()
        .map(|(_, manifest)| serde_yaml::to_string(manifest).unwrap())
        .collect();
    let applies = futures::future::join_all(
        active
            .iter()
            .map(|(_, yaml)| yaml)
            .chain(&good_yaml)
            .map(|yaml| apply_yaml(&client, yaml)),
    )
    .await;
    let (bad_results, good_results) = applies.split_at(active.len());
    for ((name, _), result) in good.iter().zip(good_results) {
        assert!(result.is_ok(), "good {name}: {result:?}");
    }

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for ((case, yaml), result) in active.iter().zip(bad_results) {
        match (&case.expect, result) {
            (Expect::Rejected { field }, Err(kube::Error::Api(status))) => {
                let field = substitute(field, &vars);
                // Server-side apply reports a patch that does not fit the schema (an unknown
                // field, a wrong type) as a 500 (kubernetes/kubernetes#139253); it is still a
                // refusal of the input, with the field named.
                let refused = (400..500).contains(&status.code)
                    || (status.code == 500
                        && status
                            .message
                            .starts_with("failed to create typed patch object"));
                if !refused || !status.message.contains(&field) {
                    failures.push(format!(
                        "{}: refused with {} but the message does not name {field:?}: {}",
                        case.file, status.code, status.message
                    ));
                }
                if object_of(&client, yaml).await.is_some() {
                    failures.push(format!("{}: refused, yet the object exists", case.file));
                }
                report.push(format!(
                    "{} ({}): rejected: {}",
                    case.file, case.what, status.message
                ));
            }
            (Expect::Rejected { .. }, other) => {
                failures.push(format!("{}: should be refused, got {other:?}", case.file))
            }
            (_, Err(err)) => failures.push(format!("{}: should be accepted: {err}", case.file)),
            (_, Ok(())) => {}
        }
    }

    // Each accepted manifest reaches its expected state; the good objects become Ready.
    let deadline = Instant::now() + Duration::from_secs(45);
    let accepted: Vec<&(Case, String)> = active.iter().filter(|(c, _)| c.accepted()).collect();
    let outcomes = futures::future::join_all(accepted.iter().map(|(case, yaml)| {
        let client = client.clone();
        let vars = &vars;
        async move {
            let expect = match &case.expect {
                Expect::Stalled { reason, message } => Expect::Stalled {
                    reason: reason.clone(),
                    message: substitute(message, vars),
                },
                Expect::NotReady { reason, message } => Expect::NotReady {
                    reason: reason.clone(),
                    message: substitute(message, vars),
                },
                other => other.clone(),
            };
            loop {
                let status = object_of(&client, yaml).await.map(|o| o["status"].clone());
                let verdict = match &status {
                    Some(status) => meets(&expect, status),
                    None => Err("the object does not exist".into()),
                };
                match verdict {
                    Ok(()) => {
                        let shown = status
                            .as_ref()
                            .and_then(|s| condition(s, "Ready"))
                            .map(|(s, r, m)| format!("Ready={s} {r}: {m}"))
                            .unwrap_or_default();
                        return Ok(format!("{} ({}): {shown}", case.file, case.what));
                    }
                    Err(why) if Instant::now() > deadline => {
                        return Err(format!("{}: expected {expect:?}, shows {why}", case.file));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
    }))
    .await;
    for outcome in outcomes {
        match outcome {
            Ok(line) => report.push(line),
            Err(line) => failures.push(line),
        }
    }
    for name in ["holder", "good-standby", "unicode-annotations"] {
        wait_ready::<VirtualService>(&client, Some(&namespace), name).await;
    }
    wait_ready::<VpcRoute>(&client, Some(&namespace), "good-route").await;
    report.sort();
    for case in cases.iter().filter(|c| c.pending.is_some()) {
        report.push(format!(
            "{} ({}): PENDING, not applied: {}",
            case.file,
            case.what,
            case.pending.as_deref().unwrap_or_default()
        ));
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!(
        "{} manifests checked ({} pending) in {:.1} s",
        active.len(),
        cases.len() - active.len(),
        started.elapsed().as_secs_f64()
    );

    // Nothing of a bad object is in GCP: every resource belongs to a good object (by its
    // ownership marker) and lies in the good range.
    let good_markers: Vec<String> = active
        .iter()
        .filter(|(c, _)| !c.bad())
        .map(|(_, yaml)| identity(yaml).1)
        .chain(
            ["holder", "good-standby"]
                .iter()
                .map(|n| format!("/VirtualService/{namespace}/{n} ")),
        )
        .chain(std::iter::once(format!(
            "/VpcRoute/{namespace}/good-route "
        )))
        .collect();
    let bad_markers: Vec<(String, String)> = active
        .iter()
        .filter(|(c, _)| c.bad())
        .map(|(_, yaml)| identity(yaml))
        .collect();
    for collection in ["routes", "firewalls", "addresses", "forwardingRules"] {
        for resource in emulator_collection(&url, collection).await {
            let description = resource["description"].as_str().unwrap_or_default();
            for (who, marker) in &bad_markers {
                assert!(
                    !description.contains(marker.as_str()),
                    "{collection} {} belongs to bad {who}",
                    resource["name"]
                );
            }
            assert!(
                good_markers
                    .iter()
                    .any(|m| description.contains(m.as_str())),
                "{collection} {} is no good object's: {description}",
                resource["name"]
            );
            let ranges: Vec<&str> = resource["destRange"]
                .as_str()
                .into_iter()
                .chain(
                    resource["destinationRanges"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                )
                .chain(resource["address"].as_str())
                .collect();
            for range in ranges {
                assert!(
                    in_good_range(range),
                    "{collection} {}: {range} is not a good object's",
                    resource["name"]
                );
            }
        }
    }
    // The write counters: exactly the good objects' inserts, no delete, no refused write. A
    // VirtualService is one route per engine and one firewall rule; a VpcRoute one route.
    let (mut good_routes, mut good_firewalls) = (0, 0);
    let ready_fixtures = active
        .iter()
        .filter(|(c, _)| !c.bad())
        .map(|(_, yaml)| serde_yaml::from_str::<Value>(yaml).unwrap());
    let holder = virtual_service(
        "holder",
        &cloud,
        HELD_VIP,
        &[("se-1", ""), ("se-2", "")],
        "",
    );
    for manifest in good
        .iter()
        .map(|(_, m)| m.clone())
        .chain(ready_fixtures)
        .chain([holder])
    {
        match manifest["kind"].as_str() {
            Some("VirtualService") => {
                good_routes += manifest["spec"]["serviceEngines"].as_array().unwrap().len() as u64;
                good_firewalls += 1;
            }
            _ => good_routes += 1,
        }
    }
    let calls = calls_by_method(&url).await;
    let count = |method: &str| calls.get(method).copied().unwrap_or_default();
    let writes: BTreeMap<&String, &u64> = calls.iter().filter(|(m, _)| is_write(m)).collect();
    assert_eq!(
        (
            count("compute.routes.insert"),
            count("compute.firewalls.insert")
        ),
        (good_routes, good_firewalls),
        "GCP writes: {writes:?}"
    );
    assert_eq!(
        writes.values().copied().sum::<u64>(),
        good_routes + good_firewalls,
        "no other write: {writes:?}"
    );

    // A VIP claimed twice: the first holder keeps exactly its routes.
    assert_eq!(routes_to(&url, &held).await, held_routes);
    wait_ready::<VirtualService>(&client, Some(&namespace), "holder").await;

    // Settled, the operator leaves stuck objects alone: few reconciles, none failing, no status
    // rewritten, no GCP call but the instance poll (and the stalled clouds' network check).
    let port = fixture.metrics_port;
    let stuck: Vec<&(Case, String)> = accepted.iter().copied().filter(|(c, _)| c.bad()).collect();
    // A GcpCloud's status.progress follows its objects within one progress period (5 s): the
    // stalled clouds' last counts may still be on their way. Settled means no write for longer
    // than that; the quiet window then proves nothing is written again.
    let mut settled = resource_versions(&client, &stuck).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let now = resource_versions(&client, &stuck).await;
        if now == settled {
            break;
        }
        settled = now;
    }
    let reconciles_before = metric_total(port, "adc_operator_reconciles_total").await;
    let failures_before = metric_total(port, "adc_operator_reconcile_failures_total").await;
    let calls_before = calls_by_method(&url).await;
    let versions_before = resource_versions(&client, &stuck).await;
    tokio::time::sleep(QUIET_WINDOW).await;
    let reconciles = metric_total(port, "adc_operator_reconciles_total").await - reconciles_before;
    let failed =
        metric_total(port, "adc_operator_reconcile_failures_total").await - failures_before;
    let calls_after = calls_by_method(&url).await;
    let versions_after = resource_versions(&client, &stuck).await;
    let new_calls: BTreeMap<&String, u64> = calls_after
        .iter()
        .map(|(m, n)| (m, n - calls_before.get(m).copied().unwrap_or_default()))
        .filter(|(_, n)| *n > 0)
        .collect();
    println!(
        "quiet window of {} s: {reconciles} reconciles, {failed} failed, GCP calls {new_calls:?}",
        QUIET_WINDOW.as_secs()
    );
    assert!(
        reconciles <= QUIET_RECONCILES,
        "{reconciles} reconciles in {} s of quiet: a retry loop",
        QUIET_WINDOW.as_secs()
    );
    assert_eq!(failed, 0, "reconciles failing in the quiet window");
    let allowed_reads: BTreeSet<&str> = [
        "compute.instances.aggregatedList",
        "compute.instances.list",
        "compute.networks.get",
    ]
    .into();
    for method in new_calls.keys() {
        assert!(
            allowed_reads.contains(method.as_str()),
            "GCP call {method} in the quiet window: {new_calls:?}"
        );
    }
    assert_eq!(
        versions_after, versions_before,
        "stalled objects were rewritten in the quiet window"
    );

    // Never a crash.
    let mut operator = fixture.operator.lock().unwrap();
    assert!(
        operator.try_wait().unwrap().is_none(),
        "the operator exited"
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
}
