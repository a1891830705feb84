//! The schema follows the validator: both directions are checked on every mapping the validator opens.
//!
//! `Obj::open` (validate/walk.rs) reports each mapping it opens, with the keys it allows, to [`opened`] while a
//! test records. Documents generated from the schema (every property of every object, each `oneOf` branch in
//! turn) and every example are validated while recording; then
//! - every mapping the validator opened must be an object of the schema at the same path with the same keys
//!   (so a key the validator accepts and the schema lacks fails, and the other way round), and
//! - every object the generator wrote must have been opened by the validator (so the schema describes no
//!   object the validator never reads).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{json_schema, json_schema_text, markdown, resolve};

/// The keys of a `properties` mapping.
fn property_keys(node: &Value) -> Vec<String> {
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// What to do when a check fails.
const FIX: &str = "The schema and the validator disagree: describe the validator's keys in \
config/src/schema/weir.schema.yaml, then run `cargo run -p weir-config --example schema`.";

/// Mappings the validator opened: each one's path and the keys it allows.
type Opened = Vec<(String, Vec<String>)>;

thread_local! {
    /// The mappings opened on this thread while recording.
    static OPENED: RefCell<Option<Opened>> = const { RefCell::new(None) };
}

/// Called by `Obj::open` for every mapping it opens (tests only).
pub(crate) fn opened(path: &str, allowed: &[&str]) {
    OPENED.with(|o| {
        if let Some(list) = o.borrow_mut().as_mut() {
            list.push((
                path.to_string(),
                allowed.iter().map(|k| k.to_string()).collect(),
            ));
        }
    });
}

/// Validates `text` and returns the mappings the validator opened.
fn record(text: &str, base_dir: &Path) -> Opened {
    OPENED.with(|o| *o.borrow_mut() = Some(Vec::new()));
    let _ = crate::parse(text, base_dir);
    OPENED.with(|o| o.borrow_mut().take()).unwrap_or_default()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<PathBuf> {
    let dir = repo().join("deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/examples is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    files
}

/// One segment of a validator path: a field or a list index.
enum Seg {
    Field(String),
    Index,
}

/// Splits `a.b[0].c` into segments.
fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    if path.is_empty() {
        return out;
    }
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Field(name.to_string()));
        }
        for _ in rest.matches('[') {
            out.push(Seg::Index);
        }
    }
    out
}

/// A node with its `$ref` followed, then each of its `oneOf`/`anyOf` branches the same way.
fn expand<'a>(root: &'a Value, node: &'a Value, out: &mut Vec<&'a Value>) {
    let node = resolve(root, node);
    if !node.is_object() {
        return;
    }
    out.push(node);
    for key in ["oneOf", "anyOf"] {
        for branch in node
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            expand(root, branch, out);
        }
    }
}

/// The schema nodes that describe the value at `path`.
fn at_path<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut nodes = vec![root];
    for seg in segments(path) {
        let mut next = Vec::new();
        for node in nodes {
            let mut all = Vec::new();
            expand(root, node, &mut all);
            for n in all {
                let child = match &seg {
                    Seg::Field(key) => n
                        .get("properties")
                        .and_then(|p| p.get(key))
                        .or_else(|| n.get("additionalProperties").filter(|a| a.is_object())),
                    Seg::Index => n.get("items"),
                };
                if let Some(child) = child.filter(|c| c.is_object()) {
                    next.push(child);
                }
            }
        }
        nodes = next;
    }
    nodes
}

