//! `docs/openapi.json` against the real collector, so the file cannot drift from
//! the server:
//!
//! - the file is a well-formed OpenAPI 3.0 document (every `$ref` resolves, every
//!   path parameter is declared, every example fits its schema);
//! - every route the collector's source serves is in it, and nothing else;
//! - every operation's `x-etcdmon-role` is the role the server enforces;
//! - `docs/api.md` names every path;
//! - on a real collector (SQLite) with a real 3-member etcd and its agents, every
//!   operation is called with valid parameters, bad ones, unknown ids, bad
//!   credentials and a foreign `Host`: each answer's status must be one the file
//!   lists, and its body must fit the file's schema. The main schemas say
//!   `additionalProperties: false`, so a field the server adds without
//!   documenting it fails here. Every status the file lists (but 500 and 503) must
//!   have been seen, and every query parameter it declares must have been accepted.
//!
//! Alert transitions reach the store from the alerter; no alerter runs here, so
//! the test writes a few into the store the way the alerter does.

mod common;

use common::CollectorProc;
use etcdmon_agent::probes::certs::{CertFile, CertRoleConfig};
use etcdmon_agent::selfmetrics::AgentMetrics;
use etcdmon_agent::Agent;
use etcdmon_alert::AlertState;
use etcdmon_collector::api::web;
use etcdmon_core::shutdown::Shutdown;
use etcdmon_storage::sqlite::SqliteStorage;
use etcdmon_storage::{AlertDeliveryRow, AlertStore, AlertTransitionRow, Retention};
use etcdmon_testkit::{free_port, generate_tls, EtcdCluster};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cluster whose real members report; the spec's examples name it.
const CLUSTER: &str = "prod-eu-1";
/// A cluster registered through the API that no agent reports for.
const SILENT: &str = "prod-us-1";
/// A cluster registered in the collector's config file.
const FROM_FILE: &str = "from-file";
/// A cluster whose only agent watches an etcd that is not there.
const LAB: &str = "lab-1";
/// The firing alert written into the store (the spec's example fingerprint).
const FIRING: &str = "3f0c9b1e5a7d2c44";
/// A resolved alert written into the store.
const RESOLVED: &str = "5e0c3c4e1bd6a1b3";
const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn load_spec() -> Value {
    let path = root().join("../docs/openapi.json");
    let text = std::fs::read_to_string(&path).expect("read docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// The target of a local `$ref` (`#/components/...`).
fn resolve<'a>(spec: &'a Value, reference: &str) -> Option<&'a Value> {
    spec.pointer(reference.strip_prefix('#')?)
}

/// `v` itself, or what it refers to when it is a `$ref` object.
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    static NULL: Value = Value::Null;
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(spec, r).unwrap_or(&NULL),
        None => v,
    }
}

/// Every operation: (METHOD, path template, operation, path item).
fn operations(spec: &Value) -> Vec<(String, String, &Value, &Value)> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for m in METHODS {
            if let Some(op) = item.get(*m) {
                out.push((m.to_uppercase(), path.clone(), op, item));
            }
        }
    }
    out
}

/// An operation's parameters, the path item's included, references resolved.
fn parameters<'a>(spec: &'a Value, op: &'a Value, item: &'a Value) -> Vec<&'a Value> {
    [item.get("parameters"), op.get("parameters")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .map(|p| deref(spec, p))
        .collect()
}

/// The `{name}`s of a path template.
fn template_names(path: &str) -> BTreeSet<String> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(n, _)| n.to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------
// The schema validator: the subset of OpenAPI 3.0 schemas the file may use.
// A keyword outside it is an error, so the file cannot say something this
// test would silently not check.

/// Schema keywords that constrain, and the ones that only annotate.
const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "nullable",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "allOf",
    "anyOf",
    "oneOf",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "description",
    "example",
    "default",
    "title",
    "format",
];

struct Validator<'a> {
    spec: &'a Value,
    /// Component schemas some instance was checked against.
    used: RefCell<BTreeSet<String>>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 160 {
        format!("{}...", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

impl<'a> Validator<'a> {
    fn new(spec: &'a Value) -> Self {
        Self {
            spec,
            used: RefCell::default(),
        }
    }

    /// Checks `v` (at JSON path `at`) against `schema`; the error names the
    /// path of the first mismatch.
    fn check(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = schema
            .as_object()
            .ok_or_else(|| format!("{at}: the schema {schema} is not an object"))?;
        if let Some(r) = s.get("$ref") {
            let r = r.as_str().unwrap_or_default();
            let target =
                resolve(self.spec, r).ok_or_else(|| format!("{at}: $ref {r} does not resolve"))?;
            if let Some(name) = r.strip_prefix("#/components/schemas/") {
                self.used.borrow_mut().insert(name.to_owned());
            }
            return self.check(target, v, at);
        }
        if let Some(k) = s.keys().find(|k| !KEYWORDS.contains(&k.as_str())) {
            return Err(format!("{at}: schema keyword {k:?} is not supported"));
        }
        if v.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
            return Ok(());
        }
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            let fits = match t {
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "string" => v.is_string(),
                "boolean" => v.is_boolean(),
                "array" => v.is_array(),
                "object" => v.is_object(),
                other => return Err(format!("{at}: unknown type {other:?}")),
            };
            if !fits {
                return Err(format!("{at}: expected {t}, got {} {}", kind(v), short(v)));
            }
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array) {
            if !options.contains(v) {
                return Err(format!("{at}: {} is not one of {options:?}", short(v)));
            }
        }
        if let Some(n) = v.as_f64() {
            if s.get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n < m)
            {
                return Err(format!("{at}: {n} is below the minimum"));
            }
            if s.get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n > m)
            {
                return Err(format!("{at}: {n} is above the maximum"));
            }
        }
        if let Some(text) = v.as_str() {
            let len = text.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                return Err(format!("{at}: {text:?} is shorter than minLength"));
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                return Err(format!("{at}: {text:?} is longer than maxLength"));
            }
        }
        if let Some(items) = v.as_array() {
            let len = items.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                return Err(format!("{at}: {len} items, fewer than minItems"));
            }
            if s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                return Err(format!("{at}: {len} items, more than maxItems"));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    self.check(item, x, &format!("{at}[{i}]"))?;
                }
            }
        }
        if let Some(fields) = v.as_object() {
            for name in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap_or_default();
                if !fields.contains_key(name) {
                    return Err(format!("{at}: required field {name:?} is missing"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (name, x) in fields {
                let here = format!("{at}.{name}");
                match (
                    props.and_then(|p| p.get(name)),
                    s.get("additionalProperties"),
                ) {
                    (Some(p), _) => self.check(p, x, &here)?,
                    (None, Some(Value::Bool(false))) => {
                        return Err(format!("{here}: field not in the schema ({})", short(x)))
                    }
                    (None, Some(extra @ Value::Object(_))) => self.check(extra, x, &here)?,
                    (None, _) => {}
                }
            }
        }
        for sub in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.check(sub, v, at)?;
        }
        if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
            let errors: Vec<String> = any
                .iter()
                .filter_map(|sub| self.check(sub, v, at).err())
                .collect();
            if errors.len() == any.len() {
                return Err(format!("{at}: fits none of anyOf: {errors:?}"));
            }
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            let fits = one
                .iter()
                .filter(|sub| self.check(sub, v, at).is_ok())
                .count();
            if fits != 1 {
                return Err(format!("{at}: fits {fits} of oneOf, not exactly 1"));
            }
        }
        Ok(())
    }
}

