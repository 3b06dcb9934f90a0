//! Static checks of the deployment artefacts in `deploy/` (Docker, Helm and Kubernetes
//! cannot run here, so nothing is deployed):
//!
//! * every manifest in `deploy/kubernetes` against Kubernetes' OpenAPI schemas of the
//!   oldest and the newest version we support (`kubernetes-validate --strict`, which
//!   `scripts/setup` installs into `.tools/kubernetes-validate/`);
//! * our own policy (`deploy/check/policy.py`) on the manifests (non-root but for the
//!   documented agent exception, resources, read-only root filesystems, probes on
//!   `/healthz`, pinned images), the Dockerfiles (stages, a numeric non-root `USER`, the
//!   binary copied is one the workspace builds, no secrets in `ENV`/`ARG`, pinned bases)
//!   and the compose file (pinned images, every referenced file exists);
//! * `systemd-analyze verify` and `systemd-analyze security` on the units in
//!   `deploy/systemd`, and a dry run of its install script.
//!
//! Each check is also fed broken copies of the artefacts, so a check that cannot fail
//! fails here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The lowest and highest Kubernetes versions the manifests must be valid for.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the workspace root")
        .to_path_buf()
}

/// The venv `scripts/setup` makes: kubernetes-validate and the PyYAML policy.py needs.
fn tools() -> PathBuf {
    let dir = root().join(".tools/kubernetes-validate/bin");
    assert!(
        dir.join("kubernetes-validate").exists() && dir.join("python").exists(),
        "{} has no kubernetes-validate: run scripts/setup",
        dir.display()
    );
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `deploy/check/policy.py ARGS`.
fn policy(args: &[&str]) -> Output {
    run(Command::new(tools().join("python"))
        .arg(root().join("deploy/check/policy.py"))
        .args(args))
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy's directory");
    for entry in fs::read_dir(from).expect("read the directory to copy") {
        let entry = entry.expect("read a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Replaces every `from` in `file` by `to`; `from` must be there, so that a mutation
/// cannot silently stop applying when the artefact changes.
fn mutate(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).expect("read the file to break");
    assert!(
        text.contains(from),
        "{} no longer contains {from:?}: update this mutation",
        file.display()
    );
    fs::write(file, text.replace(from, to)).expect("write the broken file");
}

/// One broken copy: the file, what to replace, and the words the refusal must contain.
struct Breakage {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    refusal: &'static str,
}

const fn breaks(
    file: &'static str,
    from: &'static str,
    to: &'static str,
    refusal: &'static str,
) -> Breakage {
    Breakage {
        file,
        from,
        to,
        refusal,
    }
}

/// Copies `dir`, applies each breakage to a fresh copy and asserts that `check` on the
/// copy exits 1 naming the broken rule.
fn assert_each_is_refused(dir: &Path, breakages: &[Breakage], check: impl Fn(&Path) -> Output) {
    for b in breakages {
        let tmp = tempfile::tempdir().expect("temp dir");
        let copy = tmp.path().join("copy");
        copy_dir(dir, &copy);
        mutate(&copy.join(b.file), b.from, b.to);
        let out = check(&copy);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: replacing {:?} by {:?} was not refused: {}",
            b.file,
            b.from,
            b.to,
            describe(&out)
        );
        assert!(
            stdout(&out).contains(b.refusal),
            "{}: replacing {:?} by {:?} was refused, but not for {:?}: {}",
            b.file,
            b.from,
            b.to,
            b.refusal,
            describe(&out)
        );
    }
}

/// Every manifest file in deploy/kubernetes (the example Secrets too: they must be
/// valid objects), not the kustomization (no Kubernetes object).
fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read deploy/kubernetes")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

fn kubernetes_validate(version: &str, files: &[PathBuf]) -> Output {
    run(Command::new(tools().join("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", version])
        .args(files))
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    let files = manifests(&root().join("deploy/kubernetes"));
    assert!(files.len() >= 8, "manifests missing: {files:?}");
    for version in KUBERNETES_VERSIONS {
        let out = kubernetes_validate(version, &files);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}: {}",
            describe(&out)
        );
    }

    // Strict mode is what catches a misspelt field, which Kubernetes would drop.
    let tmp = tempfile::tempdir().expect("temp dir");
    let broken = tmp.path().join("collector.yaml");
    fs::copy(root().join("deploy/kubernetes/collector.yaml"), &broken).expect("copy");
    mutate(
        &broken,
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesytem: true",
    );
    let out = kubernetes_validate(KUBERNETES_VERSIONS[0], &[broken]);
    assert!(
        !out.status.success() && stdout(&out).contains("readOnlyRootFilesytem"),
        "a misspelt field passed: {}",
        describe(&out)
    );
}

