//! `adc-operator plan` on the command line: manifests read from files and directories, and the
//! plan ([`crate::controller::preview`]) printed as a table, JSON or YAML. Exit codes fit CI as
//! `terraform plan -detailed-exitcode` does: 0 no change, 2 changes, 1 an error.

use std::path::Path;

use serde_json::Value;

use crate::controller::preview::{CloudPlan, Preview, counts};

/// The exit code of a plan with changes.
pub const EXIT_CHANGES: i32 = 2;

/// The documents of every `.yaml`, `.yml` and `.json` file of `paths` (directories are read,
/// not recursively, in name order). An empty document is skipped; a document that is not a
/// mapping is an error naming the file.
pub fn read_manifests(paths: &[std::path::PathBuf]) -> Result<Vec<Value>, String> {
    let mut manifests = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("-f {}: {e}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            files.sort();
            for file in files {
                manifests.extend(read_file(&file)?);
            }
        } else {
            manifests.extend(read_file(path)?);
        }
    }
    Ok(manifests)
}

fn read_file(path: &Path) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).map_err(|e| format!("-f {}: {e}", path.display()))?;
    let mut documents = Vec::new();
    for (at, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| format!("{} document {}: {e}", path.display(), at + 1))?;
        match value {
            Value::Null => {}
            Value::Object(_) => documents.push(value),
            _ => {
                return Err(format!(
                    "{} document {}: not a Kubernetes object",
                    path.display(),
                    at + 1
                ));
            }
        }
    }
    Ok(documents)
}

/// `adc-operator import`'s output: a header saying what was read, the manifests as YAML
/// documents, and what was not mapped as comments at the end.
pub fn import_yaml(
    cloud: &crate::plan::CloudView,
    found: &crate::plan::import::Import,
) -> Result<String, serde_yaml::Error> {
    let mut out = format!(
        "# adc-operator import: GcpCloud {}, project {}, network {}\n# Review, then `adc-operator plan -f` this file: it should show only adoptions.\n",
        cloud.cloud, cloud.project, cloud.network
    );
    for manifest in &found.manifests {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(manifest)?);
    }
    if !found.unmapped.is_empty() {
        out.push_str(
            "# Not mapped (left alone; write these by hand if the operator should own them):\n",
        );
        for (resource, reason) in &found.unmapped {
            out.push_str(&format!("#   {resource}: {reason}\n"));
        }
    }
    Ok(out)
}

/// The plan as a table, one section per cloud.
pub fn table(preview: &Preview) -> String {
    let mut out = String::new();
    for cloud in &preview.clouds {
        section(&mut out, cloud);
    }
    let total = |op: &str| -> usize {
        preview
            .clouds
            .iter()
            .map(|c| counts(c).get(op).copied().unwrap_or(0))
            .sum()
    };
    out.push_str(&format!(
        "Plan: {} to insert, {} to replace, {} to delete, {} to adopt.\n",
        total("insert"),
        total("replace"),
        total("delete"),
        total("adopt")
    ));
    out
}

