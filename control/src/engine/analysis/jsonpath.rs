//! The JSONPath subset of the web provider's `jsonPath`: a path to one value.
//!
//! Accepted: `$.status`, `$.data.value`, `$.items[0].x`, `$['key']`, `$["key"]`, `$.items[-1]`
//! (from the end), with or without the leading `$` (`.data.value`, `data.value`) and wrapped in
//! braces or not (`{$.data.value}`, as Argo Rollouts writes it after Kubernetes' JSONPath).
//! Wildcards, slices, filters and recursive descent select several values and are rejected.

use std::fmt;

/// A parsed path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    source: String,
    segments: Vec<Segment>,
}

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// An object member.
    Key(String),
    /// An array element; negative counts from the end.
    Index(i64),
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
    /// Parses `path`.
    pub fn parse(path: &str) -> Result<JsonPath, JsonPathError> {
        let error = |reason: &str| JsonPathError {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let mut text = path.trim();
        if let Some(inner) = text.strip_prefix('{') {
            text = inner
                .strip_suffix('}')
                .ok_or_else(|| error("unbalanced braces"))?
                .trim();
        }
        let text = if let Some(rest) = text.strip_prefix('$') {
            rest.to_string()
        } else if text.is_empty() || text.starts_with(['.', '[']) {
            text.to_string()
        } else {
            // `data.value`: a leading member without its dot.
            format!(".{text}")
        };
        Self::parse_segments(path, &text)
    }

    /// Parses the segments after `$`.
    fn parse_segments(path: &str, mut text: &str) -> Result<JsonPath, JsonPathError> {
        let error = |reason: String| JsonPathError {
            path: path.to_string(),
            reason,
        };
        let mut segments = Vec::new();
        while !text.is_empty() {
            if text.starts_with("..") {
                return Err(error(
                    "recursive descent (`..`) is not supported".to_string(),
                ));
            } else if let Some(rest) = text.strip_prefix('.') {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                let name = &rest[..end];
                if name.is_empty() {
                    return Err(error("empty member name".to_string()));
                }
                if name == "*" {
                    return Err(error("wildcards are not supported".to_string()));
                }
                if let Some(bad) = name
                    .chars()
                    .find(|c| c.is_whitespace() || "]*'\"()?@,:".contains(*c))
                {
                    return Err(error(format!(
                        "unexpected {bad:?} in member name {name:?} (quote it: ['{name}'])"
                    )));
                }
                segments.push(Segment::Key(name.to_string()));
                text = &rest[end..];
            } else if let Some(rest) = text.strip_prefix('[') {
                let (segment, after) = Self::bracket(rest).map_err(error)?;
                segments.push(segment);
                text = after;
            } else {
                return Err(error(format!("unexpected `{text}`")));
            }
        }
        Ok(JsonPath {
            source: path.to_string(),
            segments,
        })
    }

    /// Parses the inside of `[...]` (the text after `[`), returning the segment and what follows `]`.
    fn bracket(rest: &str) -> Result<(Segment, &str), String> {
        let rest = rest.trim_start();
        if let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let body = &rest[1..];
            let mut key = String::new();
            let mut chars = body.char_indices();
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => key.push(escaped),
                        None => return Err("unterminated quoted key".to_string()),
                    },
                    c if c == quote => {
                        let after = body[at + 1..].trim_start();
                        let after = after
                            .strip_prefix(']')
                            .ok_or_else(|| "expected `]` after a quoted key".to_string())?;
                        return Ok((Segment::Key(key), after));
                    }
                    c => key.push(c),
                }
            }
            return Err("unterminated quoted key".to_string());
        }
        let end = rest.find(']').ok_or_else(|| "missing `]`".to_string())?;
        let inside = rest[..end].trim();
        let index = inside.parse::<i64>().map_err(|_| {
            format!("`[{inside}]` is not an index or a quoted key (wildcards, slices and filters are not supported)")
        })?;
        Ok((Segment::Index(index), &rest[end + 1..]))
    }

    /// The path as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The steps, from the root.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The value at this path in `document`, or a message naming the step that found nothing.
    pub fn find<'a>(
        &self,
        document: &'a serde_json::Value,
    ) -> Result<&'a serde_json::Value, String> {
        let mut current = document;
        for (depth, segment) in self.segments.iter().enumerate() {
            let found = match (segment, current) {
                (Segment::Key(key), serde_json::Value::Object(fields)) => fields.get(key),
                (Segment::Index(index), serde_json::Value::Array(items)) => {
                    let len = items.len() as i64;
                    let at = if *index < 0 { len + index } else { *index };
                    usize::try_from(at).ok().and_then(|at| items.get(at))
                }
                _ => None,
            };
            current = found.ok_or_else(|| {
                let at = Path(&self.segments[..depth]);
                match (segment, current) {
                    (Segment::Key(key), serde_json::Value::Object(_)) => {
                        format!("no member {key:?} at {at}")
                    }
                    (Segment::Index(index), serde_json::Value::Array(items)) => {
                        format!(
                            "index {index} out of range at {at} ({} elements)",
                            items.len()
                        )
                    }
                    (_, other) => format!("{at} is {}, not {}", kind(other), segment.wants()),
                }
            })?;
        }
        Ok(current)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for JsonPath {
    type Err = JsonPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JsonPath::parse(s)
    }
}

// === impl Segment ===

impl Segment {
    /// What the segment needs to step into.
    fn wants(&self) -> &'static str {
        match self {
            Segment::Key(_) => "an object",
            Segment::Index(_) => "an array",
        }
    }
}

/// A prefix of a path, for messages: `$`, `$.data`, `$.items[0]`.
struct Path<'a>(&'a [Segment]);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for segment in self.0 {
            match segment {
                Segment::Key(key)
                    if !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-') =>
                {
                    write!(f, ".{key}")?
                }
                Segment::Key(key) => write!(f, "[{key:?}]")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The JSON type of a value, for messages.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
