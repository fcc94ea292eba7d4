//! The Argo CD health check in `docs/argocd-health.lua`, run in a real Lua 5.4 interpreter
//! against whole objects in the shapes the operator writes (`tests/fixtures/status/`, captured
//! from `make demo`'s API server with the operator and emulator), and the guarantee that
//! `docs/gitops.md` carries exactly the tested script.
//!
//! Argo CD runs a check from `argocd-cm` with gopher-lua, the global `obj` decoded from the
//! object's JSON, and only the base, package and table libraries (plus a safe `os`) unless
//! `useOpenLibs` is set; the interpreter here opens the same libraries, so a script that reached
//! for `string` or `math` fails here too. gopher-lua prints an integral number without a
//! fraction (`2`); so does Lua 5.4 for integers, which is why JSON integers become Lua integers.

use std::collections::BTreeSet;
use std::path::PathBuf;

use adc_operator::api::{Condition, GcpCloud, VirtualService, VpcRoute};
use adc_operator::controller::status::{FIELD_MANAGER, Phase, apply_phase};
use mlua::{Lua, LuaOptions, StdLib, Table, Value};

use crate::support;
use serde_json::{Value as Json, json};

/// Each fixture, the health Argo CD must show, and a part of its message.
const CASES: &[(&str, &str, &str)] = &[
    (
        "virtualservice-ready.json",
        "Healthy",
        "2 route(s) to se-1, se-2",
    ),
    (
        "virtualservice-progressing-waiting.json",
        "Progressing",
        "GcpCloud 'staging' is not Ready yet",
    ),
    (
        "virtualservice-no-healthy-engine.json",
        "Progressing",
        "no service engine is RUNNING (se-1, se-2 down)",
    ),
    (
        "virtualservice-stalled-guardrail.json",
        "Degraded",
        "us-central1-a/se-9 do not exist in the project; fix spec.serviceEngines",
    ),
    (
        "virtualservice-stale-generation.json",
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    (
        "virtualservice-no-status.json",
        "Progressing",
        "Waiting for the operator to observe generation 1",
    ),
    (
        "virtualservice-awaiting-approval.json",
        "Suspended",
        "adc.dev/approved-plan=3f9a1c2b7d4e5a60",
    ),
    (
        "virtualservice-paused.json",
        "Suspended",
        "management policy Paused",
    ),
    ("vpcroute-ready.json", "Healthy", "in place"),
    (
        "vpcroute-stalled-quota.json",
        "Degraded",
        "QUOTA_EXCEEDED: Quota 'ROUTES' exceeded",
    ),
    (
        "gcpcloud-ready.json",
        "Healthy",
        "network 'default' reachable; inventory refreshed",
    ),
    (
        "gcpcloud-unreachable.json",
        "Progressing",
        "cannot reach Compute for project 'staging-project'",
    ),
];

/// The kinds the check is configured for in `argocd-cm`.
const KINDS: [&str; 3] = ["GcpCloud", "VirtualService", "VpcRoute"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> String {
    std::fs::read_to_string(root().join("docs/argocd-health.lua")).unwrap()
}

fn fixture(name: &str) -> Json {
    let path = root().join("tests/fixtures/status").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// JSON as Argo CD hands it to Lua: objects and arrays as tables, numbers as numbers.
fn to_lua(lua: &Lua, json: &Json) -> mlua::Result<Value> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Json::Object(fields) => {
            let table = lua.create_table()?;
            for (key, value) in fields {
                table.raw_set(key.as_str(), to_lua(lua, value)?)?;
            }
            Value::Table(table)
        }
    })
}

/// What the script returns for `object`: (hs.status, hs.message).
fn health_of(script: &str, object: &Json) -> (String, String) {
    // The package library reads LUA_PATH and LUA_CPATH with libc's getenv.
    let lua = {
        let _env = support::LIBC_ENV.read();
        Lua::new_with(StdLib::PACKAGE | StdLib::TABLE, LuaOptions::default()).unwrap()
    };
    lua.globals()
        .set("obj", to_lua(&lua, object).unwrap())
        .unwrap();
    let hs: Table = lua
        .load(script)
        .set_name("@docs/argocd-health.lua")
        .eval()
        .unwrap_or_else(|e| {
            let (kind, name) = (&object["kind"], &object["metadata"]["name"]);
            panic!("the health check failed on {kind} {name}: {e}")
        });
    let status: String = hs.get("status").unwrap();
    let message: Option<String> = hs.get("message").unwrap();
    assert!(
        ["Healthy", "Progressing", "Degraded", "Suspended"].contains(&status.as_str()),
        "Argo CD turns hs.status {status:?} into Unknown"
    );
    (status, message.unwrap_or_default())
}

