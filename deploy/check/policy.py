#!/usr/bin/env python3
"""Policy checks of etcd-monitor's deployment artefacts.

What the Kubernetes schemas cannot say: how our workloads must be run
(non-root, resources, read-only root filesystems, probes, pinned images),
that the Dockerfiles build and ship exactly the binaries the workspace
builds, and that the compose file only refers to things that exist.

    deploy/check/policy.py kubernetes [DIR]        # default deploy/kubernetes
    deploy/check/policy.py rendered FILE           # e.g. `helm template` output; - is stdin
    deploy/check/policy.py dockerfiles [DIR]       # default deploy/docker
    deploy/check/policy.py compose [FILE] [--base DIR]
    deploy/check/policy.py all

Exit status 0 when every rule holds, 1 with one line per violation
("policy: FILE: OBJECT: what is wrong") otherwise, 2 on bad usage.
`rendered` checks one multi-document file of objects, such as the Helm
chart's (deploy/helm) rendered by `helm template`, with the rules of
`kubernetes` but for the kustomization's, and Secrets are allowed in it (a
chart makes them from values).
Run by tests/tests/deploy.rs, which also feeds it broken copies to prove
each rule can fail. Needs PyYAML (scripts/setup puts it in
.tools/kubernetes-validate/ with kubernetes-validate) and Python 3.11+.
"""

import argparse
import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# The one workload that may run as root, in the host's namespaces, with a
# capability, and the capabilities it may add. Each exception must also be
# explained in the workload's annotations (EXCEPTION_ANNOTATIONS).
EXCEPTIONS = {("DaemonSet", "etcdmon-agent"): {"capabilities": {"SYS_PTRACE"}}}
EXCEPTION_ANNOTATIONS = {
    "root": "etcd-monitor/runs-as-root",
    "host": "etcd-monitor/host-namespaces",
    "caps": "etcd-monitor/capabilities",
}
# Host paths a container may mount writable: the agent's probe directory
# inside etcd's data dir and its spool. Every other hostPath is read-only.
WRITABLE_HOST_PATHS = {"/var/lib/etcd/etcdmon-probe", "/var/lib/etcdmon-agent"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob", "Pod"}
LONG_RUNNING = {"Deployment", "DaemonSet", "StatefulSet"}
NAMESPACE = "etcd-monitor"
PART_OF = ("app.kubernetes.io/part-of", "etcd-monitor")
# Names that must not be ENV or ARG of an image (their values would be in
# every layer and in `docker inspect`).
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|KEY|CREDENTIAL", re.I)
# Files that must not be copied into an image.
SECRET_FILE = re.compile(r"\.(pem|key|crt|p12|pfx)$|token|secret|password", re.I)


class Report:
    """Collects violations; each names the file and the object."""

    def __init__(self):
        self.errors = []
        self.checked = 0

    def error(self, where, what):
        self.errors.append(f"policy: {where}: {what}")

    def finish(self, what):
        for e in self.errors:
            print(e)
        if self.errors:
            print(f"policy: {len(self.errors)} violation(s) in {what}")
            return 1
        print(f"policy: ok: {self.checked} {what}")
        return 0


# ---- the workspace ------------------------------------------------------------


def release_profiles(root):
    """`release` and the workspace's profiles that inherit it (the agent's size-optimised one)."""
    with open(os.path.join(root, "Cargo.toml"), "rb") as f:
        top = tomllib.load(f)
    return {"release"} | {
        name for name, p in top.get("profile", {}).items() if p.get("inherits") == "release"
    }


def workspace(root):
    """The workspace version and, per package, its binaries' names."""
    with open(os.path.join(root, "Cargo.toml"), "rb") as f:
        top = tomllib.load(f)
    version = top["workspace"]["package"]["version"]
    packages = {}
    for member in top["workspace"]["members"]:
        path = os.path.join(root, member, "Cargo.toml")
        with open(path, "rb") as f:
            manifest = tomllib.load(f)
        name = manifest["package"]["name"]
        bins = {b["name"] for b in manifest.get("bin", [])}
        if not bins and os.path.exists(os.path.join(root, member, "src", "main.rs")):
            bins = {name}
        packages[name] = {"bins": bins, "dir": member}
    return version, packages


def example_ports(root):
    """Ports of the services' listeners, from deploy/config/*.example.toml."""
    ports = {}
    for service in ("agent", "collector", "alerter"):
        path = os.path.join(root, "deploy", "config", f"{service}.example.toml")
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
        found = set()
        for section in ("http", "grpc"):
            listen = cfg.get(section, {}).get("listen")
            if listen:
                found.add(int(listen.rsplit(":", 1)[1]))
        ports[f"etcdmon-{service}"] = found
    return ports


# ---- images --------------------------------------------------------------------


def image_problem(image, version):
    """Why an image reference is not pinned, or None."""
    if not image or not isinstance(image, str):
        return "no image"
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image} has no tag (it would mean :latest)"
    tag = last.rsplit(":", 1)[1]
    if tag == "latest" or not tag:
        return f"image {image} uses the tag latest"
    if "${" in tag:
        return f"image {image} has a variable tag"
    if "etcdmon" in last and tag != version:
        return f"image {image}: our images carry the workspace version {version}"
    return None