/// Checks that every mapping the validator opened is an object of the schema with the same keys.
fn check_opened(root: &Value, opened: &[(String, Vec<String>)], source: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, allowed) in opened {
        let allowed: BTreeSet<String> = allowed.iter().cloned().collect();
        let mut candidates = Vec::new();
        for node in at_path(root, path) {
            expand(root, node, &mut candidates);
        }
        let sets: Vec<BTreeSet<String>> = candidates
            .iter()
            .filter(|c| c.get("properties").is_some())
            .map(|c| property_keys(c).into_iter().collect())
            .collect();
        if sets.is_empty() {
            problems.push(format!(
                "{source}: the validator reads a mapping at `{path}` (keys {allowed:?}) that the schema does not describe"
            ));
        } else if !sets.contains(&allowed) {
            problems.push(format!(
                "{source}: at `{path}` the validator allows {allowed:?}, the schema {sets:?}"
            ));
        }
    }
    problems
}

/// An object the generator wrote.
struct Written {
    path: String,
    keys: Vec<String>,
    required: BTreeSet<String>,
    conditional: BTreeSet<String>,
}

/// Writes a document from the schema: every property of every object, branch `choice` of every `oneOf`.
struct Gen<'a> {
    root: &'a Value,
    choice: usize,
    /// Paths of the objects written that the validator must open.
    objects: Vec<String>,
    /// For each object written: its path, its keys, those the schema requires always, and those a form
    /// (`oneOf` branch) requires.
    keys: Vec<Written>,
}

impl<'a> Gen<'a> {
    fn value(&mut self, node: &'a Value, path: &str, depth: usize) -> Value {
        assert!(depth < 40, "the schema nests too deep at {path}");
        match node.get("$ref").and_then(Value::as_str) {
            Some("#/definitions/duration" | "#/definitions/secondsOrDuration") => {
                return json!("1s")
            }
            Some("#/definitions/text") => return json!("x"),
            Some("#/definitions/weight" | "#/definitions/percentage") => return json!(10),
            _ => {}
        }
        if let Some(example) = node
            .get("examples")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return example.clone();
        }
        let node = resolve(self.root, node);
        if let Some(values) = node.get("enum").and_then(Value::as_array) {
            return values[self.choice % values.len()].clone();
        }
        let branches = node.get("oneOf").and_then(Value::as_array);
        let forms = branches.is_some_and(|b| {
            b.iter()
                .all(|b| b.get("type").is_none() && b.get("$ref").is_none())
        });
        if let (Some(branches), false) = (branches, forms) {
            let branch = &branches[self.choice % branches.len()];
            return self.value(branch, path, depth + 1);
        }
        if let Some(properties) = node.get("properties").and_then(Value::as_object) {
            let mut keys: Vec<&String> = properties.keys().collect();
            if let (Some(branches), true) = (branches, forms) {
                let mentioned = |b: &Value| -> BTreeSet<String> {
                    let mut set: BTreeSet<String> = property_keys(b).into_iter().collect();
                    for k in b
                        .get("required")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        set.extend(k.as_str().map(str::to_string));
                    }
                    set
                };
                let all: BTreeSet<String> = branches.iter().flat_map(mentioned).collect();
                let chosen = mentioned(&branches[self.choice % branches.len()]);
                keys.retain(|k| chosen.contains(*k) || !all.contains(*k));
            }
            self.objects.push(path.to_string());
            let mut required: BTreeSet<String> = node
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            // Keys a form requires are required only in that form: the check leaves them out.
            let conditional: BTreeSet<String> = branches
                .into_iter()
                .flatten()
                .flat_map(|b| {
                    b.get("required")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect();
            required.retain(|k| !conditional.contains(k));
            self.keys.push(Written {
                path: path.to_string(),
                keys: keys.iter().map(|k| k.to_string()).collect(),
                required,
                conditional,
            });
            let mut out = serde_json::Map::new();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                out.insert(key.clone(), self.value(&properties[key], &child, depth + 1));
            }
            return Value::Object(out);
        }
        let types: Vec<&str> = match node.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for ty in ["object", "array", "string", "integer", "number", "boolean"] {
            if !types.contains(&ty) {
                continue;
            }
            return match ty {
                "object" => match node.get("additionalProperties") {
                    Some(v @ Value::Object(_)) => {
                        let mut out = serde_json::Map::new();
                        out.insert(
                            "x".to_string(),
                            self.value(v, &format!("{path}.x"), depth + 1),
                        );
                        Value::Object(out)
                    }
                    _ => json!({}),
                },
                "array" => match node.get("items") {
                    Some(items) => json!([self.value(items, &format!("{path}[0]"), depth + 1)]),
                    None => json!([]),
                },
                "string" => json!("x"),
                "integer" => node.get("minimum").cloned().unwrap_or(json!(1)),
                "number" => json!(1),
                _ => json!(true),
            };
        }
        json!("x")
    }
}

