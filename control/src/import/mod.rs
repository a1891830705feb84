//! `weir import`: Argo Rollouts (`Rollout`, `AnalysisTemplate`, `ClusterAnalysisTemplate`) and
//! Flagger (`Canary`, `MetricTemplate`, `AlertProvider`) manifests → a weir config.
//!
//! The manifests are read as multi-document YAML (as kept in git) into generic values and walked
//! with [`Node`], which remembers which keys were read: every key that is neither carried over
//! nor dropped with a reason is listed as a note with its manifest path
//! (`Rollout/checkout: spec.strategy.canary.trafficRouting`). The config is built as a YAML value
//! and written by the serializer, so no user value is ever spliced into YAML text.
//!
//! - [`argo`]: `Rollout`, `AnalysisTemplate`, `ClusterAnalysisTemplate`.
//! - [`flagger`]: `Canary`, `MetricTemplate`, `AlertProvider`.
//! - [`metrics`]: Istio / ingress-nginx metric names in PromQL → weir's own, where exact.
//! - [`emit`]: the output (notes as YAML comments at the top, then the config).

mod argo;
mod emit;
mod flagger;
mod metrics;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};

/// The largest input accepted per file (4 MiB): rollout manifests are a few KiB; anything larger
/// is not one, and parsing it would only cost memory.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
/// The most documents read from all inputs together.
pub const MAX_DOCUMENTS: usize = 10_000;
/// The placeholder upstream written when `--upstream`/`--canary-upstream` does not name one:
/// `weir validate` refuses it ("invalid port"), pointing at the import notes.
pub const UPSTREAM_PLACEHOLDER: &str = "REPLACE-ME:see-weir-import-notes";
/// The listener address written when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// One input: a name for messages (a path or `-`) and its text.
#[derive(Clone, Debug)]
pub struct Input {
    /// The file name shown in notes and errors.
    pub name: String,
    /// The file's text.
    pub text: String,
}

/// What the command line adds to the manifests.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--upstream SERVICE=ADDR[,ADDR...]`: the stable version's upstreams.
    pub upstreams: BTreeMap<String, Vec<String>>,
    /// `--canary-upstream SERVICE=ADDR[,ADDR...]`: the canary version's upstreams.
    pub canary_upstreams: BTreeMap<String, Vec<String>>,
    /// `--listen ADDR`: the one listener's address (default [`DEFAULT_LISTEN`]).
    pub listen: String,
    /// `--prometheus URL`: replaces every Prometheus address (in-cluster names do not resolve
    /// outside Kubernetes).
    pub prometheus: Option<String>,
    /// `--admin-address ADDR`: `admin.address` (default: not written, weir's own default).
    pub admin: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            upstreams: BTreeMap::new(),
            canary_upstreams: BTreeMap::new(),
            listen: DEFAULT_LISTEN.to_string(),
            prometheus: None,
            admin: None,
        }
    }
}

/// The result: the config text (notes as comments at its top) and the notes.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The weir config, YAML, with the notes as comments at the top.
    pub yaml: String,
    /// Everything not carried over as is, each with its manifest path.
    pub notes: Vec<String>,
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An input is larger than [`MAX_INPUT_BYTES`].
    #[error(
        "{file}: {size} bytes is larger than the {MAX_INPUT_BYTES} bytes a manifest file may have"
    )]
    TooLarge {
        /// The input.
        file: String,
        /// Its size.
        size: usize,
    },
    /// An input is not YAML.
    #[error("{file}: document {document}: not valid YAML: {message}")]
    Yaml {
        /// The input.
        file: String,
        /// 1-based document number.
        document: usize,
        /// The parser's message.
        message: String,
    },
    /// More than [`MAX_DOCUMENTS`] documents.
    #[error("more than {MAX_DOCUMENTS} YAML documents")]
    TooManyDocuments,
    /// No `Rollout` or `Canary` in the inputs.
    #[error("no Argo Rollout or Flagger Canary in the input{}", if .notes.is_empty() { String::new() } else { format!(" ({})", .notes.join("; ")) })]
    NothingToImport {
        /// What was seen instead.
        notes: Vec<String>,
    },
    /// A `--upstream`-style flag is malformed.
    #[error("{0}")]
    Flag(String),
}