# ---- Kubernetes ----------------------------------------------------------------

CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
MEMORY_UNITS = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(kind, value):
    value = str(value)
    if kind == "cpu":
        m = CPU.match(value)
        return None if not m else float(m.group(1)) / (1000 if m.group(2) else 1)
    m = MEMORY.match(value)
    return None if not m else float(m.group(1)) * MEMORY_UNITS[m.group(2)]


def load_yaml_docs(path, report):
    try:
        if path == "-":
            return [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        report.error(path, f"not YAML: {e}")
        return []


def obj_name(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_template(doc):
    kind = doc.get("kind")
    spec = doc.get("spec", {}) or {}
    if kind == "Pod":
        return doc.get("metadata", {}), spec
    if kind == "CronJob":
        tmpl = spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
    else:
        tmpl = spec.get("template", {})
    return tmpl.get("metadata", {}) or {}, tmpl.get("spec", {}) or {}


def selector_matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_container(report, where, doc, pod, c, exception, annotations):
    cw = f"{where}: container {c.get('name')}"
    problem = image_problem(c.get("image"), report.version)
    if problem:
        report.error(cw, problem)

    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        for r in ("cpu", "memory"):
            v = (res.get(part) or {}).get(r)
            if v is None:
                report.error(cw, f"resources.{part}.{r} is not set")
            elif quantity(r, v) is None:
                report.error(cw, f"resources.{part}.{r} {v!r} is not a quantity")
    for r in ("cpu", "memory"):
        req = quantity(r, (res.get("requests") or {}).get(r, "x"))
        lim = quantity(r, (res.get("limits") or {}).get(r, "x"))
        if req is not None and lim is not None and req > lim:
            report.error(cw, f"resources.requests.{r} is above its limit")

    psc = pod.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    if sc.get("allowPrivilegeEscalation") is not False:
        report.error(cw, "securityContext.allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        report.error(cw, "securityContext.readOnlyRootFilesystem must be true")
    if sc.get("privileged"):
        report.error(cw, "securityContext.privileged must not be true")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        report.error(cw, "securityContext.capabilities.drop must include ALL")
    added = set(caps.get("add") or [])
    if added:
        allowed = (exception or {}).get("capabilities", set())
        if not added <= allowed:
            report.error(cw, f"adds capabilities {sorted(added - allowed)}: not allowed for this workload")
        elif not annotations.get(EXCEPTION_ANNOTATIONS["caps"]):
            report.error(cw, f"adds capabilities without the annotation {EXCEPTION_ANNOTATIONS['caps']} saying why")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        report.error(cw, "seccompProfile.type must be RuntimeDefault (pod or container)")

    non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    as_root = non_root is not True or uid == 0
    if as_root:
        if exception is None:
            report.error(cw, "must run as non-root (runAsNonRoot: true and runAsUser not 0)")
        elif not annotations.get(EXCEPTION_ANNOTATIONS["root"]):
            report.error(cw, f"runs as root without the annotation {EXCEPTION_ANNOTATIONS['root']} saying why")

    ports = c.get("ports") or []
    port_names = {p.get("name") for p in ports if p.get("name")}
    port_numbers = {p.get("containerPort") for p in ports}
    if doc.get("kind") in LONG_RUNNING:
        for probe in ("livenessProbe", "readinessProbe"):
            p = c.get(probe)
            if not p:
                report.error(cw, f"{probe} is missing")
                continue
            get = p.get("httpGet")
            if get is None:
                continue
            if get.get("path") != "/healthz":
                report.error(cw, f"{probe} must ask /healthz, not {get.get('path')}")
            port = get.get("port")
            if port not in port_names and port not in port_numbers:
                report.error(cw, f"{probe} port {port} is not one of the container's ports")

    mounts = {m.get("name"): m for m in c.get("volumeMounts") or []}
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    # A StatefulSet's claims are volumes of its pods too.
    if doc.get("kind") == "StatefulSet":
        for claim in (doc.get("spec") or {}).get("volumeClaimTemplates") or []:
            volumes[(claim.get("metadata") or {}).get("name")] = {}
    for name, m in mounts.items():
        v = volumes.get(name)
        if v is None:
            report.error(cw, f"mounts volume {name}, which the pod does not have")
            continue
        host = (v.get("hostPath") or {}).get("path")
        if host and not m.get("readOnly") and host not in WRITABLE_HOST_PATHS:
            report.error(cw, f"hostPath {host} must be mounted readOnly")


def check_workload(report, path, doc, names):
    where = f"{path}: {obj_name(doc)}"
    meta, pod = pod_template(doc)
    key = (doc.get("kind"), doc.get("metadata", {}).get("name"))
    exception = EXCEPTIONS.get(key)
    annotations = doc.get("metadata", {}).get("annotations") or {}

    if pod.get("automountServiceAccountToken") is not False:
        report.error(where, "automountServiceAccountToken must be false (no component calls the Kubernetes API)")
    sa = pod.get("serviceAccountName")
    if not sa or sa == "default":
        report.error(where, "needs a ServiceAccount of its own (serviceAccountName)")
    elif sa not in names["ServiceAccount"]:
        report.error(where, f"ServiceAccount {sa} is not defined")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            if flag == "hostIPC" or exception is None:
                report.error(where, f"{flag} is not allowed for this workload")
            elif not annotations.get(EXCEPTION_ANNOTATIONS["host"]):
                report.error(where, f"{flag} without the annotation {EXCEPTION_ANNOTATIONS['host']} saying why")
    for v in pod.get("volumes") or []:
        if v.get("hostPath") and exception is None:
            report.error(where, f"hostPath volume {v.get('name')} is not allowed for this workload")
        cm = (v.get("configMap") or {}).get("name")
        if cm and cm not in names["ConfigMap"]:
            report.error(where, f"ConfigMap {cm} is not defined")
        secret = (v.get("secret") or {}).get("secretName")
        # None: Secrets are not documented here (a rendered chart names existing ones).
        if secret and names["documented_secrets"] is not None and secret not in names["documented_secrets"]:
            report.error(where, f"Secret {secret} is not documented in secrets.example.yaml")
    labels = meta.get("labels") or {}
    for k in ("app.kubernetes.io/name", "app.kubernetes.io/component"):
        if k not in labels:
            report.error(where, f"pod template lacks the label {k}")
    containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
    if not containers:
        report.error(where, "no containers")
    for c in containers:
        check_container(report, where, doc, pod, c, exception, annotations)


def check_kubernetes(directory, report):
    version = report.version
    kustomization = os.path.join(directory, "kustomization.yaml")
    files = sorted(f for f in os.listdir(directory) if f.endswith((".yaml", ".yml")))
    listed = []
    if not os.path.exists(kustomization):
        report.error(directory, "no kustomization.yaml")
    else:
        with open(kustomization) as f:
            k = yaml.safe_load(f) or {}
        listed = k.get("resources") or []
        for r in listed:
            if not os.path.exists(os.path.join(directory, r)):
                report.error(kustomization, f"lists {r}, which does not exist")
            if ".example." in r:
                report.error(kustomization, f"lists {r}: examples hold placeholders and are never applied")
        for f in files:
            if f != "kustomization.yaml" and ".example." not in f and f not in listed:
                report.error(kustomization, f"does not list {f}")
        for image in k.get("images") or []:
            if image.get("digest"):
                continue
            tag = image.get("newTag")
            if not tag:
                report.error(kustomization, f"images: {image.get('name')} has no newTag (or digest)")
                continue
            problem = image_problem(f"{image.get('newName', image.get('name'))}:{tag}", version)
            if problem:
                report.error(kustomization, problem)

    docs = []
    for f in files:
        if f == "kustomization.yaml":
            continue
        path = os.path.join(directory, f)
        for d in load_yaml_docs(path, report):
            docs.append((path, f, d))
    check_objects(directory, docs, report)


def check_rendered(path, report):
    """One multi-document file (`helm template` output): the rules of check_kubernetes
    but the kustomization's. Secrets may be in it (made from the chart's values), and
    the Secrets pods mount are not checked against secrets.example.yaml (a chart
    mounts the existing Secrets its values name)."""
    docs = [(path, os.path.basename(path), d) for d in load_yaml_docs(path, report)]
    if not docs and not report.errors:
        report.error(path, "no objects")
    check_objects(path, docs, report, rendered=True)


def check_objects(directory, docs, report, rendered=False):
    """The rules for the objects: docs is (path, file name, object) each."""
    version = report.version
    names = {"ServiceAccount": set(), "ConfigMap": set(),
             "documented_secrets": None if rendered else set()}
    workloads = []
    for path, f, d in docs:
        kind = d.get("kind")
        name = d.get("metadata", {}).get("name")
        if ".example." in f and not rendered:
            if kind == "Secret":
                names["documented_secrets"].add(name)
            continue
        if kind in names:
            names[kind].add(name)
        if kind in WORKLOAD_KINDS:
            workloads.append((path, d))

    default_deny = False
    for path, f, d in docs:
        if ".example." in f and not rendered:
            continue
        report.checked += 1
        where = f"{path}: {obj_name(d)}"
        kind = d.get("kind")
        meta = d.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(PART_OF[0]) != PART_OF[1]:
            report.error(where, f"lacks the label {PART_OF[0]}: {PART_OF[1]}")
        if "app.kubernetes.io/name" in labels and "app.kubernetes.io/component" not in labels:
            report.error(where, "has app.kubernetes.io/name but not app.kubernetes.io/component")
        template_labels = pod_template(d)[0].get("labels") or {} if kind in WORKLOAD_KINDS else {}
        for shown in (labels, template_labels):
            if "app.kubernetes.io/version" in shown and shown["app.kubernetes.io/version"] != version:
                report.error(where, f"app.kubernetes.io/version is {shown['app.kubernetes.io/version']}, "
                                    f"not the workspace version {version}")
        if kind != "Namespace" and meta.get("namespace") != NAMESPACE:
            report.error(where, f"must be in the namespace {NAMESPACE}")
        if kind == "Secret" and not rendered:
            report.error(where, "Secrets are never applied from here (only secrets.example.yaml documents them)")
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            report.error(where, "no component needs cluster-wide rights")
        if kind == "Role":
            for rule in d.get("rules") or []:
                if "*" in (rule.get("verbs") or []) or "*" in (rule.get("resources") or []):
                    report.error(where, "wildcard verbs or resources")
        if kind == "ServiceAccount" and d.get("automountServiceAccountToken") is not False:
            report.error(where, "automountServiceAccountToken must be false")
        if kind == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    try:
                        tomllib.loads(text)
                    except tomllib.TOMLDecodeError as e:
                        report.error(where, f"{key} is not valid TOML: {e}")
        if kind in WORKLOAD_KINDS:
            check_workload(report, path, d, names)
        if kind in ("Service", "PodDisruptionBudget"):
            sel = d.get("spec", {}).get("selector") or {}
            sel = sel.get("matchLabels", sel) if kind == "PodDisruptionBudget" else sel
            targets = [w for _, w in workloads if selector_matches(sel, pod_template(w)[0].get("labels") or {})]
            if not targets:
                report.error(where, f"selector {sel} matches no workload")
            elif kind == "Service":
                pod = pod_template(targets[0])[1]
                declared = set()
                for c in pod.get("containers") or []:
                    for p in c.get("ports") or []:
                        declared.update({p.get("name"), p.get("containerPort")})
                for p in d.get("spec", {}).get("ports") or []:
                    target = p.get("targetPort", p.get("port"))
                    if target not in declared:
                        report.error(where, f"targetPort {target} is not a port of {obj_name(targets[0])}")
        if kind == "NetworkPolicy":
            spec = d.get("spec") or {}
            if spec.get("podSelector") == {} and set(spec.get("policyTypes") or []) == {"Ingress", "Egress"} \
                    and not spec.get("ingress") and not spec.get("egress"):
                default_deny = True
    if docs and not default_deny:
        report.error(directory, "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
    if not workloads:
        report.error(directory, "no workloads found")


# ---- Dockerfiles ---------------------------------------------------------------


def dockerfile_instructions(path):
    """(line number, INSTRUCTION, arguments) with continuations joined."""
    out = []
    with open(path) as f:
        lines = f.read().split("\n")
    current, start = "", 0
    for i, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if not current:
            start = i
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        current = ""
    return out


def check_dockerfile(path, report, version, packages, ports):
    report.checked += 1
    stages = []
    for line, word, rest in dockerfile_instructions(path):
        where = f"{path}:{line}"
        if word == "FROM":
            parts = rest.split()
            args = [p for p in parts if not p.startswith("--")]
            image = args[0] if args else ""
            alias = args[2] if len(args) >= 3 and args[1].lower() == "as" else None
            problem = image_problem(image, version)
            if problem:
                report.error(where, f"base {problem}")
            stages.append({"image": image, "alias": alias, "items": []})
            continue
        if not stages:
            if word != "ARG":
                report.error(where, f"{word} before the first FROM")
            continue
        stages[-1]["items"].append((line, word, rest))
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", rest) or rest.split()[:1]:
                if SECRET_NAME.search(name):
                    report.error(where, f"{word} {name} looks like a secret: images must not carry secrets")
        if word in ("COPY", "ADD"):
            srcs = [p for p in rest.split() if not p.startswith("--")][:-1]
            for s in srcs:
                if SECRET_FILE.search(os.path.basename(s)):
                    report.error(where, f"{word} {s} looks like a secret file")
        if word == "ADD" and re.search(r"https?://", rest):
            report.error(where, "ADD from a URL: not reproducible, not verified")

    if len(stages) < 2:
        report.error(path, "needs at least 2 stages (build, then a small runtime)")
        return None
    built = {}
    for stage in stages[:-1]:
        for line, word, rest in stage["items"]:
            if word != "RUN" or "cargo build" not in rest:
                continue
            m = re.search(r"cargo build(.*?)(?:&&|;|$)", rest)
            flags = m.group(1).split() if m else []
            if "--locked" not in flags:
                report.error(f"{path}:{line}", "cargo build without --locked")
            profile = next((flags[i + 1] for i, f in enumerate(flags[:-1]) if f == "--profile"), None)
            if profile is not None:
                if profile not in release_profiles(ROOT):
                    report.error(f"{path}:{line}", f"cargo build --profile {profile}: not a profile that inherits release")
            elif "--release" not in flags:
                report.error(f"{path}:{line}", "cargo build without --release (or --profile of an optimised profile)")
            for i, flag in enumerate(flags):
                if flag in ("-p", "--package") and i + 1 < len(flags):
                    pkg = flags[i + 1]
                    if pkg not in packages:
                        report.error(f"{path}:{line}", f"builds {pkg}, which is not a workspace package")
                    else:
                        built[pkg] = stage["alias"]
    if not built:
        report.error(path, "no build stage runs `cargo build --release --locked -p PACKAGE` (or --profile)")

    final = stages[-1]
    items = final["items"]
    users = [rest for _, word, rest in items if word == "USER"]
    if not users:
        report.error(path, "the final stage has no USER (it would run as root)")
    else:
        user = users[-1].split(":")[0]
        if not user.isdigit():
            report.error(path, f"USER {users[-1]} must be numeric (runAsNonRoot can only check a number)")
        elif int(user) == 0:
            report.error(path, "the final stage's USER is root")
    copies = [(line, rest) for line, word, rest in items if word == "COPY" and "--from=" in rest]
    binary = None
    if len(copies) != 1:
        report.error(path, f"the final stage must copy exactly one file from the build ({len(copies)} COPY --from)")
    for line, rest in copies:
        args = [p for p in rest.split() if not p.startswith("--")]
        src = args[0] if args else ""
        binary = os.path.basename(src)
        owners = [p for p, info in packages.items() if binary in info["bins"]]
        if not owners:
            report.error(f"{path}:{line}", f"copies {binary}, which no workspace package builds")
        elif not any(p in built for p in owners):
            report.error(f"{path}:{line}", f"copies {binary}, but the build stage does not build {owners[0]}")
        if len(args) < 2 or not args[-1].startswith("/usr/local/bin/"):
            report.error(f"{path}:{line}", "the binary goes to /usr/local/bin/")
    entry = " ".join(rest for _, word, rest in items if word == "ENTRYPOINT")
    if binary and binary not in entry:
        report.error(path, f"ENTRYPOINT does not run {binary}")
    if binary in ports:
        exposed = set()
        for _, word, rest in items:
            if word == "EXPOSE":
                exposed.update(int(p.split("/")[0]) for p in rest.split())
        if exposed != ports[binary]:
            report.error(path, f"EXPOSE {sorted(exposed)}, but {binary}'s listeners are {sorted(ports[binary])} "
                               "(deploy/config)")
        checks = [rest for _, word, rest in items if word == "HEALTHCHECK"]
        http = min((p for p in ports[binary] if p != 7070), default=None)
        if not checks:
            report.error(path, f"{binary} serves /healthz: the image needs a HEALTHCHECK")
        elif "/healthz" not in checks[-1] or str(http) not in checks[-1]:
            report.error(path, f"the HEALTHCHECK must ask /healthz on port {http}")
    run_items = " ".join(rest for _, word, rest in items if word == "RUN")
    if "ca-certificates" not in run_items:
        report.error(path, "the runtime stage needs ca-certificates (TLS to ClickHouse, NATS, receivers)")
    return binary


def check_dockerfiles(directory, report):
    version, packages = workspace(ROOT)
    ports = example_ports(ROOT)
    files = sorted(f for f in os.listdir(directory) if f.endswith("Dockerfile"))
    if not files:
        report.error(directory, "no Dockerfiles")
    shipped = set()
    for f in files:
        binary = check_dockerfile(os.path.join(directory, f), report, version, packages, ports)
        if binary:
            shipped.add(binary)
    wanted = {b for name in ("etcdmon-agent", "etcdmon-collector", "etcdmon-alerter", "etcdmon")
              for b in packages.get(name, {}).get("bins", set())}
    for missing in sorted(wanted - shipped):
        report.error(directory, f"no image ships {missing}")


# ---- compose -------------------------------------------------------------------


def provisioning_variables(path):
    """The ${VAR} and $VAR names Grafana provisioning files under path use."""
    found = set()
    for dirpath, _, files in os.walk(path) if os.path.isdir(path) else [("", [], [path])]:
        for f in files:
            if f.endswith((".yaml", ".yml")):
                with open(os.path.join(dirpath, f)) as fh:
                    for line in fh:
                        line = line.split("#", 1)[0]
                        found.update(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", line))
    return found


def check_compose(path, base, report):
    version, packages = workspace(ROOT)
    base = base or os.path.dirname(os.path.abspath(path))
    docs = load_yaml_docs(path, report)
    if not docs:
        report.error(path, "empty")
        return
    doc = docs[0]
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    if not services:
        report.error(path, "no services")

    def exists(rel):
        return os.path.exists(os.path.normpath(os.path.join(base, os.path.expanduser(rel))))

    for name, svc in services.items():
        report.checked += 1
        where = f"{path}: service {name}"
        svc = svc or {}
        problem = image_problem(svc.get("image"), version)
        if problem:
            report.error(where, problem)
        build = svc.get("build")
        ours = build is not None
        if isinstance(build, str):
            build = {"context": build}
        if build:
            ctx = build.get("context", ".")
            if not exists(ctx):
                report.error(where, f"build context {ctx} does not exist")
            dockerfile = build.get("dockerfile", "Dockerfile")
            if not os.path.exists(os.path.normpath(os.path.join(base, ctx, dockerfile))):
                report.error(where, f"Dockerfile {dockerfile} does not exist in {ctx}")
        if ours:
            if svc.get("read_only") is not True:
                report.error(where, "read_only must be true")
            if "ALL" not in (svc.get("cap_drop") or []):
                report.error(where, "cap_drop must include ALL")
            if not any(str(o).startswith("no-new-privileges") for o in svc.get("security_opt") or []):
                report.error(where, "security_opt must include no-new-privileges:true")
        for mode_key in ("network_mode", "pid", "ipc"):
            mode = str(svc.get(mode_key) or "")
            if mode == "host":
                report.error(where, f"{mode_key}: host is not allowed")
            if mode.startswith("service:") and mode[len("service:"):] not in services:
                report.error(where, f"{mode_key} names the unknown service {mode[len('service:'):]}")
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                report.error(where, f"depends on the unknown service {dep}")
        env_files = svc.get("env_file") or []
        for ef in [env_files] if isinstance(env_files, str) else env_files:
            ef = ef.get("path") if isinstance(ef, dict) else ef
            if not exists(ef):
                report.error(where, f"env_file {ef} does not exist")
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(str(e).partition("=")[::2] for e in env)
        for v in svc.get("volumes") or []:
            if isinstance(v, dict):
                src, kind, target = v.get("source"), v.get("type"), v.get("target", "")
            else:
                parts = str(v).split(":")
                src, target = parts[0], parts[1] if len(parts) > 1 else ""
                kind = "bind" if src.startswith((".", "/", "~")) else "volume"
            if kind == "bind":
                if not exists(src):
                    report.error(where, f"mounts {src}, which does not exist")
                elif target.startswith("/etc/grafana/provisioning"):
                    # Grafana expands ${VAR} in provisioning files from its
                    # environment; an unset one becomes an empty setting.
                    for var in sorted(provisioning_variables(os.path.join(base, src))):
                        if var not in env:
                            report.error(where, f"{src} uses ${{{var}}}, which the service's environment does not set")
                elif src.endswith(".toml"):
                    try:
                        with open(os.path.join(base, src), "rb") as f:
                            tomllib.load(f)
                    except tomllib.TOMLDecodeError as e:
                        report.error(where, f"{src} is not valid TOML: {e}")
            elif kind == "volume" and src and src not in volumes:
                report.error(where, f"volume {src} is not declared under volumes:")
    for section in ("configs", "secrets"):
        for name, item in (doc.get(section) or {}).items():
            f = (item or {}).get("file")
            if f and not exists(f):
                report.error(f"{path}: {section[:-1]} {name}", f"file {f} does not exist")


# ---- main ----------------------------------------------------------------------


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["kubernetes", "rendered", "dockerfiles", "compose", "all"])
    parser.add_argument("path", nargs="?",
                        help="the directory (kubernetes, dockerfiles) or file (rendered, compose; - is stdin)")
    parser.add_argument("--base", help="compose: resolve relative paths from here (default: the file's directory)")
    args = parser.parse_args(argv)
    if args.what == "rendered" and not args.path:
        parser.error("rendered needs the FILE of objects (- for stdin)")
    version, _ = workspace(ROOT)
    status = 0
    if args.what == "rendered":
        report = Report()
        report.version = version
        check_rendered(args.path, report)
        status |= report.finish("Kubernetes objects")
    if args.what in ("kubernetes", "all"):
        report = Report()
        report.version = version
        check_kubernetes(args.path if args.what == "kubernetes" and args.path
                         else os.path.join(ROOT, "deploy", "kubernetes"), report)
        status |= report.finish("Kubernetes objects")
    if args.what in ("dockerfiles", "all"):
        report = Report()
        check_dockerfiles(args.path if args.what == "dockerfiles" and args.path
                          else os.path.join(ROOT, "deploy", "docker"), report)
        status |= report.finish("Dockerfiles")
    if args.what in ("compose", "all"):
        report = Report()
        check_compose(args.path if args.what == "compose" and args.path
                      else os.path.join(ROOT, "deploy", "compose", "compose.yaml"), args.base, report)
        status |= report.finish("compose services")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