/// Problems with the keywords of `schema` and every schema inside it.
fn schema_keywords(schema: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        problems.push(format!("{at}: a schema must be an object"));
        return;
    };
    if s.contains_key("$ref") {
        return;
    }
    for k in s.keys().filter(|k| !KEYWORDS.contains(&k.as_str())) {
        problems.push(format!(
            "{at}: schema keyword {k:?} is not supported by the test"
        ));
    }
    if s.contains_key("nullable") && !s.contains_key("type") && !s.contains_key("allOf") {
        problems.push(format!("{at}: nullable needs a type (or allOf) beside it"));
    }
    for (name, p) in s
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        schema_keywords(p, &format!("{at}.{name}"), problems);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub @ Value::Object(_)) = s.get(key) {
            schema_keywords(sub, &format!("{at}.{key}"), problems);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, sub) in s
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            schema_keywords(sub, &format!("{at}.{key}[{i}]"), problems);
        }
    }
}

/// Every `$ref` in `v`, with where it is.
fn refs<'a>(v: &'a Value, at: &str, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) => {
            if m.contains_key("$ref") {
                out.push((at.to_owned(), v));
            }
            for (k, x) in m {
                refs(x, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn fail_on(problems: Vec<String>, what: &str) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
}

#[test]
fn the_validator_rejects_what_a_schema_does_not_say() {
    use serde_json::json;
    let spec = json!({"components": {"schemas": {"Thing": {
        "type": "object",
        "required": ["id", "size"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string"},
            "size": {"type": "integer"},
            "ratio": {"type": "number", "nullable": true},
            "kind": {"type": "string", "enum": ["a", "b"]},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "parts": {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}},
        },
    }}}});
    let v = Validator::new(&spec);
    let thing = json!({"$ref": "#/components/schemas/Thing"});
    let good = json!({"id": "x", "size": 1, "ratio": null, "kind": "a", "tags": {"k": "v"},
                      "parts": [{"id": "y", "size": 2, "ratio": 0.5}]});
    assert_eq!(v.check(&thing, &good, "$"), Ok(()));
    for (bad, says) in [
        (
            json!({"id": "x", "size": 1.0}),
            "$.size: expected integer, got number",
        ),
        (json!({"id": "x"}), "$: required field \"size\" is missing"),
        (
            json!({"id": "x", "size": 1, "new": true}),
            "$.new: field not in the schema",
        ),
        (
            json!({"id": "x", "size": 1, "kind": "c"}),
            "$.kind: \"c\" is not one of",
        ),
        (
            json!({"id": "x", "size": 1, "tags": {"k": 1}}),
            "$.tags.k: expected string",
        ),
        (
            json!({"id": "x", "size": 1, "ratio": "1"}),
            "$.ratio: expected number",
        ),
        (
            json!({"id": "x", "size": 1, "parts": [{"id": "y", "size": null}]}),
            "$.parts[0].size: expected integer, got null",
        ),
    ] {
        let err = v.check(&thing, &bad, "$").expect_err("a mismatch");
        assert!(
            err.starts_with(says),
            "{bad}: {err:?} does not start with {says:?}"
        );
    }
    let unsupported = json!({"type": "string", "pattern": "^a"});
    assert!(v.check(&unsupported, &json!("a"), "$").is_err());
}

// ---------------------------------------------------------------------------
// (a) The file itself.

#[test]
fn the_file_is_a_well_formed_openapi_3_document() {
    let spec = load_spec();
    let v = Validator::new(&spec);
    let mut problems = Vec::new();

    if !spec["openapi"]
        .as_str()
        .is_some_and(|s| s.starts_with("3.0."))
    {
        problems.push(format!("`openapi` must be 3.0.x, is {}", spec["openapi"]));
    }
    for key in ["title", "version"] {
        if !spec["info"][key].is_string() {
            problems.push(format!("info.{key} is missing"));
        }
    }
    let paths = spec["paths"].as_object().cloned().unwrap_or_default();
    if paths.is_empty() {
        problems.push("no paths".into());
    }
    // Every $ref resolves, and stands alone (OpenAPI 3.0 ignores its siblings).
    let mut all = Vec::new();
    refs(&spec, "#", &mut all);
    for (at, r) in &all {
        let target = r["$ref"].as_str().unwrap_or_default();
        if resolve(&spec, target).is_none() {
            problems.push(format!("{at}: $ref {target:?} does not resolve"));
        }
        if r.as_object().is_some_and(|m| m.len() > 1) {
            problems.push(format!(
                "{at}: a $ref object has siblings, which OpenAPI 3.0 ignores"
            ));
        }
    }
    // Every component schema is used somewhere, and uses only keywords the
    // validator knows.
    let used: BTreeSet<&str> = all
        .iter()
        .filter_map(|(_, r)| r["$ref"].as_str()?.strip_prefix("#/components/schemas/"))
        .collect();
    for (name, schema) in spec["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        schema_keywords(schema, &format!("schema {name}"), &mut problems);
        if !used.contains(name.as_str()) {
            problems.push(format!("schema {name} is never referred to"));
        }
    }
    let schemes = &spec["components"]["securitySchemes"];
    let tags: BTreeSet<&str> = spec["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut ids = BTreeSet::new();
    for (path, item) in &paths {
        if !path.starts_with('/') {
            problems.push(format!("path {path:?} does not start with /"));
        }
        for key in item.as_object().into_iter().flatten().map(|(k, _)| k) {
            let known = ["parameters", "summary", "description", "servers", "trace"];
            if !METHODS.contains(&key.as_str()) && !known.contains(&key.as_str()) {
                problems.push(format!("{path}: unknown path item key {key:?}"));
            }
        }
    }
    for (method, path, op, item) in operations(&spec) {
        let at = format!("{method} {path}");
        match op["operationId"].as_str() {
            Some(id) if ids.insert(id.to_owned()) => {}
            Some(id) => problems.push(format!("{at}: operationId {id} is not unique")),
            None => problems.push(format!("{at}: no operationId")),
        }
        for t in op["tags"].as_array().into_iter().flatten() {
            if !tags.contains(t.as_str().unwrap_or_default()) {
                problems.push(format!("{at}: tag {t} is not declared"));
            }
        }
        let role = op["x-etcdmon-role"].as_str().unwrap_or_default();
        if !["none", "viewer", "operator", "admin"].contains(&role) {
            problems.push(format!(
                "{at}: x-etcdmon-role {role:?} is not none, viewer, operator or admin"
            ));
        }
        let security = op.get("security").unwrap_or(&spec["security"]);
        let open = security.as_array().is_some_and(Vec::is_empty);
        if open != (role == "none") {
            problems.push(format!(
                "{at}: security {security} disagrees with x-etcdmon-role {role}"
            ));
        }
        for req in security.as_array().into_iter().flatten() {
            for name in req.as_object().into_iter().flatten().map(|(k, _)| k) {
                if schemes.get(name).is_none() {
                    problems.push(format!("{at}: security scheme {name} is not declared"));
                }
            }
        }
        // Parameters: declared once, with a schema and an example that fits it;
        // the path's are exactly the template's.
        let params = parameters(&spec, op, item);
        let mut seen = BTreeSet::new();
        let mut in_path = BTreeSet::new();
        for param in &params {
            let name = param["name"].as_str().unwrap_or_default();
            let place = param["in"].as_str().unwrap_or_default();
            if !["query", "path", "header", "cookie"].contains(&place) {
                problems.push(format!("{at}: parameter {name:?} is in {place:?}"));
            }
            if !seen.insert((name, place)) {
                problems.push(format!(
                    "{at}: parameter {name} ({place}) is declared twice"
                ));
            }
            if place == "path" {
                in_path.insert(name.to_owned());
                if param["required"] != Value::Bool(true) {
                    problems.push(format!("{at}: path parameter {name} must be required"));
                }
            }
            match (param.get("schema"), param.get("example")) {
                (Some(schema), Some(example)) => {
                    if let Err(e) =
                        v.check(schema, example, &format!("{at} parameter {name} example"))
                    {
                        problems.push(e);
                    }
                }
                _ => problems.push(format!(
                    "{at}: parameter {name} needs a schema and an example"
                )),
            }
        }
        if in_path != template_names(&path) {
            problems.push(format!(
                "{at}: path parameters {in_path:?} are not the template's {:?}",
                template_names(&path)
            ));
        }
        // Request bodies: JSON with an example that fits the schema.
        if let Some(body) = op.get("requestBody") {
            let media = &body["content"]["application/json"];
            match (media.get("schema"), media.get("example")) {
                (Some(schema), Some(example)) => {
                    if let Err(e) = v.check(schema, example, &format!("{at} body example")) {
                        problems.push(e);
                    }
                }
                _ => problems.push(format!(
                    "{at}: the JSON request body needs a schema and an example"
                )),
            }
        }
        // Responses: status codes with a description; JSON ones with a schema.
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        if responses.is_empty() {
            problems.push(format!("{at}: no responses"));
        }
        for (code, r) in &responses {
            let r = deref(&spec, r);
            if !(code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit())) {
                problems.push(format!("{at}: response {code:?} is not a status code"));
            }
            if !r["description"].is_string() {
                problems.push(format!("{at} {code}: no description"));
            }
            for (media, content) in r["content"].as_object().into_iter().flatten() {
                match content.get("schema") {
                    Some(schema) => {
                        schema_keywords(schema, &format!("{at} {code} {media}"), &mut problems)
                    }
                    None => problems.push(format!("{at} {code} {media}: no schema")),
                }
            }
        }
    }
    if ids.len() < 20 {
        problems.push(format!(
            "only {} operations: not the collector's API",
            ids.len()
        ));
    }
    fail_on(problems, "docs/openapi.json");
}

// ---------------------------------------------------------------------------
// (c) The file has every route of the source, and no other.

/// (METHOD, path) of every `.route("...", get(..).post(..))` in `text`.
fn routes_in(text: &str) -> Vec<(String, String)> {
    // Test modules may build routers of their own.
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let args = rest.trim_start();
        let Some(literal) = args.strip_prefix('"') else {
            continue;
        };
        let Some(end) = literal.find('"') else { break };
        let path = &literal[..end];
        // The method router: up to the `)` that closes `.route(`.
        let mut depth = 1;
        let router: String = literal[end + 1..]
            .chars()
            .take_while(|c| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth > 0
            })
            .collect();
        for m in ["get", "post", "put", "delete", "patch"] {
            let call = format!("{m}(");
            let found = router.match_indices(&call).any(|(at, _)| {
                router[..at]
                    .chars()
                    .last()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
            });
            if found {
                out.push((m.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

fn server_routes() -> BTreeSet<(String, String)> {
    let api = root().join("src/api");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&api)
        .expect("collector/src/api")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    // `/metrics` and `/healthz`, merged in by the service.
    files.push(root().join("../common/core/src/ops.rs"));
    files
        .iter()
        .flat_map(|f| routes_in(&std::fs::read_to_string(f).expect("read a source file")))
        .collect()
}

#[test]
fn every_route_of_the_source_is_in_the_file_and_no_other() {
    let spec = load_spec();
    let served = server_routes();
    assert!(
        served.len() >= 25 && served.contains(&("GET".into(), "/healthz".into())),
        "the route scan found too little: {served:?}"
    );
    let documented: BTreeSet<(String, String)> = operations(&spec)
        .into_iter()
        .map(|(m, p, _, _)| (m, p))
        .collect();
    let mut problems: Vec<String> = served
        .difference(&documented)
        .map(|(m, p)| format!("{m} {p} is served but not in docs/openapi.json"))
        .collect();
    problems.extend(
        documented
            .difference(&served)
            .map(|(m, p)| format!("{m} {p} is in docs/openapi.json but not served")),
    );
    fail_on(problems, "routes");
}

// ---------------------------------------------------------------------------
// Roles: `x-etcdmon-role` is what the server's access table enforces.

#[test]
fn every_operations_role_is_the_one_the_server_enforces() {
    use etcdmon_collector::api::auth::{access, Access};
    let spec = load_spec();
    let mut problems = Vec::new();
    for (method, path, op, _) in operations(&spec) {
        let m = http::Method::from_bytes(method.as_bytes()).expect("a method");
        let enforced = match access(&m, &path) {
            Access::Public => "none",
            Access::At(role) => role.as_str(),
        };
        let documented = op["x-etcdmon-role"].as_str().unwrap_or_default();
        if enforced != documented {
            problems.push(format!(
                "{method} {path}: docs/openapi.json says {documented}, the server (auth::ENDPOINTS) enforces {enforced}"
            ));
        }
    }
    fail_on(problems, "roles");
}

// ---------------------------------------------------------------------------
// (d) docs/api.md names every path.

#[test]
fn api_md_names_every_path_of_the_file() {
    let spec = load_spec();
    let md = std::fs::read_to_string(root().join("../docs/api.md")).expect("read docs/api.md");
    let path_char = |c: char| c.is_alphanumeric() || "/{}_-.".contains(c);
    let mut problems = Vec::new();
    for path in spec["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(p, _)| p)
    {
        // The whole path, not the start of a longer one.
        let named = md.match_indices(path.as_str()).any(|(at, _)| {
            let before = md[..at].chars().last();
            let after = md[at + path.len()..].chars().next();
            !before.is_some_and(path_char) && !after.is_some_and(path_char)
        });
        if !named {
            problems.push(format!("docs/api.md does not name {path}"));
        }
    }
    fail_on(problems, "docs/api.md");
}

// ---------------------------------------------------------------------------
// (b) The real server.

/// An answer: status, media type, body.
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

/// One HTTP/1.0 exchange (the server closes the connection after it).
fn send(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to the collector");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!("{method} {target} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or_default());
    conn.write_all(req.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {target}: no complete answer: {e}"));
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        content_type: content_type(head),
        body: body.to_owned(),
    }
}

/// The media type of a response head, lowercase, without parameters.
fn content_type(head: &str) -> String {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A parameter value as it goes into a URL.
fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// The request body of a call.
#[derive(Clone, Copy)]
enum Body<'b> {
    None,
    /// The example of the operation's request body.
    Example,
    Json(&'b str),
}

/// One request, named by the spec's method and path template.
#[derive(Clone)]
struct Req<'r> {
    method: &'r str,
    template: &'r str,
    /// Path parameters; the others take the spec's examples.
    path: Vec<(&'r str, &'r str)>,
    /// Query parameters; a `None` value is the spec's example.
    query: Vec<(&'r str, Option<&'r str>)>,
    body: Body<'r>,
    headers: Vec<(&'r str, &'r str)>,
}

fn req<'r>(method: &'r str, template: &'r str) -> Req<'r> {
    Req {
        method,
        template,
        path: Vec::new(),
        query: Vec::new(),
        body: Body::None,
        headers: Vec::new(),
    }
}

impl<'r> Req<'r> {
    /// Path parameter `name` is `value`.
    fn at(mut self, name: &'r str, value: &'r str) -> Self {
        self.path.push((name, value));
        self
    }

    /// Query parameters with the spec's examples.
    fn q(mut self, names: &[&'r str]) -> Self {
        self.query.extend(names.iter().map(|n| (*n, None)));
        self
    }

    /// Query parameter `name` is `value`.
    fn qv(mut self, name: &'r str, value: &'r str) -> Self {
        self.query.push((name, Some(value)));
        self
    }

    fn query(mut self, pairs: &[(&'r str, Option<&'r str>)]) -> Self {
        self.query.extend_from_slice(pairs);
        self
    }

    /// The spec's example body.
    fn example(mut self) -> Self {
        self.body = Body::Example;
        self
    }

    fn json(mut self, body: &'r str) -> Self {
        self.body = Body::Json(body);
        self
    }

    fn header(mut self, name: &'r str, value: &'r str) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Calls the real server and checks each answer against the spec.
struct Run<'a> {
    spec: &'a Value,
    v: Validator<'a>,
    port: u16,
    /// (METHOD, template) -> the statuses it answered (those the spec lists).
    seen: BTreeMap<(String, String), BTreeSet<u16>>,
    /// (METHOD, template) -> the query parameters of its successful calls.
    accepted: BTreeMap<(String, String), BTreeSet<String>>,
    problems: Vec<String>,
}

impl<'a> Run<'a> {
    fn op(&self, method: &str, template: &str) -> Option<(&'a Value, &'a Value)> {
        let spec: &'a Value = self.spec;
        let item = spec["paths"].get(template)?;
        Some((item.get(method.to_ascii_lowercase())?, item))
    }

    /// Sends `r`; the answer must be `expect`, a status the spec lists, and fit
    /// its schema. A request meant to succeed may only use parameters and a
    /// body the spec describes. Returns the JSON body (null if none).
    fn call(&mut self, r: Req<'_>, expect: u16) -> Value {
        let (method, template) = (r.method, r.template);
        let Some((op, item)) = self.op(method, template) else {
            self.problems
                .push(format!("{method} {template} is called but not in the spec"));
            return Value::Null;
        };
        let ok = (200..300).contains(&expect);
        let params = parameters(self.spec, op, item);
        let param = |name: &str, place: &str| {
            params
                .iter()
                .find(|p| p["name"] == name && p["in"] == place)
                .copied()
        };
        let mut target = template.to_owned();
        for name in template_names(template) {
            let value = r
                .path
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
                .or_else(|| param(&name, "path").map(|p| text_of(&p["example"])))
                .unwrap_or_default();
            target = target.replace(&format!("{{{name}}}"), &enc(&value));
        }
        let mut pairs = Vec::new();
        for (name, value) in &r.query {
            let declared = param(name, "query");
            if declared.is_none() && ok {
                self.problems.push(format!(
                    "{method} {template}: the test sends `{name}`, which the spec does not declare"
                ));
            }
            let value = match value {
                Some(v) => (*v).to_owned(),
                None => declared.map(|p| text_of(&p["example"])).unwrap_or_default(),
            };
            pairs.push(format!("{}={}", enc(name), enc(&value)));
        }
        if !pairs.is_empty() {
            target = format!("{target}?{}", pairs.join("&"));
        }
        let media = &op["requestBody"]["content"]["application/json"];
        let body = match r.body {
            Body::None => None,
            Body::Example => Some(media["example"].to_string()),
            Body::Json(s) => Some(s.to_owned()),
        };
        let what = format!("{method} {target}");
        if let (Some(b), true) = (&body, ok) {
            let parsed: Value = serde_json::from_str(b).unwrap_or_default();
            if let Err(e) = self.v.check(&media["schema"], &parsed, "$") {
                self.problems.push(format!(
                    "{what}: the request body does not fit the spec: {e}"
                ));
            }
        }
        let reply = send(self.port, method, &target, &r.headers, body.as_deref());
        self.judge(&what, method, template, op, &reply, expect);
        if (200..300).contains(&reply.status) {
            let names = r.query.iter().map(|(n, _)| (*n).to_owned());
            self.accepted
                .entry((method.to_owned(), template.to_owned()))
                .or_default()
                .extend(names);
        }
        serde_json::from_str(&reply.body).unwrap_or(Value::Null)
    }

    /// Checks `reply` to `what` against the operation's responses.
    fn judge(
        &mut self,
        what: &str,
        method: &str,
        template: &str,
        op: &Value,
        reply: &Reply,
        expect: u16,
    ) {
        let status = reply.status;
        let body = short(&Value::String(reply.body.clone()));
        if status != expect {
            self.problems
                .push(format!("{what}: expected {expect}, got {status}: {body}"));
        }
        let Some(response) = op["responses"].get(status.to_string()) else {
            self.problems.push(format!(
                "{what}: answered {status}, which the spec does not list for it: {body}"
            ));
            return;
        };
        self.seen
            .entry((method.to_owned(), template.to_owned()))
            .or_default()
            .insert(status);
        let response = deref(self.spec, response);
        let Some(content) = response["content"].as_object() else {
            if !reply.body.is_empty() {
                self.problems.push(format!(
                    "{what}: {status} has no content in the spec, but a body: {body}"
                ));
            }
            return;
        };
        // `*/*`: any file, not looked into.
        let Some(media) = content
            .get(&reply.content_type)
            .or_else(|| content.get("*/*"))
        else {
            self.problems.push(format!(
                "{what}: {status} is {:?}, the spec has {:?}",
                reply.content_type,
                content.keys().collect::<Vec<_>>()
            ));
            return;
        };
        if reply.content_type == "application/json" {
            match serde_json::from_str::<Value>(&reply.body) {
                Ok(json) => {
                    if let Err(e) = self.v.check(&media["schema"], &json, "$") {
                        self.problems.push(format!(
                            "{what}: the {status} body does not fit the spec: {e}\n  body: {}",
                            short(&json)
                        ));
                    }
                }
                Err(e) => self
                    .problems
                    .push(format!("{what}: {status} is not JSON ({e}): {body}")),
            }
        } else if status < 300 && reply.body.is_empty() {
            self.problems
                .push(format!("{what}: an empty {status} body"));
        }
    }

    /// Records a problem unless `ok` (a panic would hide the other problems).
    fn require(&mut self, ok: bool, what: String) {
        if !ok {
            self.problems.push(what);
        }
    }

    /// Opens `GET /api/v1/stream` and checks its head; the lines of the body
    /// are collected by a thread as they arrive.
    async fn open_stream(&mut self) -> Arc<Mutex<Vec<String>>> {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            conn,
            "GET /api/v1/stream HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nAccept: text/event-stream\r\n\r\n",
            self.port
        )
        .expect("request the stream");
        let out = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { break };
                out.lock().expect("lock").push(line);
            }
        });
        // The subscription is made when the head is answered.
        let head = common::eventually(Duration::from_secs(5), || {
            let l = lines.lock().expect("lock");
            let end = l.iter().position(String::is_empty)?;
            Some(l[..end].join("\r\n"))
        })
        .await
        .unwrap_or_default();
        let reply = Reply {
            status: head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            content_type: content_type(&head),
            body: "(a stream)".into(),
        };
        let (op, _) = self
            .op("GET", "/api/v1/stream")
            .expect("the stream is in the spec");
        self.judge(
            "GET /api/v1/stream",
            "GET",
            "/api/v1/stream",
            op,
            &reply,
            200,
        );
        lines
    }

    /// Checks the items the stream carried against the spec's
    /// `x-etcdmon-events`; returns how many of each kind there were.
    fn stream_items(&mut self, lines: &[String]) -> BTreeMap<String, usize> {
        let spec: &'a Value = self.spec;
        let kinds = &spec["paths"]["/api/v1/stream"]["get"]["responses"]["200"]["content"]
            ["text/event-stream"]["x-etcdmon-events"];
        let body = lines.iter().skip_while(|l| !l.is_empty()).skip(1);
        let (mut event, mut data) = (String::new(), String::new());
        let mut counts = BTreeMap::new();
        for line in body.chain(std::iter::once(&String::new())) {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim());
            } else if line.is_empty() && !data.is_empty() {
                let kind = if event.is_empty() { "message" } else { &event };
                *counts.entry(kind.to_owned()).or_insert(0) += 1;
                match (kinds.get(kind), serde_json::from_str::<Value>(&data)) {
                    (Some(schema), Ok(json)) => {
                        if let Err(e) = self.v.check(schema, &json, "$") {
                            self.problems
                                .push(format!("stream item `{kind}` does not fit the spec: {e}"));
                        }
                    }
                    (None, _) => self
                        .problems
                        .push(format!("stream item `{kind}` is not in the spec: {data}")),
                    (_, Err(e)) => self
                        .problems
                        .push(format!("stream item `{kind}` is not JSON ({e}): {data}")),
                }
                event.clear();
                data.clear();
            } else if line.is_empty() {
                event.clear();
            }
        }
        counts
    }
}