/// The largest number of branches of any `oneOf` or `enum` in the schema.
fn most_branches(node: &Value) -> usize {
    match node {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let own = match (k.as_str(), v) {
                    ("oneOf" | "enum", Value::Array(items)) => items.len(),
                    _ => 0,
                };
                own.max(most_branches(v))
            })
            .max()
            .unwrap_or(0),
        Value::Array(items) => items.iter().map(most_branches).max().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn validator_and_schema_agree_on_every_mapping() {
    let root = json_schema().expect("the schema source parses");
    let dir = tempfile::tempdir().expect("temp dir");
    let rounds = most_branches(&root).max(1);
    let mut problems = Vec::new();
    let mut mappings = 0;
    for choice in 0..rounds {
        let mut gen = Gen {
            root: &root,
            choice,
            objects: Vec::new(),
            keys: Vec::new(),
        };
        let doc = gen.value(&root, "", 0);
        let text = serde_yaml_ng::to_string(&doc).expect("a JSON value is YAML");
        let opened = record(&text, dir.path());
        mappings += opened.len();
        problems.extend(check_opened(
            &root,
            &opened,
            &format!("generated document {choice}"),
        ));
        let seen: BTreeSet<&str> = opened.iter().map(|(p, _)| p.as_str()).collect();
        for path in &gen.objects {
            if !seen.contains(path.as_str()) {
                problems.push(format!(
                    "generated document {choice}: the schema describes an object at `{path}` that the validator never opened\n{text}"
                ));
            }
        }
    }
    for file in examples() {
        let text = std::fs::read_to_string(&file).expect("example readable");
        let opened = record(&text, file.parent().expect("has a folder"));
        mappings += opened.len();
        problems.extend(check_opened(&root, &opened, &file.display().to_string()));
    }
    eprintln!(
        "schema sync: {mappings} mappings opened by the validator over {rounds} generated documents and {} examples, {} problems",
        examples().len(),
        problems.len()
    );
    assert!(problems.is_empty(), "{}\n{FIX}", problems.join("\n"));
}

fn compiled() -> jsonschema::Validator {
    let root = json_schema().expect("the schema source parses");
    jsonschema::draft7::new(&root).expect("the schema is a valid draft-07 schema")
}

fn schema_errors(validator: &jsonschema::Validator, text: &str) -> Vec<String> {
    let value: Value = serde_yaml_ng::from_str(text).expect("YAML parses as JSON data");
    validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn every_example_names_the_schema_and_validates_against_it() {
    let validator = compiled();
    let mut problems = Vec::new();
    let files = examples();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("example readable");
        let first = text.lines().next().unwrap_or_default();
        if first != "# yaml-language-server: $schema=../schema/weir.schema.json" {
            problems.push(format!(
                "{}: the first line must be `# yaml-language-server: $schema=../schema/weir.schema.json`, got `{first}`",
                file.display()
            ));
        }
        for e in schema_errors(&validator, &text) {
            problems.push(format!("{}: {e}", file.display()));
        }
        if let Err(e) = crate::load(file) {
            problems.push(format!("{}: the validator refuses it: {e}", file.display()));
        }
    }
    eprintln!(
        "{} examples validate against deploy/schema/weir.schema.json and weir's validator",
        files.len()
    );
    assert!(problems.is_empty(), "{}\n{FIX}", problems.join("\n"));
}