#[test]
fn every_fixture_gets_the_expected_health() {
    let script = script();
    let mut reached = BTreeSet::new();
    for (name, want_status, want_message) in CASES {
        let (status, message) = health_of(&script, &fixture(name));
        assert_eq!(status, *want_status, "{name}: {message}");
        assert!(
            message.contains(want_message),
            "{name}: message {message:?} lacks {want_message:?}"
        );
        reached.insert(status);
    }
    for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(reached.contains(status), "no fixture is {status}");
    }
}

#[test]
fn a_generation_is_printed_as_an_integer() {
    let script = script();
    for name in [
        "virtualservice-stale-generation.json",
        "virtualservice-no-status.json",
    ] {
        let object = fixture(name);
        let generation = object["metadata"]["generation"].as_i64().unwrap();
        let (_, message) = health_of(&script, &object);
        assert_eq!(
            message,
            format!("Waiting for the operator to observe generation {generation}")
        );
    }
}

#[test]
fn every_fixture_has_a_case() {
    let listed: BTreeSet<&str> = CASES.iter().map(|c| c.0).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(root().join("tests/fixtures/status"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let on_disk: BTreeSet<&str> = on_disk.iter().map(String::as_str).collect();
    assert_eq!(listed, on_disk);
}

/// The three conditions apply_phase writes for the phase the fixture's conditions say.
fn conditions_from_apply_phase(conditions: &[Condition], generation: Option<i64>) -> Vec<Json> {
    let find = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    };
    let (ready, reconciling, stalled) = (find("Ready"), find("Reconciling"), find("Stalled"));
    let phase = match (
        ready.status.as_str(),
        reconciling.status.as_str(),
        stalled.status.as_str(),
    ) {
        ("True", "False", "False") => Phase::ready(&ready.reason, ready.message.clone()),
        ("False", "True", "False") => {
            Phase::progressing(&reconciling.reason, reconciling.message.clone())
        }
        ("False", "False", "True") => Phase::stalled(&stalled.reason, stalled.message.clone()),
        ("False", "False", "False") => Phase::suspended(&ready.reason, ready.message.clone()),
        other => panic!("no phase writes Ready/Reconciling/Stalled = {other:?}"),
    };
    let mut written = Vec::new();
    apply_phase(&mut written, &phase, generation);
    written
        .iter()
        .map(|c| without_transition_time(serde_json::to_value(c).unwrap()))
        .collect()
}

fn without_transition_time(mut condition: Json) -> Json {
    condition
        .as_object_mut()
        .unwrap()
        .remove("lastTransitionTime");
    condition
}

/// A fixture's status read through the operator's own types: the status as those types write
/// it, its conditions and its observedGeneration; None without a status.
fn typed_status(name: &str, object: &Json) -> Option<(Json, Vec<Condition>, Option<i64>)> {
    fn split<S: serde::Serialize>(
        status: Option<S>,
        parts: impl Fn(&S) -> (Vec<Condition>, Option<i64>),
    ) -> Option<(Json, Vec<Condition>, Option<i64>)> {
        status.map(|s| {
            let (conditions, observed) = parts(&s);
            (serde_json::to_value(&s).unwrap(), conditions, observed)
        })
    }
    fn parse<K: serde::de::DeserializeOwned>(name: &str, object: &Json) -> K {
        serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
    match object["kind"].as_str().unwrap() {
        "VirtualService" => split(parse::<VirtualService>(name, object).status, |s| {
            (s.conditions.clone(), s.observed_generation)
        }),
        "VpcRoute" => split(parse::<VpcRoute>(name, object).status, |s| {
            (s.conditions.clone(), s.observed_generation)
        }),
        "GcpCloud" => split(parse::<GcpCloud>(name, object).status, |s| {
            (s.conditions.clone(), s.observed_generation)
        }),
        other => panic!("{name}: kind {other} is none of {KINDS:?}"),
    }
}

/// The fixtures deserialize into the operator's own types, hold no status field those types do
/// not write, and their conditions are exactly what `apply_phase` writes: the check is tested on
/// what Argo CD will see.
#[test]
fn fixtures_have_the_operators_shape() {
    for (name, _, _) in CASES {
        let object = fixture(name);
        assert_eq!(object["apiVersion"], "adc.dev/v1alpha1", "{name}");
        assert!(object["metadata"]["name"].is_string(), "{name}");
        assert!(object["metadata"]["generation"].is_i64(), "{name}");
        assert!(object["spec"].is_object(), "{name}");
        let Some((status, conditions, observed)) = typed_status(name, &object) else {
            assert!(object.get("status").is_none(), "{name}");
            continue;
        };
        assert_eq!(
            status, object["status"],
            "{name}: a field the types do not write"
        );
        assert!(
            observed.is_some(),
            "{name}: the operator always writes observedGeneration"
        );
        let expected = conditions_from_apply_phase(&conditions, observed);
        let actual: Vec<Json> = object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .map(without_transition_time)
            .collect();
        assert_eq!(actual, expected, "{name}");
    }
}

/// The doc's argocd-cm block, parsed as YAML, holds the tested script for each kind.
#[test]
fn the_doc_carries_the_tested_script() {
    let script = script();
    let doc = std::fs::read_to_string(root().join("docs/gitops.md")).unwrap();
    assert!(
        doc.contains(&script),
        "docs/gitops.md must include docs/argocd-health.lua verbatim"
    );
    let mut configmaps = 0;
    for block in yaml_blocks(&doc) {
        for document in serde_yaml::Deserializer::from_str(&block) {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("a YAML block in docs/gitops.md: {e}\n{block}"));
            if value["kind"] != "ConfigMap" || value["metadata"]["name"] != "argocd-cm" {
                continue;
            }
            configmaps += 1;
            for kind in KINDS {
                let key = format!("resource.customizations.health.adc.dev_{kind}");
                assert_eq!(
                    value["data"][key.as_str()].as_str(),
                    Some(script.as_str()),
                    "{key} in docs/gitops.md differs from docs/argocd-health.lua"
                );
            }
        }
    }
    assert_eq!(configmaps, 1, "docs/gitops.md has one argocd-cm example");
}

/// The fenced ```yaml blocks of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```yaml block");
    blocks
}