/// Parses `SERVICE=ADDR[,ADDR...]` (`--upstream`, `--canary-upstream`).
pub fn parse_upstream_flag(text: &str) -> Result<(String, Vec<String>), ImportError> {
    let Some((service, addrs)) = text.split_once('=') else {
        return Err(ImportError::Flag(format!(
            "\"{text}\": expected SERVICE=HOST:PORT[,HOST:PORT...]"
        )));
    };
    let addrs: Vec<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if service.trim().is_empty() || addrs.is_empty() {
        return Err(ImportError::Flag(format!(
            "\"{text}\": expected SERVICE=HOST:PORT[,HOST:PORT...]"
        )));
    }
    Ok((service.trim().to_string(), addrs))
}

/// Reads the manifests and builds the weir config.
pub fn import(inputs: &[Input], options: &Options) -> Result<Imported, ImportError> {
    let mut docs = Vec::new();
    for input in inputs {
        if input.text.len() > MAX_INPUT_BYTES {
            return Err(ImportError::TooLarge {
                file: input.name.clone(),
                size: input.text.len(),
            });
        }
        for (i, document) in serde_yaml_ng::Deserializer::from_str(&input.text).enumerate() {
            let value = Value::deserialize(document).map_err(|e| ImportError::Yaml {
                file: input.name.clone(),
                document: i + 1,
                message: e.to_string(),
            })?;
            push_documents(&mut docs, &input.name, i + 1, value)?;
        }
    }
    let mut cx = Cx::default();
    let mut sorted = Sorted::default();
    for (origin, value) in &docs {
        sorted.add(&mut cx, origin, value);
    }
    if sorted.rollouts.is_empty() && sorted.canaries.is_empty() {
        return Err(ImportError::NothingToImport {
            notes: cx.notes.clone(),
        });
    }
    let mut out = Out::default();
    argo::templates(&mut cx, &sorted, &mut out, options);
    for rollout in &sorted.rollouts {
        argo::rollout(&mut cx, &sorted, rollout, &mut out, options);
    }
    argo::notifiers(&mut cx, &mut out);
    flagger::alert_providers(&mut cx, &sorted, &mut out);
    for canary in &sorted.canaries {
        flagger::canary(&mut cx, &sorted, canary, &mut out, options);
    }
    let yaml = emit::config(&out, &cx.notes, options);
    Ok(Imported {
        yaml,
        notes: cx.notes,
    })
}

/// Adds a document, flattening `kind: List` (what `kubectl get -o yaml` writes).
fn push_documents(
    docs: &mut Vec<(String, Value)>,
    file: &str,
    number: usize,
    value: Value,
) -> Result<(), ImportError> {
    if value.is_null() {
        return Ok(());
    }
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(items) = value.get("items").and_then(Value::as_sequence) {
            for item in items {
                push_documents(docs, file, number, item.clone())?;
            }
            return Ok(());
        }
    }
    if docs.len() >= MAX_DOCUMENTS {
        return Err(ImportError::TooManyDocuments);
    }
    docs.push((format!("{file}#{number}"), value));
    Ok(())
}

/// The notes collected while importing.
#[derive(Default)]
pub(crate) struct Cx {
    pub(crate) notes: Vec<String>,
    seen: BTreeSet<String>,
}

impl Cx {
    /// Adds a note (once).
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        // One line each: notes become YAML comments.
        let note: String = note.into().replace(['\n', '\r'], " ");
        if self.seen.insert(note.clone()) {
            self.notes.push(note);
        }
    }
}

/// One manifest: its kind and name (`Rollout/checkout`) and its value.
pub(crate) struct Manifest<'a> {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) value: &'a Value,
}

impl Manifest<'_> {
    /// `Kind/name`, the prefix of every note about this manifest.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The documents by kind.
#[derive(Default)]
pub(crate) struct Sorted<'a> {
    pub(crate) rollouts: Vec<Manifest<'a>>,
    pub(crate) analysis_templates: Vec<Manifest<'a>>,
    pub(crate) canaries: Vec<Manifest<'a>>,
    pub(crate) metric_templates: BTreeMap<String, Manifest<'a>>,
    pub(crate) alert_providers: Vec<Manifest<'a>>,
    /// Ingress name → its hosts (host hints for Argo's `trafficRouting.nginx.stableIngress`).
    pub(crate) ingress_hosts: BTreeMap<String, Vec<String>>,
}