/// Writes alerts into the store as the alerter does: one firing, one resolved,
/// and a delivery of each.
async fn seed_alerts(db: &Path) {
    let store = SqliteStorage::open(db, Retention::default()).expect("open the collector's store");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let labels = |member: &str, rule: &str| {
        serde_json::json!({"cluster": CLUSTER, "member": member, "rule": rule, "severity": "critical"})
            .to_string()
    };
    let transition = |fingerprint: &str, n: u64, state, member: &str, value: f64| {
        AlertTransitionRow {
        fingerprint: fingerprint.into(),
        transition: n,
        state,
        cluster: CLUSTER.into(),
        rule: "member_unreachable".into(),
        severity: "critical".into(),
        labels_json: labels(member, "member_unreachable"),
        annotations_json: serde_json::json!({"summary": format!("etcd member {member} is unreachable from its agent")})
            .to_string(),
        value,
        active_since_ms: now - 60_000,
        received_ms: now - 59_000,
    }
    };
    store
        .record_transitions(&[
            transition(FIRING, 1, AlertState::Firing, "m1", 1.0),
            // No value: answered as null.
            transition(RESOLVED, 2, AlertState::Resolved, "m2", f64::NAN),
        ])
        .await
        .expect("record transitions");
    let delivery = |fingerprint: &str, n: u64, state: &str| AlertDeliveryRow {
        receiver: "pagerduty".into(),
        fingerprint: fingerprint.into(),
        transition: n,
        state: state.into(),
        group_key: format!("0.0:{{cluster=\"{CLUSTER}\",rule=\"member_unreachable\"}}"),
        reason: "new".into(),
        attempt_ms: now - 58_000,
        attempt: 1,
        outcome: "ok".into(),
        detail: "HTTP 202 Accepted".into(),
    };
    store
        .record_deliveries(&[
            delivery(FIRING, 1, "firing"),
            delivery(RESOLVED, 2, "resolved"),
        ])
        .await
        .expect("record deliveries");
}