#[test]
fn the_doc_names_the_status_field_manager() {
    let doc = std::fs::read_to_string(root().join("docs/gitops.md")).unwrap();
    assert!(doc.contains(&format!("`{FIELD_MANAGER}`")));
}

/// Statuses the operator does not write but Argo CD may still see: the check stays sensible.
#[test]
fn edge_cases() {
    let script = script();
    let ready = fixture("virtualservice-ready.json");

    let mut no_observed = ready.clone();
    no_observed["status"]
        .as_object_mut()
        .unwrap()
        .remove("observedGeneration");
    assert_eq!(
        health_of(&script, &no_observed),
        (
            "Progressing".into(),
            "Waiting for the operator to observe generation 1".into()
        )
    );

    let mut no_conditions = ready.clone();
    no_conditions["status"]
        .as_object_mut()
        .unwrap()
        .remove("conditions");
    assert_eq!(
        health_of(&script, &no_conditions),
        (
            "Progressing".into(),
            "Waiting for the operator to report Ready".into()
        )
    );

    let mut all_false = ready.clone();
    for condition in all_false["status"]["conditions"].as_array_mut().unwrap() {
        condition["status"] = json!("False");
    }
    assert_eq!(health_of(&script, &all_false).0, "Progressing");

    // Stalled wins over a Ready=True left behind; an empty message falls back to the reason.
    let mut stalled = ready.clone();
    for condition in stalled["status"]["conditions"].as_array_mut().unwrap() {
        if condition["type"] == "Stalled" {
            condition["status"] = json!("True");
        }
    }
    assert_eq!(
        health_of(&script, &stalled),
        ("Degraded".into(), "Synced".into())
    );

    // Ahead is not behind: an observedGeneration past metadata.generation does not wait.
    let mut ahead = ready.clone();
    ahead["status"]["observedGeneration"] = json!(3);
    assert_eq!(health_of(&script, &ahead).0, "Healthy");

    let mut no_generation = fixture("virtualservice-no-status.json");
    no_generation["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("generation");
    assert_eq!(
        health_of(&script, &no_generation),
        (
            "Progressing".into(),
            "Waiting for the operator to report status".into()
        )
    );
}
