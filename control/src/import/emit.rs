//! The output: a header of notes as YAML comments, then the config written by the serializer.

use serde_yaml_ng::{Mapping, Value};

use super::{map, s, Cx, Options, Out, UPSTREAM_PLACEHOLDER};

/// One service as the importer found it.
pub(crate) struct ServiceSpec {
    /// The service (the manifest's name).
    pub(crate) name: String,
    /// `Kind/name` of the manifest, for notes.
    pub(crate) origin: String,
    /// Host names from the manifests; empty → the service's name.
    pub(crate) hosts: Vec<String>,
    /// The canary's version label, when the manifest shows one (the pod template's image tag).
    pub(crate) canary_version: Option<String>,
    /// `strategy: {...}`.
    pub(crate) strategy: Value,
    /// `notifications: [...]` (notifier names).
    pub(crate) notifications: Vec<String>,
    /// `sessionAffinity`, if any.
    pub(crate) session_affinity: Option<Value>,
}

/// Builds one `services[]` entry: versions and upstreams from the options or placeholders.
pub(crate) fn service(cx: &mut Cx, spec: ServiceSpec, options: &Options, out: &mut Out) {
    let ServiceSpec {
        name,
        origin,
        hosts,
        canary_version,
        strategy,
        notifications,
        session_affinity,
    } = spec;
    let taken = |n: &str| {
        out.services
            .iter()
            .any(|s| s.get("name").and_then(Value::as_str) == Some(n))
    };
    let name = if taken(&name) {
        let free = (2..)
            .map(|n| format!("{name}-{n}"))
            .find(|n| !taken(n))
            .unwrap_or_else(|| name.clone());
        cx.note(format!(
            "{origin}: a service \"{name}\" exists already (another namespace or tool?): written as \"{free}\""
        ));
        free
    } else {
        name
    };
    let hosts = if hosts.is_empty() {
        cx.note(format!(
            "{origin}: no host in the manifests: services[{}].match.hosts is [\"{name}\"] (requests with Host: {name}); edit it",
            out.services.len()
        ));
        vec![name.clone()]
    } else {
        hosts
    };
    let upstreams = |cx: &mut Cx, given: Option<&Vec<String>>, which: &str, flag: &str| match given
    {
        Some(addrs) => Value::Sequence(addrs.iter().map(|a| s(a.as_str())).collect()),
        None => {
            cx.note(format!(
                    "{origin}: the {which} upstreams are unknown: replace {UPSTREAM_PLACEHOLDER} (or run weir import {flag} {name}=HOST:PORT[,HOST:PORT])"
                ));
            Value::Sequence(vec![s(UPSTREAM_PLACEHOLDER)])
        }
    };
    let stable_upstreams = upstreams(cx, options.upstreams.get(&name), "stable", "--upstream");
    let canary_upstreams = upstreams(
        cx,
        options.canary_upstreams.get(&name),
        "canary",
        "--canary-upstream",
    );
    let canary_version = match canary_version {
        Some(v) => {
            cx.note(format!(
                "{origin}: canary.version \"{v}\" is the pod template's image tag; stable.version \"stable\" is a placeholder: set it to the version now serving"
            ));
            v
        }
        None => {
            cx.note(format!(
                "{origin}: versions unknown: stable.version \"stable\" and canary.version \"canary\" are placeholders (they label metrics)"
            ));
            "canary".to_string()
        }
    };
    let stable_version = if canary_version == "stable" {
        "previous"
    } else {
        "stable"
    };
    let mut service = map([
        ("name", s(name.as_str())),
        (
            "match",
            map([(
                "hosts",
                Value::Sequence(hosts.into_iter().map(Value::String).collect()),
            )]),
        ),
        (
            "stable",
            map([
                ("version", s(stable_version)),
                ("upstreams", stable_upstreams),
            ]),
        ),
        (
            "canary",
            map([
                ("version", s(canary_version)),
                ("upstreams", canary_upstreams),
            ]),
        ),
    ]);
    if let Some(affinity) = session_affinity {
        super::put(&mut service, "sessionAffinity", affinity);
    }
    super::put(&mut service, "strategy", strategy);
    if !notifications.is_empty() {
        super::put(
            &mut service,
            "notifications",
            Value::Sequence(notifications.into_iter().map(Value::String).collect()),
        );
    }
    out.services.push(service);
}

/// The whole output text.
pub(crate) fn config(out: &Out, notes: &[String], options: &Options) -> String {
    let mut root = Mapping::new();
    root.insert(
        s("listeners"),
        Value::Sequence(vec![map([
            ("name", s("public")),
            ("address", s(options.listen.as_str())),
        ])]),
    );
    if let Some(admin) = &options.admin {
        root.insert(s("admin"), map([("address", s(admin.as_str()))]));
    }
    root.insert(s("services"), Value::Sequence(out.services.clone()));
    if !out.templates.is_empty() {
        root.insert(
            s("analysisTemplates"),
            Value::Sequence(out.templates.clone()),
        );
    }
    if !out.notifications.is_empty() {
        root.insert(
            s("notifications"),
            Value::Sequence(out.notifications.clone()),
        );
    }
    let body = serde_yaml_ng::to_string(&Value::Mapping(root))
        .unwrap_or_else(|e| format!("# weir import: could not write the config: {e}\n"));
    let mut text =
        String::from("# Written by `weir import`. Check it with `weir validate FILE`.\n");
    if !notes.is_empty() {
        text.push_str(&format!(
            "# {} notes (also on standard error):\n",
            notes.len()
        ));
        for note in notes {
            text.push_str("#   - ");
            text.push_str(note);
            text.push('\n');
        }
    }
    text.push_str(&body);
    text
}