#[test]
fn kubernetes_manifests_follow_the_policy() {
    let dir = root().join("deploy/kubernetes");
    let out = policy(&["kubernetes", dir.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn the_policy_refuses_each_kind_of_broken_manifest() {
    let breakages = [
        breaks(
            "collector.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "readOnlyRootFilesystem must be true",
        ),
        breaks(
            "alerter.yaml",
            "etcdmon-alerter:0.1.0",
            "etcdmon-alerter:latest",
            "uses the tag latest",
        ),
        breaks(
            "collector.yaml",
            "etcdmon-collector:0.1.0",
            "etcdmon-collector",
            "has no tag",
        ),
        breaks(
            "agent.yaml",
            "etcdmon-agent:0.1.0",
            "etcdmon-agent:0.0.9",
            "carry the workspace version",
        ),
        breaks(
            "alerter.yaml",
            "              memory: 256Mi\n",
            "",
            "resources.limits.memory is not set",
        ),
        breaks(
            "collector.yaml",
            "              cpu: 250m\n",
            "              cpu: 4\n",
            "resources.requests.cpu is above its limit",
        ),
        breaks(
            "alerter.yaml",
            "runAsUser: 65532",
            "runAsUser: 0",
            "must run as non-root",
        ),
        breaks(
            "collector.yaml",
            "livenessProbe:",
            "lifecycle:",
            "livenessProbe is missing",
        ),
        breaks(
            "alerter.yaml",
            "path: /healthz",
            "path: /health",
            "must ask /healthz",
        ),
        breaks(
            "collector.yaml",
            "port: http\n",
            "port: htp\n",
            "is not one of the container's ports",
        ),
        breaks(
            "alerter.yaml",
            "      enableServiceLinks: false\n",
            "      enableServiceLinks: false\n      hostNetwork: true\n",
            "hostNetwork is not allowed",
        ),
        breaks(
            "agent.yaml",
            "etcd-monitor/runs-as-root:",
            "etcd-monitor/unexplained:",
            "runs as root without the annotation",
        ),
        breaks(
            "agent.yaml",
            r#"add: ["SYS_PTRACE"]"#,
            r#"add: ["SYS_PTRACE", "SYS_ADMIN"]"#,
            "adds capabilities ['SYS_ADMIN']",
        ),
        breaks(
            "agent.yaml",
            "              mountPath: /var/lib/etcd\n              readOnly: true\n",
            "              mountPath: /var/lib/etcd\n",
            "hostPath /var/lib/etcd must be mounted readOnly",
        ),
        breaks(
            "collector.yaml",
            "      automountServiceAccountToken: false\n",
            "",
            "automountServiceAccountToken must be false",
        ),
        breaks(
            "kustomization.yaml",
            "  - networkpolicies.yaml\n",
            "  - networkpolicies.yaml\n  - secrets.example.yaml\n",
            "examples hold placeholders",
        ),
        breaks(
            "collector.yaml",
            "app.kubernetes.io/version: \"0.1.0\"",
            "app.kubernetes.io/version: \"0.0.9\"",
            "not the workspace version",
        ),
        breaks(
            "kustomization.yaml",
            "newTag: \"0.1.0\"",
            "newTag: latest",
            "uses the tag latest",
        ),
        breaks(
            "kustomization.yaml",
            "  - networkpolicies.yaml\n",
            "",
            "does not list networkpolicies.yaml",
        ),
        breaks(
            "collector-config.yaml",
            r#"rules_interval = "1s""#,
            r#"rules_interval = 1s""#,
            "is not valid TOML",
        ),
        breaks(
            "alerter.yaml",
            "secretName: etcdmon-alerter-receivers",
            "secretName: etcdmon-receivers",
            "Secret etcdmon-receivers is not documented",
        ),
        breaks(
            "networkpolicies.yaml",
            "  podSelector: {}\n  policyTypes: [\"Ingress\", \"Egress\"]\n---",
            "  podSelector: {}\n  policyTypes: [\"Ingress\"]\n---",
            "no default-deny NetworkPolicy",
        ),
    ];
    assert_each_is_refused(&root().join("deploy/kubernetes"), &breakages, |dir| {
        policy(&["kubernetes", dir.to_str().expect("UTF-8 path")])
    });
}

#[test]
fn dockerfiles_ship_the_workspace_binaries_as_non_root() {
    let dir = root().join("deploy/docker");
    let out = policy(&["dockerfiles", dir.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("ok: 4 Dockerfiles"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_policy_refuses_each_kind_of_broken_dockerfile() {
    const C: &str = "etcdmon-collector.Dockerfile";
    let breakages = [
        breaks(C, "USER 65532:65532\n", "", "has no USER"),
        breaks(C, "USER 65532:65532\n", "USER 0\n", "USER is root"),
        breaks(C, "USER 65532:65532\n", "USER etcdmon\n", "must be numeric"),
        breaks(C, "FROM debian:bookworm-slim", "FROM debian", "has no tag"),
        breaks(
            C,
            "FROM rust:1.89-bookworm AS builder",
            "FROM rust:latest AS builder",
            "uses the tag latest",
        ),
        breaks(
            C,
            "COPY --from=builder /usr/local/bin/etcdmon-collector",
            "COPY --from=builder /usr/local/bin/etcdmon-collectr",
            "which no workspace package builds",
        ),
        breaks(
            C,
            "COPY --from=builder /usr/local/bin/etcdmon-collector",
            "COPY --from=builder /usr/local/bin/etcdmon-alerter",
            "the build stage does not build etcdmon-alerter",
        ),
        breaks(
            C,
            "USER 65532:65532\n",
            "USER 65532:65532\nENV ETCDMON_COLLECTOR_STORAGE__CLICKHOUSE__PASSWORD=hunter2\n",
            "looks like a secret",
        ),
        breaks(
            C,
            "WORKDIR /src\n",
            "WORKDIR /src\nARG REGISTRY_TOKEN\n",
            "ARG REGISTRY_TOKEN looks like a secret",
        ),
        breaks(
            C,
            "COPY . .\n",
            "COPY . .\nCOPY deploy/tls/collector.key /etc/etcdmon/\n",
            "looks like a secret file",
        ),
        breaks(
            C,
            "cargo build --release --locked -p",
            "cargo build --release -p",
            "without --locked",
        ),
        breaks(
            C,
            "FROM debian:bookworm-slim\n",
            "",
            "needs at least 2 stages",
        ),
        breaks(C, "EXPOSE 7070 8080", "EXPOSE 8080", "EXPOSE [8080], but"),
        breaks(C, "HEALTHCHECK ", "# HEALTHCHECK ", "needs a HEALTHCHECK"),
        breaks(
            "etcdmon.Dockerfile",
            "COPY --from=builder /usr/local/bin/etcdmon ",
            "COPY --from=builder /usr/local/bin/etcdmon-agent ",
            "no image ships etcdmon",
        ),
    ];
    assert_each_is_refused(&root().join("deploy/docker"), &breakages, |dir| {
        policy(&["dockerfiles", dir.to_str().expect("UTF-8 path")])
    });
}

#[test]
fn compose_uses_pinned_images_and_existing_files() {
    let file = root().join("deploy/compose/compose.yaml");
    let out = policy(&["compose", file.to_str().expect("UTF-8 path")]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn the_policy_refuses_each_kind_of_broken_compose_file() {
    let base = root().join("deploy/compose");
    let breakages = [
        breaks(
            "compose.yaml",
            "image: nats:2.10.24",
            "image: nats",
            "has no tag",
        ),
        breaks(
            "compose.yaml",
            "grafana/grafana:12.2.0",
            "grafana/grafana:latest",
            "uses the tag latest",
        ),
        breaks(
            "compose.yaml",
            "./config/alerter.toml:",
            "./config/alerter-missing.toml:",
            "alerter-missing.toml, which does not exist",
        ),
        breaks(
            "compose.yaml",
            "../../grafana/dashboards:",
            "../../grafana/dashbaords:",
            "dashbaords, which does not exist",
        ),
        breaks(
            "compose.yaml",
            "network_mode: service:member-2",
            "network_mode: service:member-9",
            "unknown service member-9",
        ),
        breaks(
            "compose.yaml",
            "dockerfile: deploy/docker/etcdmon-alerter.Dockerfile",
            "dockerfile: deploy/docker/etcdmon-alertr.Dockerfile",
            "etcdmon-alertr.Dockerfile does not exist",
        ),
        breaks(
            "compose.yaml",
            "    read_only: true\n",
            "",
            "read_only must be true",
        ),
        breaks(
            "compose.yaml",
            "      ETCDMON_CLICKHOUSE_HOST: clickhouse\n",
            "",
            "uses ${ETCDMON_CLICKHOUSE_HOST}, which the service's environment does not set",
        ),
        breaks(
            "compose.yaml",
            "      - nats-data:/data\n",
            "      - nats-store:/data\n",
            "volume nats-store is not declared",
        ),
    ];
    let base_arg = base.to_str().expect("UTF-8 path").to_owned();
    assert_each_is_refused(&base, &breakages, move |dir| {
        let file = dir.join("compose.yaml");
        policy(&[
            "compose",
            file.to_str().expect("UTF-8 path"),
            "--base",
            &base_arg,
        ])
    });
}

/// `systemd-analyze` when it can run here: it must when systemd is installed (scripts/setup
/// installs it); elsewhere the check is skipped with the reason.
fn systemd_analyze() -> Option<PathBuf> {
    for dir in ["/usr/bin", "/bin"] {
        let path = Path::new(dir).join("systemd-analyze");
        if path.exists() {
            return Some(path);
        }
    }
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "systemd"])
        .output()
        .map(|o| o.stdout == b"installed")
        .unwrap_or(false);
    assert!(
        !installed,
        "the systemd package is installed but systemd-analyze is not found"
    );
    None
}

/// The highest `systemd-analyze security` exposure (0-100, shown as 0.0-10.0) each
/// unit may have: the agent keeps root with two capabilities, the others none.
fn exposure_threshold(unit: &str) -> u32 {
    if unit == "etcdmon-agent.service" {
        30
    } else {
        20
    }
}

/// Copies the units into `dir` with their binaries replaced by copies of `true` in the
/// same place (verify checks that ExecStart is executable), then runs `systemd-analyze
/// verify` on all (any warning fails) and `security` on each (against its threshold).
fn check_units(analyze: &Path, units: &[(String, String)], dir: &Path) -> Result<(), String> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("create bin dir");
    let mut paths = Vec::new();
    for (name, text) in units {
        let binary = name.trim_end_matches(".service");
        fs::copy("/bin/true", bin.join(binary)).expect("copy /bin/true");
        let text = text.replace(
            "/usr/local/bin/",
            &format!("{}/", bin.to_str().expect("UTF-8 path")),
        );
        let path = dir.join(name);
        fs::write(&path, text).expect("write the unit");
        paths.push(path);
    }
    let out = run(Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&paths));
    if !out.status.success() || !out.stderr.is_empty() || !out.stdout.is_empty() {
        return Err(format!("systemd-analyze verify: {}", describe(&out)));
    }
    for (path, (name, _)) in paths.iter().zip(units) {
        let out = run(Command::new(analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--threshold={}", exposure_threshold(name)))
            .arg(path));
        if !out.status.success() {
            return Err(format!(
                "systemd-analyze security {name}: exposure above {}: {}",
                exposure_threshold(name),
                describe(&out)
            ));
        }
    }
    Ok(())
}

fn units() -> Vec<(String, String)> {
    ["etcdmon-agent", "etcdmon-collector", "etcdmon-alerter"]
        .iter()
        .map(|u| {
            let name = format!("{u}.service");
            let text =
                fs::read_to_string(root().join("deploy/systemd").join(&name)).expect("read a unit");
            (name, text)
        })
        .collect()
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!(
            "skipped: systemd-analyze is not installed (Debian package systemd; scripts/setup installs it)"
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    check_units(&analyze, &units(), tmp.path()).unwrap_or_else(|e| panic!("{e}"));

    // A misspelt setting is only a warning to systemd (the unit would run without
    // it), and a unit without its sandbox is too exposed: both must fail.
    let mut misspelt = units();
    misspelt[1].1 = misspelt[1]
        .1
        .replace("ProtectSystem=strict", "ProtectSystm=strict");
    let tmp = tempfile::tempdir().expect("temp dir");
    let err = check_units(&analyze, &misspelt, tmp.path()).expect_err("a misspelt key passed");
    assert!(err.contains("ProtectSystm"), "{err}");

    let mut bare = units();
    bare[2].1 = bare[2]
        .1
        .lines()
        .take_while(|l| !l.starts_with("# No privileges"))
        .chain(["", "[Install]", "WantedBy=multi-user.target"])
        .collect::<Vec<_>>()
        .join("\n");
    let tmp = tempfile::tempdir().expect("temp dir");
    let err = check_units(&analyze, &bare, tmp.path()).expect_err("an unsandboxed unit passed");
    assert!(err.contains("exposure above"), "{err}");
}

#[test]
fn the_install_script_dry_run_changes_nothing() {
    let script = root().join("deploy/systemd/install");
    let out = run(Command::new("bash").arg("-n").arg(&script));
    assert!(out.status.success(), "bash -n: {}", describe(&out));

    let tmp = tempfile::tempdir().expect("temp dir");
    let bin = tmp.path().join("bin");
    fs::create_dir_all(&bin).expect("create bin dir");
    for name in ["etcdmon-agent", "etcdmon-collector", "etcdmon-alerter"] {
        fs::copy("/bin/true", bin.join(name)).expect("copy /bin/true");
    }
    let before = Path::new("/usr/local/bin/etcdmon-collector").exists();

    let out = run(Command::new(&script).arg("--dry-run").arg(&bin));
    assert!(
        out.status.success(),
        "install --dry-run: {}",
        describe(&out)
    );
    let text = stdout(&out);
    let b = bin.to_str().expect("UTF-8 path");
    for expected in [
        "would run: install -m 0755 ".to_owned()
            + b
            + "/etcdmon-agent /usr/local/bin/etcdmon-agent",
        "would run: install -m 0644 ".to_owned()
            + root().join("deploy/systemd").to_str().expect("UTF-8 path")
            + "/etcdmon-collector.service /etc/systemd/system/etcdmon-collector.service",
        "would run: install -d -m 0700 -o root -g root /etc/etcdmon/secrets".to_owned(),
        "would run: systemctl daemon-reload".to_owned(),
        "systemctl enable --now etcdmon-agent etcdmon-collector etcdmon-alerter".to_owned(),
    ] {
        assert!(
            text.contains(&expected),
            "missing {expected:?}: {}",
            describe(&out)
        );
    }
    assert_eq!(
        Path::new("/usr/local/bin/etcdmon-collector").exists(),
        before,
        "a dry run installed a binary"
    );

    let out = run(Command::new(&script)
        .args(["--dry-run", "--only", "agent"])
        .arg(&bin));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        !stdout(&out).contains("etcdmon-collector") && !stdout(&out).contains("useradd"),
        "--only agent installs more: {}",
        describe(&out)
    );

    let out = run(Command::new(&script).args(["--dry-run", "--uninstall", "--purge"]));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("would run: systemctl disable --now etcdmon-alerter.service"),
        "{}",
        describe(&out)
    );

    // Refusals: a missing binary, an unknown component.
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).expect("create dir");
    let out = run(Command::new(&script).arg("--dry-run").arg(&empty));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("etcdmon-agent is missing"),
        "{}",
        describe(&out)
    );
    let out = run(Command::new(&script)
        .args(["--dry-run", "--only", "etcd"])
        .arg(&bin));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
