//! The walking machinery: an error collector, a mapping view that reports unknown fields, and typed readers
//! for scalars. Every reader records its own problem and returns `None`, so callers simply carry on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml_ng::{Mapping, Number, Value};

use crate::error::ValidationError;
use crate::model::Weight;

/// Collects problems while walking the document.
#[derive(Debug, Default)]
pub(crate) struct Cx {
    /// Problems found so far, in discovery order.
    pub(crate) errors: Vec<ValidationError>,
}

impl Cx {
    /// Records a problem at `at`.
    pub(crate) fn err(&mut self, at: &str, problem: impl Into<String>) {
        self.errors.push(ValidationError::new(at, problem));
    }
}

/// The path of field `key` below `path`.
pub(crate) fn field_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The path of item `index` of the list at `path`.
pub(crate) fn index_path(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// Describes the YAML type of a value for "expected X, got Y" messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Records a type mismatch.
fn expected(cx: &mut Cx, at: &str, what: &str, got: &Value) {
    cx.err(at, format!("expected {what}, got {}", kind(got)));
}

/// A mapping being read, with its path. Unknown keys were reported when it was opened.
pub(crate) struct Obj<'v> {
    map: &'v Mapping,
    path: String,
}

impl<'v> Obj<'v> {
    /// Opens `value` (at `path`) as a mapping whose keys must be among `allowed`; reports every other key as
    /// an unknown field. `None` (after recording a problem) when `value` is not a mapping. A null value
    /// (`key:` with nothing after it) counts as an empty mapping.
    pub(crate) fn open(
        cx: &mut Cx,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<Obj<'v>> {
        static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        #[cfg(test)]
        crate::schema::tests::opened(path, allowed);
        let map = match value {
            Value::Mapping(map) => map,
            Value::Null => EMPTY.get_or_init(Mapping::new),
            other => {
                expected(cx, path, "a mapping", other);
                return None;
            }
        };
        for key in map.keys() {
            match key.as_str() {
                Some(name) if allowed.contains(&name) => {}
                Some(name) => cx.err(&field_path(path, name), unknown_field(name, allowed)),
                None => cx.err(
                    path,
                    format!("mapping keys must be strings, got {}", kind(key)),
                ),
            }
        }
        Some(Obj {
            map,
            path: path.to_string(),
        })
    }

    /// The mapping's own path.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// The path of field `key`.
    pub(crate) fn at(&self, key: &str) -> String {
        field_path(&self.path, key)
    }

    /// Field `key`, `None` when absent or null.
    pub(crate) fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether field `key` is written (even as null).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// Field `key` as written, null included.
    pub(crate) fn raw(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key)
    }

    /// Reads optional field `key` with `read`: `Some(None)` when absent (or null), `Some(Some(value))` when
    /// valid, `None` when invalid (the problem is recorded).
    pub(crate) fn opt<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        read: impl FnOnce(&mut Cx, &'v Value, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.get(key) {
            Some(value) => read(cx, value, &self.at(key)).map(Some),
            None => Some(None),
        }
    }

    /// Reads optional field `key` with `read`, `default` when absent; `None` when invalid (recorded).
    pub(crate) fn or<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        default: T,
        read: impl FnOnce(&mut Cx, &'v Value, &str) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(value) => read(cx, value, &self.at(key)),
            None => Some(default),
        }
    }

    /// Reads required field `key` with `read`; records `missing required field` when absent.
    pub(crate) fn req<T>(
        &self,
        cx: &mut Cx,
        key: &str,
        read: impl FnOnce(&mut Cx, &'v Value, &str) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(value) => read(cx, value, &self.at(key)),
            None => {
                cx.err(&self.at(key), "missing required field");
                None
            }
        }
    }
}

/// The problem text for an unknown field, with a hint for near-misses such as `path_prefix`.
fn unknown_field(name: &str, allowed: &[&str]) -> String {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let squashed = squash(name);
    let mut problem = format!("unknown field \"{name}\"");
    if let Some(close) = allowed.iter().find(|a| squash(a) == squashed) {
        problem.push_str(&format!(" (did you mean \"{close}\"?)"));
    }
    if allowed.is_empty() {
        problem.push_str(", no fields are allowed here");
    } else {
        problem.push_str(&format!(", expected one of: {}", allowed.join(", ")));
    }
    problem
}

/// A list.
pub(crate) fn list<'v>(cx: &mut Cx, value: &'v Value, at: &str) -> Option<&'v [Value]> {
    match value {
        Value::Sequence(items) => Some(items),
        other => {
            expected(cx, at, "a list", other);
            None
        }
    }
}

/// A non-empty list.
pub(crate) fn nonempty_list<'v>(cx: &mut Cx, value: &'v Value, at: &str) -> Option<&'v [Value]> {
    let items = list(cx, value, at)?;
    if items.is_empty() {
        cx.err(at, "must not be empty");
        return None;
    }
    Some(items)
}

/// A string (possibly empty).
pub(crate) fn string(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        other => {
            expected(cx, at, "a string", other);
            None
        }
    }
}

/// A non-empty string.
pub(crate) fn nonempty_string(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let s = string(cx, value, at)?;
    if s.trim().is_empty() {
        cx.err(at, "must not be empty");
        return None;
    }
    Some(s)
}

/// A scalar taken as text: strings as they are, numbers and booleans in their textual form (so an
/// unquoted `version: 2024.1` works).
pub(crate) fn text(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => {
            expected(cx, at, "a string", other);
            None
        }
    }
}

