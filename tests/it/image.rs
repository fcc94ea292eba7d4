//! The container image, proved without a Docker daemon.
//!
//! `hack/image-check.sh` stages what the Dockerfile's build stage copies and asks cargo whether
//! that is a workspace it can build: a Dockerfile that forgets a workspace member (or a declared
//! target file) must fail, naming what it forgot, and the real Dockerfile must pass.
//! `hack/image-assemble.sh` assembles the final stage from scratch with buildah; the binary
//! must run from inside that image (with podman, and with chroot in its unpacked root file
//! system, as the image's non-root user), the image's config must be the final stage's, and
//! hack/demo.sh with the operator run from inside the image must bring every object Ready.
//! These need buildah and podman (`make image-tools`, a prerequisite of `make test`) and build
//! the release binary the way the Dockerfile does (a no-op after `make lint`'s image-check).
//!
//! This file does not use the `adc_operator` crate: it only runs scripts and binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The image the tests assemble (the scripts' default).
const IMAGE: &str = "localhost/adc-operator:dev";

fn repo() -> PathBuf {
    adc_testenv::repo_root()
}

/// A command for `hack/SCRIPT` without the variables cargo sets for this test (CARGO_PKG_NAME,
/// CARGO_MANIFEST_DIR, ...): the scripts run cargo, and build scripts such as ring's rerun when
/// those change, which would rebuild most of the workspace for nothing.
fn script(path: PathBuf) -> Command {
    let mut command = Command::new(path);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_BIN_EXE_",
            "CARGO_CFG_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref());
        if set_by_cargo {
            command.env_remove(name.as_ref());
        }
    }
    command
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `hack/image-check.sh --metadata-only --dockerfile DOCKERFILE`.
fn image_check_metadata(dockerfile: &Path) -> Output {
    script(repo().join("hack/image-check.sh"))
        .arg("--metadata-only")
        .arg("--dockerfile")
        .arg(dockerfile)
        .output()
        .expect("running hack/image-check.sh")
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The real Dockerfile with the line `line` replaced by `replacement` (removed when it is empty),
/// in cargo's temporary directory for tests; panics when the Dockerfile has no such line (so that
/// a test of a broken copy cannot pass on a Dockerfile that never had it).
fn dockerfile_with(line: &str, replacement: &[&str]) -> TempFile {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert_eq!(
        dockerfile.lines().filter(|l| l.trim() == line).count(),
        1,
        "the Dockerfile must have exactly one line `{line}`"
    );
    let edited: Vec<&str> = dockerfile
        .lines()
        .flat_map(|l| {
            if l.trim() == line {
                replacement.to_vec()
            } else {
                vec![l]
            }
        })
        .collect();
    let name: String = line
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("Dockerfile.{}.without-{name}", std::process::id()));
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    TempFile(path)
}

/// image-check fails on the Dockerfile with `line` replaced by `replacement`, saying `message`.
fn assert_check_names(line: &str, replacement: &[&str], message: &str) {
    let broken = dockerfile_with(line, replacement);
    let output = image_check_metadata(&broken.0);
    let text = text(&output);
    assert!(
        !output.status.success(),
        "image-check passed a Dockerfile without `{line}`:\n{text}"
    );
    assert!(
        text.contains(message),
        "image-check failed without `{line}` but did not say `{message}`:\n{text}"
    );
}

#[test]
fn a_build_stage_without_the_bench_member_fails_naming_it() {
    assert_check_names(
        "COPY bench ./bench",
        &[],
        "image-check: the Dockerfile's build stage does not copy 'bench' (workspace member)",
    );
}

#[test]
fn a_build_stage_without_the_batch_member_fails_naming_it() {
    assert_check_names(
        "COPY batch ./batch",
        &[],
        "image-check: the Dockerfile's build stage does not copy 'batch' (workspace member)",
    );
}

#[test]
fn a_build_stage_without_a_declared_bench_file_fails_naming_it() {
    // emulator/Cargo.toml declares the bench `throughput` (benches/throughput.rs): a stage that
    // copies the emulator's manifest and sources but not its benches must be refused.
    assert_check_names(
        "COPY emulator ./emulator",
        &[
            "COPY emulator/Cargo.toml ./emulator/Cargo.toml",
            "COPY emulator/src ./emulator/src",
        ],
        "does not copy 'emulator/benches/throughput.rs' (bench target `throughput` declared in \
         emulator/Cargo.toml)",
    );
}

#[test]
fn the_dockerfile_build_stage_copies_a_workspace_cargo_loads() {
    let output = image_check_metadata(&repo().join("Dockerfile"));
    assert!(
        output.status.success(),
        "image-check fails on the real Dockerfile:\n{}",
        text(&output)
    );
    // Every workspace member is among what the stage copies.
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("Cargo.toml has [workspace] members");
    let copied = text(&output);
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if member != "." && !member.is_empty() {
            assert!(
                copied.contains(&format!(" {member} ")) || copied.contains(&format!(" {member})")),
                "the build stage does not list member {member}: {copied}"
            );
        }
    }
}

/// The instructions of the Dockerfile's final stage, as (KEYWORD, arguments).
fn final_stage() -> Vec<(String, String)> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let joined = dockerfile.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage.clear();
        }
        stage.push((keyword, args.trim().to_string()));
    }
    stage
}

fn last(stage: &[(String, String)], keyword: &str) -> String {
    stage
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("the Dockerfile's final stage has no {keyword}"))
}