impl<'a> Sorted<'a> {
    fn add(&mut self, cx: &mut Cx, origin: &str, value: &'a Value) {
        let Some(map) = value.as_mapping() else {
            cx.note(format!(
                "{origin}: ignored: not a Kubernetes manifest (no mapping)"
            ));
            return;
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or("");
        let kind = text("kind").to_string();
        let api = text("apiVersion");
        let group = api.split('/').next().unwrap_or("");
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if kind.is_empty() {
            cx.note(format!("{origin}: ignored: no kind"));
            return;
        }
        let manifest = Manifest {
            kind: kind.clone(),
            name: name.clone(),
            value,
        };
        let known = matches!(
            (group, kind.as_str()),
            (
                "argoproj.io",
                "Rollout" | "AnalysisTemplate" | "ClusterAnalysisTemplate"
            ) | ("flagger.app", "Canary" | "MetricTemplate" | "AlertProvider")
        );
        if known && name.is_empty() {
            cx.note(format!("{origin}: {kind} ignored: no metadata.name"));
            return;
        }
        match (group, kind.as_str()) {
            ("argoproj.io", "Rollout") => self.rollouts.push(manifest),
            ("argoproj.io", "AnalysisTemplate" | "ClusterAnalysisTemplate") => {
                self.analysis_templates.push(manifest)
            }
            ("flagger.app", "Canary") => self.canaries.push(manifest),
            ("flagger.app", "MetricTemplate") => {
                match self.metric_templates.entry(name) {
                    std::collections::btree_map::Entry::Occupied(e) => cx.note(format!(
                        "{origin}: MetricTemplate/{}: a second MetricTemplate of that name (other namespace?) ignored",
                        e.key()
                    )),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(manifest);
                    }
                }
            }
            ("flagger.app", "AlertProvider") => self.alert_providers.push(manifest),
            ("networking.k8s.io" | "extensions", "Ingress") => {
                let hosts: Vec<String> = value
                    .get("spec")
                    .and_then(|s| s.get("rules"))
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.get("host").and_then(Value::as_str))
                    .map(String::from)
                    .collect();
                cx.note(format!(
                    "{origin}: Ingress/{name}: read for its hosts only ({})",
                    if hosts.is_empty() {
                        "none".to_string()
                    } else {
                        hosts.join(", ")
                    }
                ));
                self.ingress_hosts.insert(name, hosts);
            }
            _ => cx.note(format!(
                "{origin}: {kind}/{name} ({api}) ignored: not an Argo Rollouts or Flagger manifest weir import reads"
            )),
        }
    }
}

/// What the importer builds: services, templates, notifiers, in order.
#[derive(Default)]
pub(crate) struct Out {
    pub(crate) services: Vec<Value>,
    pub(crate) templates: Vec<Value>,
    pub(crate) template_names: BTreeSet<String>,
    pub(crate) notifications: Vec<Value>,
    pub(crate) notifier_names: BTreeSet<String>,
    /// Argo template references (`argo::template_key`) → the name written.
    pub(crate) argo_templates: argo::ArgoTemplates,
    /// Notifiers from Argo's `notifications.argoproj.io/subscribe.*` annotations: name → (kind,
    /// event kinds).
    pub(crate) argo_notifiers: BTreeMap<String, (String, Vec<String>)>,
}

impl Out {
    /// A template name not taken yet, from `wanted`.
    pub(crate) fn free_template_name(&self, wanted: &str) -> String {
        if !self.template_names.contains(wanted) {
            return wanted.to_string();
        }
        (2..)
            .map(|n| format!("{wanted}-{n}"))
            .find(|name| !self.template_names.contains(name))
            .unwrap_or_else(|| wanted.to_string())
    }
}