/// A non-empty scalar taken as text.
pub(crate) fn nonempty_text(cx: &mut Cx, value: &Value, at: &str) -> Option<String> {
    let s = text(cx, value, at)?;
    if s.trim().is_empty() {
        cx.err(at, "must not be empty");
        return None;
    }
    Some(s)
}

/// A boolean.
pub(crate) fn boolean(cx: &mut Cx, value: &Value, at: &str) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        other => {
            expected(cx, at, "a boolean (true or false)", other);
            None
        }
    }
}

/// A non-negative integer.
pub(crate) fn uint(cx: &mut Cx, value: &Value, at: &str) -> Option<u64> {
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u)
            } else if n.as_i64().is_some() {
                cx.err(at, format!("must not be negative, got {n}"));
                None
            } else {
                cx.err(at, format!("expected an integer, got {n}"));
                None
            }
        }
        other => {
            expected(cx, at, "an integer", other);
            None
        }
    }
}

/// A non-negative integer that fits in `u32`.
pub(crate) fn uint32(cx: &mut Cx, value: &Value, at: &str) -> Option<u32> {
    let n = uint(cx, value, at)?;
    match u32::try_from(n) {
        Ok(n) => Some(n),
        Err(_) => {
            cx.err(at, format!("must be at most {}, got {n}", u32::MAX));
            None
        }
    }
}

/// An integer that is at least 1 and fits in `u32`.
pub(crate) fn positive_u32(cx: &mut Cx, value: &Value, at: &str) -> Option<u32> {
    let n = uint32(cx, value, at)?;
    if n == 0 {
        cx.err(at, "must be at least 1, got 0");
        return None;
    }
    Some(n)
}

/// A finite number.
pub(crate) fn number(cx: &mut Cx, value: &Value, at: &str) -> Option<f64> {
    match value {
        Value::Number(n) => match n.as_f64().filter(|f| f.is_finite()) {
            Some(f) => Some(f),
            None => {
                cx.err(at, format!("expected a finite number, got {n}"));
                None
            }
        },
        other => {
            expected(cx, at, "a number", other);
            None
        }
    }
}

/// A duration string such as `10s` or `1m30s`.
pub(crate) fn duration(cx: &mut Cx, value: &Value, at: &str) -> Option<Duration> {
    match value {
        Value::String(s) => match crate::duration::parse_duration(s) {
            Ok(d) => Some(d),
            Err(reason) => {
                cx.err(at, format!("invalid duration \"{s}\": {reason}"));
                None
            }
        },
        Value::Number(n) => {
            cx.err(
                at,
                format!("expected a duration like \"10s\", got the plain number {n} (add a unit: ms, s, m or h)"),
            );
            None
        }
        other => {
            cx.err(
                at,
                format!("expected a duration like \"10s\", got {}", kind(other)),
            );
            None
        }
    }
}

/// A duration greater than zero.
pub(crate) fn positive_duration(cx: &mut Cx, value: &Value, at: &str) -> Option<Duration> {
    let d = duration(cx, value, at)?;
    if d.is_zero() {
        cx.err(at, "must be greater than zero");
        return None;
    }
    Some(d)
}

/// A traffic weight in percent, 0..=100 with at most two decimals.
pub(crate) fn weight(cx: &mut Cx, value: &Value, at: &str) -> Option<Weight> {
    let Value::Number(n) = value else {
        expected(cx, at, "a number (percent)", value);
        return None;
    };
    weight_from_number(cx, n, at)
}

fn weight_from_number(cx: &mut Cx, n: &Number, at: &str) -> Option<Weight> {
    let Some(percent) = n.as_f64().filter(|f| f.is_finite()) else {
        cx.err(at, format!("must be between 0 and 100, got {n}"));
        return None;
    };
    if !(0.0..=100.0).contains(&percent) {
        cx.err(at, format!("must be between 0 and 100, got {n}"));
        return None;
    }
    match Weight::from_percent(percent) {
        Some(w) => Some(w),
        None => {
            cx.err(at, format!("at most two decimals, got {n}"));
            None
        }
    }
}

/// Resolves a path from the file against `base_dir`, making it absolute.
pub(crate) fn resolve(base_dir: &Path, written: &str) -> PathBuf {
    let joined = base_dir.join(written);
    std::path::absolute(&joined).unwrap_or(joined)
}

/// A path string, resolved against `base_dir`.
pub(crate) fn path_value(cx: &mut Cx, value: &Value, at: &str, base_dir: &Path) -> Option<PathBuf> {
    let s = nonempty_string(cx, value, at)?;
    Some(resolve(base_dir, &s))
}

/// A path string, resolved against `base_dir`, naming an existing regular file.
pub(crate) fn existing_file(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    base_dir: &Path,
) -> Option<PathBuf> {
    let path = path_value(cx, value, at, base_dir)?;
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Some(path),
        Ok(_) => {
            cx.err(at, format!("\"{}\" is not a regular file", path.display()));
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cx.err(at, format!("file \"{}\" does not exist", path.display()));
            None
        }
        Err(e) => {
            cx.err(at, format!("cannot access \"{}\": {e}", path.display()));
            None
        }
    }
}

/// Reads each item of the list at `at` with `read(cx, item, item_path, index)`, keeping the successes.
pub(crate) fn each<'v, T>(
    cx: &mut Cx,
    items: &'v [Value],
    at: &str,
    mut read: impl FnMut(&mut Cx, &'v Value, &str, usize) -> Option<T>,
) -> Vec<Option<T>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| read(cx, item, &index_path(at, i), i))
        .collect()
}

/// All items if every one is `Some`.
pub(crate) fn all<T>(items: Vec<Option<T>>) -> Option<Vec<T>> {
    items.into_iter().collect()
}
