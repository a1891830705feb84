//! The web provider's `jsonPath`: an RFC 9535 JSONPath query (the `serde_json_path` crate), also
//! written as Argo Rollouts writes it after Kubernetes' JSONPath: wrapped in braces
//! (`{$.data.ok}`), and inside braces with or without the `$` (`{.data.ok}`).
//!
//! What `result` is depends on the path's shape, never on the response (as Argo's Datadog provider
//! decides on a query's shape rather than on how many values came back):
//!
//! - a *singular* path — names and indexes only (`$.data.value`, `$.items[-1].x`,
//!   `$['dotted.key']`) — gives the value it selects; selecting nothing is an error measurement
//!   (Argo: "produced no value");
//! - any other path — wildcards (`$.items[*].x`), slices (`[0:2]`), filters (`[?@.ok]`), unions
//!   (`['a','b']`), descendants (`$..x`) — gives the array of every value it selects, in document
//!   order, `[]` when it selects none (judged like an empty Prometheus vector: `len(result)` and
//!   `default()` decide, other conditions are inconclusive).

use std::fmt;

/// A parsed path.
#[derive(Clone, Debug)]
pub struct JsonPath {
    source: String,
    path: serde_json_path::JsonPath,
    singular: bool,
}

/// Why a path could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid jsonPath `{path}`: {reason}")]
pub struct JsonPathError {
    path: String,
    reason: String,
}

// === impl JsonPath ===

impl JsonPath {
    /// Parses `path`: `$...`, or `{$...}` / `{.x}` / `{[0]}` as Argo writes it.
    pub fn parse(path: &str) -> Result<JsonPath, JsonPathError> {
        let error = |reason: String| JsonPathError {
            path: path.to_string(),
            reason,
        };
        let mut text = path.trim().to_string();
        if let Some(inner) = text.strip_prefix('{') {
            let inner = inner
                .strip_suffix('}')
                .ok_or_else(|| error("unbalanced braces".to_string()))?
                .trim();
            // Kubernetes' JSONPath lets the root be implicit inside braces.
            text = if inner.starts_with(['.', '[']) {
                format!("${inner}")
            } else {
                inner.to_string()
            };
        }
        if !text.starts_with('$') {
            return Err(error(
                "must start with `$` (or be wrapped in braces)".into(),
            ));
        }
        let parsed = serde_json_path::JsonPath::parse(&text).map_err(|e| error(e.to_string()))?;
        Ok(JsonPath {
            source: path.to_string(),
            singular: is_singular(&text),
            path: parsed,
        })
    }

    /// The path as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the path selects at most one value by its shape (names and indexes only).
    pub fn is_singular(&self) -> bool {
        self.singular
    }

    /// The `result` this path gives on `document` (see the module documentation), or why it gives
    /// none.
    pub fn find(&self, document: &serde_json::Value) -> Result<serde_json::Value, String> {
        let nodes = self.path.query(document);
        if !self.singular {
            return Ok(serde_json::Value::Array(
                nodes.into_iter().cloned().collect(),
            ));
        }
        match nodes.at_most_one() {
            Ok(Some(value)) => Ok(value.clone()),
            Ok(None) => Err("it selects nothing in the response".to_string()),
            // A singular path never selects two nodes; say so rather than pick one.
            Err(error) => Err(error.to_string()),
        }
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for JsonPath {
    /// Paths are equal when written the same.
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for JsonPath {}

/// Whether a path that parsed as RFC 9535 is a singular query: outside quoted names, it has no
/// wildcard (`*`), descendant segment (`..`), filter (`?`), slice (`:`) or union (`,`).
fn is_singular(path: &str) -> bool {
    let mut quote = None;
    let mut escaped = false;
    let mut previous = '\0';
    for c in path.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '*' | '?' | ':' | ',' => return false,
                '.' if previous == '.' => return false,
                _ => {}
            },
        }
        previous = if quote.is_some() { '\0' } else { c };
    }
    true
}