/// Structural mistakes (unknown keys, wrong types, bad enum values, missing required keys, two variants at
/// once) that both the validator and the schema refuse.
const INVALID: &[(&str, &str)] = &[
    ("unknown top-level key", "listenrs: []\nservices: []\n"),
    ("missing listeners", "services: []\n"),
    ("unknown listener key", "listeners: [{name: a, address: '127.0.0.1:80', tls_: {}}]\nservices: []\n"),
    ("listeners not a list", "listeners: {name: a}\nservices: []\n"),
    ("timeout as a number", "listeners: [{name: a, address: '127.0.0.1:80', timeouts: {idle: true}}]\nservices: []\n"),
    ("bad protocol", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9'], protocol: http3}}]\n"),
    ("stable missing", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s}]\n"),
    ("weight as a string", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9']}, canary: {version: v2, upstreams: ['127.0.0.1:8'], weight: ten}}]\n"),
    ("two step kinds", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9']}, canary: {version: v2, upstreams: ['127.0.0.1:8']}, strategy: {canary: {steps: [{setWeight: 10, pause: {}}]}}}]\n"),
    ("unknown step", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9']}, canary: {version: v2, upstreams: ['127.0.0.1:8']}, strategy: {canary: {steps: [{setWeigth: 10}]}}}]\n"),
    ("canary and blueGreen", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9']}, canary: {version: v2, upstreams: ['127.0.0.1:8']}, strategy: {canary: {}, blueGreen: {preview: {hosts: [p]}}}}]\n"),
    ("bad notifier kind", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: []\nnotifications: [{name: n, kind: pager, url: 'https://x'}]\n"),
    ("two providers", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: []\nanalysisTemplates: [{name: t, metrics: [{name: m, successCondition: 'result > 1', provider: {builtin: {metric: success-rate}, web: {url: 'http://x'}}}]}]\n"),
    ("unknown builtin metric", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: []\nanalysisTemplates: [{name: t, metrics: [{name: m, successCondition: 'result > 1', provider: {builtin: {metric: joy}}}]}]\n"),
    ("dryRun as a string", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: []\nanalysisTemplates: [{name: t, metrics: [{name: m, dryRun: 'yes', successCondition: 'result > 1', provider: {builtin: {metric: success-rate}}}]}]\n"),
    ("bad family", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: []\nupstreamDns: {family: ipv5}\n"),
    ("bad webhook type", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9']}, canary: {version: v2, upstreams: ['127.0.0.1:8']}, strategy: {canary: {webhooks: [{name: w, type: sometimes, url: 'http://x'}]}}}]\n"),
    ("string match with two kinds", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9']}, canary: {version: v2, upstreams: ['127.0.0.1:8']}, strategy: {canary: {steps: [{setHeaderRoute: {name: r, match: [{headerName: x, headerValue: {exact: a, prefix: b}}]}}]}}}]\n"),
    ("unknown admin key", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: []\nadmin: {port: 3100}\n"),
    ("compression algorithm", "listeners: [{name: a, address: '127.0.0.1:80'}]\nservices: [{name: s, stable: {version: v1, upstreams: ['127.0.0.1:9']}, compression: {algorithms: [lzma]}}]\n"),
];

#[test]
fn structural_mistakes_are_refused_by_both() {
    let validator = compiled();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut problems = Vec::new();
    for (what, text) in INVALID {
        if crate::parse(text, dir.path()).is_ok() {
            problems.push(format!("{what}: the validator accepts it"));
        }
        if schema_errors(&validator, text).is_empty() {
            problems.push(format!("{what}: the schema accepts it"));
        }
    }
    eprintln!(
        "{} structurally invalid configs refused by both the validator and the schema",
        INVALID.len()
    );
    assert!(problems.is_empty(), "{}\n{FIX}", problems.join("\n"));
}

/// The shipped files, and the command that writes them.
fn shipped() -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (
            "deploy/schema/weir.schema.json",
            json_schema_text().expect("schema"),
        ),
        ("docs/configuration.md", markdown().expect("docs")),
    ])
}

#[test]
fn shipped_schema_and_reference_are_fresh() {
    let mut stale = Vec::new();
    for (path, want) in shipped() {
        let have = std::fs::read_to_string(repo().join(path)).unwrap_or_default();
        if have != want {
            stale.push(path);
        }
    }
    eprintln!(
        "deploy/schema/weir.schema.json and docs/configuration.md checked against the schema source ({} stale)",
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "{} stale: run `cargo run -p weir-config --example schema`",
        stale.join(" and ")
    );
}

/// The value at a validator path inside a generated document.
fn value_at<'v>(doc: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut node = doc;
    if path.is_empty() {
        return Some(node);
    }
    for part in path.split('.') {
        let (name, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            node = node.get_mut(name)?;
        }
        for _ in rest.matches('[') {
            node = node.get_mut(0)?;
        }
    }
    Some(node)
}

#[test]
fn validator_and_schema_agree_on_required_keys() {
    let root = json_schema().expect("the schema source parses");
    let dir = tempfile::tempdir().expect("temp dir");
    let rounds = most_branches(&root).max(1);
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    let mut required_count = 0;
    for choice in 0..rounds {
        let mut gen = Gen {
            root: &root,
            choice,
            objects: Vec::new(),
            keys: Vec::new(),
        };
        let doc = gen.value(&root, "", 0);
        for Written {
            path,
            keys,
            required,
            conditional,
        } in &gen.keys
        {
            for key in keys {
                if conditional.contains(key) || !checked.insert((path.clone(), key.clone())) {
                    continue;
                }
                let mut without = doc.clone();
                if let Some(Value::Object(map)) = value_at(&mut without, path) {
                    map.remove(key);
                }
                let text = serde_yaml_ng::to_string(&without).expect("a JSON value is YAML");
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let missing = match crate::parse(&text, dir.path()) {
                    Err(crate::ConfigError::Invalid(errors)) => errors
                        .iter()
                        .any(|e| e.at == at && e.problem == "missing required field"),
                    _ => false,
                };
                let schema_requires = required.contains(key);
                required_count += usize::from(schema_requires);
                if missing != schema_requires {
                    problems.push(format!(
                        "`{at}`: the validator {} it, the schema {} it",
                        if missing {
                            "requires"
                        } else {
                            "does not require"
                        },
                        if schema_requires {
                            "requires"
                        } else {
                            "does not require"
                        },
                    ));
                }
            }
        }
    }
    eprintln!(
        "required keys: {} fields left out one at a time, {required_count} required by both, {} disagreements",
        checked.len(),
        problems.len()
    );
    assert!(problems.is_empty(), "{}\n{FIX}", problems.join("\n"));
}

/// The JSON types the schema lets a field take (`integer` included where `number` is).
fn allowed_types(root: &Value, node: &Value) -> BTreeSet<&'static str> {
    const ALL: [&str; 7] = [
        "string", "integer", "number", "boolean", "array", "object", "null",
    ];
    let node = resolve(root, node);
    let mut out = BTreeSet::new();
    let named = |t: &str| ALL.into_iter().find(|a| *a == t);
    match node.get("type") {
        Some(Value::String(t)) => out.extend(named(t)),
        Some(Value::Array(ts)) => out.extend(ts.iter().filter_map(Value::as_str).filter_map(named)),
        _ => {
            if let Some(values) = node.get("enum").and_then(Value::as_array) {
                for v in values {
                    out.insert(match v {
                        Value::String(_) => "string",
                        Value::Number(n) if n.is_f64() => "number",
                        Value::Number(_) => "integer",
                        Value::Bool(_) => "boolean",
                        Value::Array(_) => "array",
                        Value::Object(_) => "object",
                        Value::Null => "null",
                    });
                }
            } else if let Some(branches) = node.get("oneOf").and_then(Value::as_array) {
                for b in branches {
                    out.extend(allowed_types(root, b));
                }
            } else if node.get("properties").is_some() {
                out.insert("object");
            } else {
                out.extend(ALL);
            }
        }
    }
    if out.contains("number") {
        out.insert("integer");
    }
    out
}

#[test]
fn validator_and_schema_agree_on_value_types() {
    let root = json_schema().expect("the schema source parses");
    let dir = tempfile::tempdir().expect("temp dir");
    let rounds = most_branches(&root).max(1);
    let probes: [(&str, Value); 6] = [
        ("string", json!("x")),
        ("integer", json!(7)),
        ("number", json!(1.5)),
        ("boolean", json!(true)),
        ("array", json!([])),
        ("object", json!({})),
    ];
    let mut problems = Vec::new();
    let mut checked = BTreeSet::new();
    let mut probed = 0;
    for choice in 0..rounds {
        let mut gen = Gen {
            root: &root,
            choice,
            objects: Vec::new(),
            keys: Vec::new(),
        };
        let doc = gen.value(&root, "", 0);
        for Written { path, keys, .. } in &gen.keys {
            let Some(object) = at_path(&root, path)
                .into_iter()
                .flat_map(|n| {
                    let mut all = Vec::new();
                    expand(&root, n, &mut all);
                    all
                })
                .find(|n| n.get("properties").is_some())
            else {
                continue;
            };
            for (key, field) in object["properties"].as_object().into_iter().flatten() {
                // Only keys the document has: one of two exclusive keys, or a key of another form, is
                // refused for being there, whatever its type.
                if !field.is_object()
                    || !keys.contains(key)
                    || !checked.insert((path.clone(), key.clone()))
                {
                    continue;
                }
                let allowed = allowed_types(&root, field);
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                for (kind, probe) in &probes {
                    let mut with = doc.clone();
                    match value_at(&mut with, path) {
                        Some(Value::Object(map)) => {
                            map.insert(key.clone(), probe.clone());
                        }
                        _ => continue,
                    }
                    probed += 1;
                    let text = serde_yaml_ng::to_string(&with).expect("a JSON value is YAML");
                    let errors = match crate::parse(&text, dir.path()) {
                        Err(crate::ConfigError::Invalid(errors)) => errors,
                        _ => Vec::new(),
                    };
                    // The validator's type errors: "expected X, got a mapping" and the like.
                    let refused = errors
                        .iter()
                        .any(|e| e.at == at && is_type_error(&e.problem));
                    // Whether the validator found anything wrong there (or below it).
                    let faulted = errors.iter().any(|e| {
                        e.at == at
                            || e.at.starts_with(&format!("{at}."))
                            || e.at.starts_with(&format!("{at}["))
                    });
                    let schema_allows = allowed.contains(kind);
                    if (refused && schema_allows) || (!faulted && !schema_allows) {
                        problems.push(format!(
                            "`{at}` = {probe} ({kind}): the validator {}, the schema {} ({allowed:?})",
                            if refused { "refuses the type" } else { "takes the type" },
                            if schema_allows { "allows it" } else { "does not" },
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "value types: {} fields probed with {probed} wrong- and right-typed values, {} disagreements",
        checked.len(),
        problems.len()
    );
    assert!(problems.is_empty(), "{}\n{FIX}", problems.join("\n"));
}

/// Whether a validator problem says the value has the wrong type (not a wrong value of the right type).
fn is_type_error(problem: &str) -> bool {
    problem.starts_with("expected")
        && [
            ", got a ",
            ", got an ",
            ", got nothing",
            "got the plain number",
        ]
        .iter()
        .any(|p| problem.contains(p))
        || problem.starts_with("expected an integer, got ")
}