/// Assembles the image once for every test of this file (`hack/image-assemble.sh`, which
/// builds the release binary with hack/image-check.sh first: a no-op when it is up to date).
fn assembled() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        for tool in ["buildah", "podman"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} is not installed: run `make image-tools` (apt-get install -y buildah podman runc)"
            );
        }
        let output = script(repo().join("hack/image-assemble.sh"))
            .env("ADC_IMAGE", IMAGE)
            .output()
            .expect("running hack/image-assemble.sh");
        assert!(
            output.status.success(),
            "hack/image-assemble.sh failed:\n{}",
            text(&output)
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let target = if target.is_absolute() {
            target
        } else {
            repo().join(target)
        };
        target.join("image")
    })
}

/// Runs the image's entrypoint with `args`, through `hack/image-assemble.sh exec`.
fn exec_image(runner: &str, args: &[&str]) -> Output {
    script(repo().join("hack/image-assemble.sh"))
        .env("ADC_IMAGE", IMAGE)
        .env("ADC_IMAGE_RUNNER", runner)
        .arg("exec")
        .args(args)
        .output()
        .expect("running hack/image-assemble.sh exec")
}

#[test]
fn the_binary_runs_from_inside_the_assembled_image() {
    let image_dir = assembled();
    let want = format!("adc-operator {}", env!("CARGO_PKG_VERSION"));
    for runner in ["podman", "chroot"] {
        let output = exec_image(runner, &["version"]);
        assert!(
            output.status.success(),
            "`version` inside the image ({runner}) failed:\n{}",
            text(&output)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            want,
            "`version` inside the image ({runner})"
        );
    }
    // The image holds the binary the Dockerfile's build stage makes, and only what it needs.
    let rootfs = image_dir.join("rootfs");
    let release = image_dir.parent().unwrap().join("release/adc-operator");
    assert_eq!(
        std::fs::read(rootfs.join("adc-operator")).unwrap(),
        std::fs::read(&release).unwrap(),
        "the image's /adc-operator is not {}",
        release.display()
    );
    for file in [
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(rootfs.join(file).is_file(), "the image has no /{file}");
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "/etc/passwd has no nonroot 65532: {passwd}"
    );
    for dir in ["bin", "sbin", "usr/bin"] {
        assert!(
            !rootfs.join(dir).exists(),
            "the image has a /{dir}: it should hold the binary and its libraries only"
        );
    }
}

#[test]
fn the_assembled_image_config_is_the_dockerfile_final_stage() {
    assembled();
    let output = Command::new("buildah")
        .args(["inspect", "--type", "image", IMAGE])
        .output()
        .expect("running buildah inspect");
    assert!(output.status.success(), "{}", text(&output));
    let inspect: Value = serde_json::from_slice(&output.stdout).unwrap();
    let config = &inspect["OCIv1"]["config"];

    let stage = final_stage();
    let user = last(&stage, "USER");
    let entrypoint: Value = serde_json::from_str(&last(&stage, "ENTRYPOINT")).unwrap();
    let cmd: Value = serde_json::from_str(&last(&stage, "CMD")).unwrap();
    let mut ports: Vec<String> = stage
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
        .map(|p| {
            if p.contains('/') {
                p
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    ports.sort();

    assert_eq!(config["User"], Value::String(user), "{config}");
    assert_eq!(config["Entrypoint"], entrypoint, "{config}");
    assert_eq!(config["Cmd"], cmd, "{config}");
    let mut exposed: Vec<String> = config["ExposedPorts"]
        .as_object()
        .map(|ports| ports.keys().cloned().collect())
        .unwrap_or_default();
    exposed.sort();
    assert_eq!(exposed, ports, "{config}");
    // What the final stage says is what the chart and the docs rely on.
    assert_eq!(last(&stage, "USER"), "65532:65532");
    assert_eq!(ports, ["8080/tcp"]);
}

/// `make image-demo` in small: hack/demo.sh with the operator run from inside the image by
/// podman (its own control plane and emulator, in a directory of this test); every object of
/// examples/ must become Ready, as `make demo` checks.
#[test]
fn the_demo_converges_with_the_operator_inside_the_image() {
    assembled();
    let state =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("image-demo-{}", std::process::id()));
    let output = script(repo().join("hack/demo.sh"))
        .env("ADC_CLUSTER_DIR", &state)
        .env("ADC_OPERATOR_CMD", "hack/image-assemble.sh exec")
        .env("ADC_IMAGE", IMAGE)
        .env("ADC_IMAGE_RUNNER", "podman")
        .env("DEMO_KEEP", "0")
        .output()
        .expect("running hack/demo.sh");
    let text = text(&output);
    assert!(output.status.success(), "hack/demo.sh failed:\n{text}");
    assert!(
        text.contains("running adc-operator: hack/image-assemble.sh exec"),
        "the demo did not run the operator from the image:\n{text}"
    );
    // The rows of `kubectl get adc -A`.
    let objects: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("team-a "))
        .filter(|l| l.contains("virtualservice.adc.dev/") || l.contains("vpcroute.adc.dev/"))
        .collect();
    assert_eq!(
        objects.len(),
        8,
        "six VirtualServices and two VpcRoutes:\n{text}"
    );
    for object in objects {
        assert!(object.contains(" True "), "not Ready: {object}\n{text}");
    }
    assert!(!state.exists(), "the demo left {} behind", state.display());
}