/// Every query parameter of `/api/v1/query` and `/api/v1/compare`, spread over
/// calls that each make sense (a `None` value is the spec's example).
const QUERY_CALLS: &[&[(&str, Option<&str>)]] = &[
    &[("metric", None)],
    &[
        ("metric", None),
        ("fn", None),
        ("window", None),
        ("agg", None),
        ("by", None),
        ("from", None),
        ("to", None),
        ("step", None),
    ],
    &[
        ("metric", Some("etcd_disk_wal_fsync_duration_seconds")),
        ("fn", Some("quantile")),
        ("q", None),
        ("merge_labels", None),
        ("window", Some("30s")),
        ("step", Some("10s")),
        ("from", Some("now-5m")),
        ("by", Some("member")),
    ],
    &[
        ("metric", None),
        ("cluster", None),
        ("region", None),
        ("tag", None),
        ("group", None),
        ("member", None),
        ("labels", None),
    ],
    &[
        ("metric", None),
        ("clusters", None),
        ("fn", Some("increase")),
    ],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_the_file_says() {
    let started = Instant::now();
    let spec = load_spec();
    let etcd = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("etcdmon.sqlite");
    let config = dir.path().join("collector.toml");
    // A cluster of the config file (PUT and DELETE answer 409 for it),
    // `cluster_not_reporting` at once (the stream carries an alert soon), and
    // a consistency check every second (members show their `kv_hash`).
    std::fs::write(
        &config,
        format!(
            "[[clusters]]\nname = \"{FROM_FILE}\"\n[rules.cluster_not_reporting]\nfor = \"0s\"\n\
             [consistency]\ninterval = \"1s\"\n"
        ),
    )
    .expect("write the config");
    // A certificate for the agents to watch (members show `certificates`).
    let tls = generate_tls(&dir.path().join("tls"), 30).expect("a certificate");
    let config = config.display().to_string();
    let collector = CollectorProc::start_with_args(
        &format!("sqlite:{}", db.display()),
        dir.path(),
        &[
            "--allow-plaintext",
            "--anonymous",
            "admin",
            "--config",
            &config,
        ],
    );
    let port: u16 = collector.http;
    let mut run = Run {
        spec: &spec,
        v: Validator::new(&spec),
        port,
        seen: BTreeMap::new(),
        accepted: BTreeMap::new(),
        problems: Vec::new(),
    };
    // Subscribed before anything happens, so it sees what follows.
    let stream = run.open_stream().await;

    // The real members, in the region and with the tags of the spec's examples.
    let mut agents = Vec::new();
    for m in etcd.members() {
        let mut cfg = common::agent_config(CLUSTER, m, &collector.grpc_url(), dir.path());
        cfg.identity.region = "eu-west-1".into();
        cfg.certs.files.push(CertFile {
            path: tls.ca_cert.clone(),
            role: CertRoleConfig::Ca,
        });
        cfg.identity.tags = [("env", "prod"), ("group", "storage")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        agents.push(
            Agent::serve_tapped(&cfg, AgentMetrics::new(), None, None, &Shutdown::new())
                .expect("agent"),
        );
    }
    // An agent whose etcd is not there: a member_down event and alerts at once.
    let mut lab = common::agent_config(LAB, &etcd.members()[0], &collector.grpc_url(), dir.path());
    let dead = free_port();
    lab.identity.member_name = "lab-0".into();
    lab.etcd.endpoint = format!("http://127.0.0.1:{dead}");
    lab.etcd.metrics_url = format!("http://127.0.0.1:{dead}/metrics");
    lab.etcd.data_dir = None;
    lab.upstream.spool_dir = Some(dir.path().join("lab-0"));
    agents.push(
        Agent::serve_tapped(&lab, AgentMetrics::new(), None, None, &Shutdown::new())
            .expect("lab agent"),
    );
    seed_alerts(&db).await;

    // The three members reported, and samples are stored.
    let reported = common::eventually(Duration::from_secs(30), || {
        let r = send(
            port,
            "GET",
            &format!("/api/v1/clusters/{CLUSTER}"),
            &[],
            None,
        );
        let c: Value = serde_json::from_str(&r.body).ok()?;
        let members = c["members"].as_object()?;
        let ready = |m: &Value| {
            m["reachable"] == true
                && m["kv_hash"].is_object()
                && m["certificates"].as_array().is_some_and(|c| !c.is_empty())
        };
        (members.len() == 3 && members.values().all(ready)).then_some(())
    })
    .await;
    assert!(
        reported.is_some(),
        "the 3 members did not report: {}",
        collector.log_text()
    );
    let stored = common::eventually(Duration::from_secs(20), || {
        let r = send(
            port,
            "GET",
            "/api/v1/query?metric=grpc_server_started_total&fn=rate&window=5s&step=5s&from=now-1m",
            &[],
            None,
        );
        let q: Value = serde_json::from_str(&r.body).ok()?;
        let points = q["series"]
            .as_array()?
            .iter()
            .any(|s| s["points"].as_array().is_some_and(|p| !p.is_empty()));
        points.then_some(())
    })
    .await;
    assert!(
        stored.is_some(),
        "no rates stored: {}",
        collector.log_text()
    );

    // Operations.
    run.call(req("GET", "/healthz"), 200);
    run.call(req("GET", "/metrics"), 200);
    // The web page, or a redirect to /status when built without it.
    let page = if web::embedded() { 200 } else { 303 };
    run.call(req("GET", "/"), page);
    run.call(req("GET", "/status"), 200);
    let asset = "/assets/{file}";
    run.call(req("GET", asset).at("file", "nothing.js"), 404);
    if web::embedded() {
        let index = send(port, "GET", "/", &[], None).body;
        let name = index
            .split("/assets/")
            .nth(1)
            .and_then(|r| r.split('"').next());
        run.call(req("GET", asset).at("file", name.unwrap_or_default()), 200);
    }
    run.call(req("GET", "/docs/{name}"), 200);
    run.call(req("GET", "/docs/{name}").at("name", "nothing.md"), 404);
    let me = run.call(req("GET", "/api/v1/whoami"), 200);
    let admin = me["role"] == "admin";
    run.require(admin, format!("the anonymous admin expected: {me}"));

    // Fleet: registrations first, so the lists hold every shape.
    let c = "/api/v1/clusters/{cluster}";
    run.call(req("PUT", c).example(), 200);
    let silent = r#"{"region": "us-east-1", "owner": "team-storage", "members": ["n0"],
                     "tags": {"env": "prod"}}"#;
    run.call(req("PUT", c).at("cluster", SILENT).json(silent), 200);
    run.call(req("PUT", c).at("cluster", FROM_FILE).json("{}"), 409);
    run.call(req("PUT", c).json(r#"{"regoin": "eu"}"#), 400);
    run.call(req("PUT", c).json(r#"{"members": [""]}"#), 400);
    let lab_seen = common::eventually(Duration::from_secs(10), || {
        let r = send(port, "GET", &format!("/api/v1/clusters/{LAB}"), &[], None);
        (r.status == 200).then_some(())
    })
    .await;
    assert!(lab_seen.is_some(), "the lab agent did not report");
    let clusters = "/api/v1/clusters";
    let all = run.call(req("GET", clusters), 200);
    let listed = all["clusters"].as_array().map(Vec::len);
    run.require(listed >= Some(4), format!("4 clusters expected: {all}"));
    run.call(req("GET", clusters).q(&["region"]), 200);
    run.call(req("GET", clusters).q(&["tag"]), 200);
    run.call(req("GET", clusters).qv("tag", "env"), 400);
    let members = format!("{c}/members");
    for name in [CLUSTER, SILENT, FROM_FILE, LAB] {
        run.call(req("GET", c).at("cluster", name), 200);
        run.call(req("GET", &members).at("cluster", name), 200);
    }
    run.call(req("GET", c).at("cluster", "nowhere"), 404);
    run.call(req("GET", &members).at("cluster", "nowhere"), 404);
    let ev = format!("{c}/events");
    let timeline = req("GET", &ev)
        .at("cluster", LAB)
        .q(&["from", "to", "limit"]);
    let lab_events = run.call(timeline, 200);
    let events = lab_events["events"].as_array().map(Vec::len);
    run.require(
        events > Some(0),
        format!("the lab member's event expected: {lab_events}"),
    );
    let seeded = run.call(req("GET", &ev), 200);
    let alerted = seeded["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["kind"] == "alert_firing");
    run.require(
        alerted,
        format!("the firing alert in the timeline expected: {seeded}"),
    );
    run.call(req("GET", &ev).qv("limit", "0"), 400);
    run.call(req("GET", &ev).qv("from", "yesterday"), 400);

    // Stored metrics.
    let h = format!("{c}/metrics/history");
    let history = req("GET", &h)
        .q(&["metric", "member", "to", "step"])
        .qv("from", "now-5m");
    let history = run.call(history, 200);
    let series = history["series"].as_array().map(Vec::len);
    run.require(
        series > Some(0),
        format!("stored points expected: {history}"),
    );
    let probe = req("GET", &h)
        .q(&["labels"])
        .qv("metric", "etcdmon_fsync_probe_seconds");
    run.call(probe.qv("from", "now-5m"), 200);
    run.call(req("GET", &h), 400);
    run.call(req("GET", &h).q(&["metric"]).qv("step", "0"), 400);
    // Each member's figures: now from the live state, latencies from storage.
    let current = format!("{c}/metrics/current");
    let now = run.call(req("GET", &current), 200);
    let figures = now["members"].as_object().map(|m| m.len());
    run.require(
        figures == Some(3),
        format!("3 members' figures expected: {now}"),
    );
    run.call(req("GET", &current).qv("window", "1m"), 400);
    run.call(req("GET", &current).at("cluster", "nowhere"), 404);
    let latency = format!("{c}/latency");
    let late = run.call(req("GET", &latency).q(&["window"]), 200);
    let figures = late["members"].as_object().map(|m| m.len());
    run.require(
        figures == Some(3),
        format!("3 members' latencies expected: {late}"),
    );
    run.call(req("GET", &latency), 200);
    run.call(req("GET", &latency).qv("window", "2d"), 400);
    run.call(req("GET", &latency).at("cluster", "nowhere"), 404);
    for q in ["/api/v1/query", "/api/v1/compare"] {
        for params in QUERY_CALLS {
            run.call(req("GET", q).query(params), 200);
        }
        run.call(req("GET", q).q(&["metric"]).qv("fn", "median"), 400);
        run.call(req("GET", q).q(&["metric", "cluster", "clusters"]), 400);
        run.call(req("GET", q), 400);
    }

    // Silences and maintenance windows.
    let silences = "/api/v1/silences";
    let silence = run.call(req("POST", silences).example(), 201);
    let silence_id = silence["id"].as_str().unwrap_or_default().to_owned();
    run.require(
        !silence_id.is_empty(),
        format!("a silence id expected: {silence}"),
    );
    let no_matcher = r#"{"matchers": [], "duration": "1h", "created_by": "a"}"#;
    run.call(req("POST", silences).json(no_matcher), 400);
    let no_end = r#"{"matchers": ["x=\"y\""], "created_by": "a"}"#;
    run.call(req("POST", silences).json(no_end), 400);
    let maintenance = "/api/v1/maintenance";
    let window = run.call(req("POST", maintenance).example(), 201);
    let window_id = window["id"].as_str().unwrap_or_default().to_owned();
    let is_window = window_id.starts_with("mw-");
    run.require(is_window, format!("a window id expected: {window}"));
    let no_reason = r#"{"cluster": "c", "duration": "1h", "reason": ""}"#;
    run.call(req("POST", maintenance).json(no_reason), 400);
    run.call(req("GET", silences), 200);
    let one = "/api/v1/silences/{id}";
    run.call(req("GET", one).at("id", &silence_id), 200);
    run.call(req("GET", one), 404);
    run.call(req("GET", maintenance), 200);

    // Alerts (as seeded), acknowledged.
    let ack = "/api/v1/alerts/{fingerprint}/ack";
    run.call(req("GET", "/api/v1/alerts"), 200);
    run.call(req("POST", ack).example(), 200);
    run.call(req("POST", ack).json(r#"{"by": "bob"}"#), 200);
    run.call(req("POST", ack).at("fingerprint", RESOLVED).example(), 409);
    run.call(
        req("POST", ack)
            .at("fingerprint", "0000000000000000")
            .example(),
        404,
    );
    run.call(req("POST", ack).json("{}"), 400);
    let filtered = req("GET", "/api/v1/alerts").q(&["state", "cluster", "fingerprint"]);
    let alerts = run.call(filtered, 200);
    let alert = &alerts["alerts"][0];
    let acked = alert["acknowledged"]["by"] == "alice";
    run.require(acked, format!("acknowledged by alice expected: {alerts}"));
    let muted = alert["silenced_by"][0] == window_id;
    run.require(muted, format!("silenced by {window_id} expected: {alerts}"));
    let resolved = run.call(req("GET", "/api/v1/alerts").qv("state", "resolved"), 200);
    let no_value = resolved["alerts"][0]["value"] == Value::Null;
    run.require(no_value, format!("a null value expected: {resolved}"));
    run.call(req("GET", "/api/v1/alerts").qv("state", "pending"), 400);
    let history = "/api/v1/alerts/history";
    let all_params = ["from", "to", "cluster", "fingerprint", "limit"];
    let past = run.call(req("GET", history).q(&all_params), 200);
    let deliveries = past["deliveries"].as_array().map(Vec::len);
    run.require(deliveries > Some(0), format!("deliveries expected: {past}"));
    let past = run.call(req("GET", history), 200);
    let windows = past["maintenance"].as_array().map(Vec::len);
    run.require(
        windows > Some(0),
        format!("maintenance windows expected: {past}"),
    );
    run.call(req("GET", history).qv("limit", "0"), 400);

    // Ended: the silence, the window.
    run.call(req("DELETE", one).at("id", &silence_id), 200);
    run.call(req("DELETE", one), 404);
    let end = "/api/v1/maintenance/{id}";
    run.call(req("DELETE", end).at("id", &window_id), 200);
    run.call(req("DELETE", end), 404);

    // Tokens.
    let tokens = "/api/v1/tokens";
    let token = run.call(req("POST", tokens).example(), 201);
    let token_id = token["id"].as_str().unwrap_or_default().to_owned();
    let secret = token["token_secret"].as_str().unwrap_or_default();
    run.require(
        secret.starts_with("etm_"),
        format!("a secret expected: {token}"),
    );
    run.call(req("POST", tokens).example(), 409);
    run.call(
        req("POST", tokens).json(r#"{"name": "a b", "role": "viewer"}"#),
        400,
    );
    run.call(
        req("POST", tokens).json(r#"{"name": "ci", "role": "root"}"#),
        400,
    );
    let revoke = "/api/v1/tokens/{id}";
    run.call(req("DELETE", revoke).at("id", &token_id), 204);
    run.call(req("DELETE", revoke), 404);
    run.call(req("DELETE", revoke).at("id", "config:root"), 409);
    let listed = run.call(req("GET", tokens), 200);
    let revoked = listed["tokens"][0]["state"] == "revoked";
    run.require(revoked, format!("a revoked token expected: {listed}"));

    // The audit log of all that.
    let audit = run.call(req("GET", "/api/v1/audit").q(&["from", "to", "limit"]), 200);
    let entries = audit["entries"].as_array().map(Vec::len);
    run.require(
        entries > Some(5),
        format!("audited changes expected: {audit}"),
    );
    run.call(req("GET", "/api/v1/audit").qv("limit", "0"), 400);

    // Registrations dropped.
    run.call(req("DELETE", c).at("cluster", SILENT), 204);
    run.call(req("DELETE", c).at("cluster", SILENT), 404);
    run.call(req("DELETE", c).at("cluster", FROM_FILE), 409);

    // Every operation refuses a caller with a bad token (401) and a request
    // through a foreign name (403), as the spec says.
    for (method, path, op, _) in operations(&spec) {
        let open = op.get("security").and_then(Value::as_array);
        if open.is_some_and(Vec::is_empty) {
            continue;
        }
        let mut r = req(&method, &path);
        if op.get("requestBody").is_some() {
            r = r.example();
        }
        let bad_token = r.clone().header("Authorization", "Bearer not-a-token");
        run.call(bad_token, 401);
        run.call(r.header("Host", "evil.example"), 403);
    }

    // The stream carried the lab member's event and the alerts that followed.
    let carried = common::eventually(Duration::from_secs(10), || {
        let lines = stream.lock().expect("lock");
        let text = lines.join("\n");
        (text.contains("event: event") && text.contains("event: alert")).then_some(())
    })
    .await;
    let lines = stream.lock().expect("lock").clone();
    let counts = run.stream_items(&lines);
    if carried.is_none() {
        run.problems
            .push(format!("the stream carried no event and alert: {counts:?}"));
    }

    // Coverage: every operation answered every status the spec lists for it
    // (storage failures aside), and accepted every query parameter it declares.
    // Whether the web page was built in decides which of its answers exist.
    let other_build = |path: &str, status: u16| match (path, status) {
        ("/", 200) | ("/assets/{file}", 200) => !web::embedded(),
        ("/", 303) => web::embedded(),
        _ => false,
    };
    let mut covered = 0;
    for (method, path, op, item) in operations(&spec) {
        let key = (method.clone(), path.clone());
        let seen = run.seen.get(&key).cloned().unwrap_or_default();
        let mut complete = true;
        for code in op["responses"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(c, _)| c)
        {
            let status: u16 = code.parse().unwrap_or(0);
            if status != 500
                && status != 503
                && !other_build(&path, status)
                && !seen.contains(&status)
            {
                complete = false;
                run.problems.push(format!(
                    "{method} {path}: the spec lists {status}, never answered"
                ));
            }
        }
        let accepted = run.accepted.get(&key).cloned().unwrap_or_default();
        for p in parameters(&spec, op, item) {
            let name = p["name"].as_str().unwrap_or_default();
            if p["in"] == "query" && !accepted.contains(name) {
                complete = false;
                run.problems.push(format!(
                    "{method} {path}: query parameter {name} never accepted in a call"
                ));
            }
        }
        if complete {
            covered += 1;
        }
    }
    let never: Vec<String> = spec["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, _)| n.clone())
        .filter(|n| !run.v.used.borrow().contains(n))
        .collect();
    // Request-only schemas are checked against the bodies sent.
    let calls: usize = run.seen.values().map(BTreeSet::len).sum();
    println!(
        "{covered} of {} operations covered ({calls} operation/status pairs seen), stream items {counts:?}, \
         schemas never instantiated: {never:?}, {:.1} s",
        operations(&spec).len(),
        started.elapsed().as_secs_f64()
    );
    drop(agents);
    fail_on(run.problems, "the server against docs/openapi.json");
}