/// A mapping being read: remembers the keys read, so [`Node::finish`] can list the rest.
pub(crate) struct Node<'a> {
    map: Option<&'a Mapping>,
    at: String,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Node<'a> {
    /// `value` at path `at` (`Rollout/checkout:` for a manifest's root). A value that is not a
    /// mapping reads as empty (and is noted).
    pub(crate) fn new(cx: &mut Cx, value: Option<&'a Value>, at: String) -> Node<'a> {
        let map = match value {
            Some(Value::Mapping(map)) => Some(map),
            None | Some(Value::Null) => None,
            Some(_) => {
                cx.note(format!("{at}: not a mapping: ignored"));
                None
            }
        };
        Node {
            map,
            at,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// The path of `key` under this node.
    pub(crate) fn at(&self, key: &str) -> String {
        join(&self.at, key)
    }

    /// This node's path.
    pub(crate) fn path(&self) -> &str {
        &self.at
    }

    /// The value of `key` (marked read); `None` when absent or null.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        let value = self.map?.get(key)?;
        self.used.borrow_mut().insert(key.to_string());
        (!value.is_null()).then_some(value)
    }

    /// `key` as text: a string, or a number or boolean written out.
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        scalar_text(self.get(key)?)
    }

    /// `key` as a child node.
    pub(crate) fn child(&self, cx: &mut Cx, key: &str) -> Node<'a> {
        let value = self.get(key);
        Node::new(cx, value, self.at(key))
    }

    /// `key` as a list (empty when absent; noted when not a list).
    pub(crate) fn list(&self, cx: &mut Cx, key: &str) -> &'a [Value] {
        match self.get(key) {
            None => &[],
            Some(Value::Sequence(items)) => items,
            Some(_) => {
                cx.note(format!("{}: not a list: ignored", self.at(key)));
                &[]
            }
        }
    }

    /// Whether the mapping has `key` (not marked read).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.map
            .and_then(|m| m.get(key))
            .is_some_and(|v| !v.is_null())
    }

    /// Drops `key` with a reason, if present.
    pub(crate) fn drop_key(&self, cx: &mut Cx, key: &str, why: &str) {
        if self.map.and_then(|m| m.get(key)).is_some() {
            self.used.borrow_mut().insert(key.to_string());
            cx.note(format!("{}: dropped: {why}", self.at(key)));
        }
    }

    /// Lists every key not read or dropped.
    pub(crate) fn finish(&self, cx: &mut Cx) {
        let Some(map) = self.map else { return };
        let used = self.used.borrow();
        for key in map.keys() {
            let name = scalar_text(key).unwrap_or_else(|| "?".to_string());
            if !used.contains(&name) {
                cx.note(format!(
                    "{}: not carried over (a field weir import does not know)",
                    self.at(&name)
                ));
            }
        }
    }
}

/// `at` + `key`: `Rollout/x:` + `spec` → `Rollout/x: spec`; `spec` + `replicas` → `spec.replicas`.
pub(crate) fn join(at: &str, key: &str) -> String {
    if at.ends_with(':') {
        format!("{at} {key}")
    } else {
        format!("{at}.{key}")
    }
}

/// A scalar written out as text.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A YAML mapping from pairs, in order.
pub(crate) fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::from(k), v);
    }
    Value::Mapping(m)
}

/// Inserts `key: value` into a mapping value.
pub(crate) fn put(target: &mut Value, key: &str, value: Value) {
    if let Value::Mapping(m) = target {
        m.insert(Value::from(key), value);
    }
}

/// A YAML string.
pub(crate) fn s(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

/// A duration from a Kubernetes `...Seconds` integer: `N` → `Ns`.
pub(crate) fn seconds(value: &Value) -> Option<Value> {
    let n = value
        .as_u64()
        .or_else(|| value.as_str().and_then(|t| t.trim().parse().ok()))?;
    Some(s(format!("{n}s")))
}

/// The version label from a pod template's first container image (`repo/app:v2` → `v2`).
pub(crate) fn image_tag(pod_template: Option<&Value>) -> Option<String> {
    let image = pod_template?
        .get("spec")?
        .get("containers")?
        .as_sequence()?
        .first()?
        .get("image")?
        .as_str()?;
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    let (_, tag) = last.rsplit_once(':')?;
    (!tag.is_empty()).then(|| tag.to_string())
}