fn section(out: &mut String, cloud: &CloudPlan) {
    out.push_str(&format!(
        "GcpCloud {} (project {}, network {}, policy {})\n",
        cloud.cloud, cloud.project, cloud.network, cloud.policy
    ));
    if cloud.changes.is_empty() {
        out.push_str("  no changes\n");
    } else {
        let width = |f: &dyn Fn(&crate::controller::preview::Change) -> usize| {
            cloud.changes.iter().map(f).max().unwrap_or(0)
        };
        let (op_w, res_w, detail_w) = (
            width(&|c| c.op.len()).max(2),
            width(&|c| c.resource.len()).max(8),
            width(&|c| c.detail.len()).max(6),
        );
        out.push_str(&format!(
            "  {:op_w$}  {:res_w$}  {:detail_w$}  OWNER\n",
            "OP", "RESOURCE", "DETAIL"
        ));
        for change in &cloud.changes {
            let held = if change.awaiting_approval {
                "  (awaiting approval)"
            } else {
                ""
            };
            out.push_str(&format!(
                "  {:op_w$}  {:res_w$}  {:detail_w$}  {}{held}\n",
                change.op, change.resource, change.detail, change.owner
            ));
        }
    }
    for refusal in &cloud.refused {
        out.push_str(&format!(
            "  refused  {}: {}\n",
            refusal.object, refusal.reason
        ));
    }
    for paused in &cloud.paused {
        out.push_str(&format!(
            "  paused   {paused}: neither planned nor written\n"
        ));
    }
    for object in cloud
        .objects
        .iter()
        .filter(|o| o.policy == "Observe" && o.changes > 0)
    {
        out.push_str(&format!(
            "  approve  {}: adc.dev/approved-plan={}\n",
            object.object, object.hash
        ));
    }
    if !cloud.quota.is_empty() {
        let quota: Vec<String> = cloud
            .quota
            .iter()
            .map(|q| format!("{} {} → {} of {}", q.metric, q.usage, q.after, q.limit))
            .collect();
        out.push_str(&format!("  quota    {}\n", quota.join("; ")));
    }
    if cloud.writes > 0 {
        out.push_str(&format!(
            "  time     at least {:.1} s: {} write(s) at the cloud's rateLimit.writesPerMinute\n",
            cloud.estimated_seconds, cloud.writes
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::preview::{Change, ObjectPlan, QuotaLine, Refusal};

    fn plan() -> Preview {
        Preview {
            clouds: vec![CloudPlan {
                cloud: "prod".into(),
                project: "acme".into(),
                network: "vpc".into(),
                policy: "Full".into(),
                changes: vec![Change {
                    op: "insert".into(),
                    resource: "global/routes/adc-1".into(),
                    detail: "10.1.0.5/32 via se-1 priority 2000".into(),
                    owner: "VirtualService shop/web".into(),
                    awaiting_approval: true,
                }],
                refused: vec![Refusal {
                    object: "VirtualService shop/bad".into(),
                    reason: "VIP 10.128.0.5 lies inside subnetwork default; fix spec.vip.address"
                        .into(),
                }],
                paused: vec!["VpcRoute net/r".into()],
                objects: vec![ObjectPlan {
                    object: "VirtualService shop/web".into(),
                    policy: "Observe".into(),
                    hash: "0123456789abcdef".into(),
                    changes: 1,
                }],
                quota: vec![QuotaLine {
                    metric: "ROUTES".into(),
                    limit: 250.0,
                    usage: 10.0,
                    after: 11.0,
                }],
                writes: 1,
                estimated_seconds: 8.34,
            }],
        }
    }

    #[test]
    fn the_table_shows_every_change_refusal_and_approval() {
        let text = table(&plan());
        for part in [
            "GcpCloud prod (project acme, network vpc, policy Full)",
            "insert  global/routes/adc-1",
            "VirtualService shop/web  (awaiting approval)",
            "refused  VirtualService shop/bad: VIP 10.128.0.5",
            "paused   VpcRoute net/r",
            "approve  VirtualService shop/web: adc.dev/approved-plan=0123456789abcdef",
            "quota    ROUTES 10 → 11 of 250",
            "time     at least 8.3 s",
            "Plan: 1 to insert, 0 to replace, 0 to delete, 0 to adopt.",
        ] {
            assert!(text.contains(part), "{part:?} not in\n{text}");
        }
    }

    #[test]
    fn manifests_come_from_files_and_directories() {
        let dir = std::env::temp_dir().join(format!("adc-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "kind: VirtualService\nmetadata: {name: a}\n---\n---\nkind: VpcRoute\nmetadata: {name: r}\n",
        )
        .unwrap();
        std::fs::write(dir.join("b.json"), r#"{"kind": "GcpCloud"}"#).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let read = read_manifests(std::slice::from_ref(&dir)).unwrap();
        let kinds: Vec<&str> = read.iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["VirtualService", "VpcRoute", "GcpCloud"]);
        std::fs::write(dir.join("c.yaml"), "- a list\n").unwrap();
        let err = read_manifests(&[dir.join("c.yaml")]).unwrap_err();
        assert!(err.contains("c.yaml document 1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
