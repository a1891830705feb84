//! The data plane's Prometheus exposition, encoded the way the admin endpoint does it, and a reader
//! for single samples.

use prometheus_client::registry::Registry;
use weir_proxy::{Routes, Stats};

/// Registers the data plane's collector in a fresh registry and encodes it as OpenMetrics text.
pub fn encode(stats: &Stats, routes: &Routes) -> String {
    let mut registry = Registry::default();
    weir_proxy::metrics::register(&mut registry, stats.clone(), routes.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
    text
}

/// The value of the sample named like `series` with exactly its labels, in any order (e.g.
/// `http_requests_total{service="shop",version="v1",status="200"}`), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let wanted = parse_series(series).unwrap_or_else(|| panic!("not a series: {series}"));
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = split_sample(line)?;
            (parse_series(series)? == wanted).then_some(value)
        })
        .map(|value| match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().expect("a numeric sample value"),
        })
}

/// `name{labels} value [timestamp]` → (`name{labels}`, `value`).
fn split_sample(line: &str) -> Option<(&str, &str)> {
    let end = match line.find('{') {
        // Label values may contain spaces: the series ends at the closing brace.
        Some(_) => line.rfind('}')? + 1,
        None => line.find(' ')?,
    };
    let (series, rest) = line.split_at(end);
    Some((series, rest.trim_start().split(' ').next()?))
}

/// `name{a="1",b="2"}` → (name, sorted label pairs).
fn parse_series(series: &str) -> Option<(String, Vec<(String, String)>)> {
    let Some((name, labels)) = series.split_once('{') else {
        return Some((series.to_string(), Vec::new()));
    };
    let mut rest = labels.strip_suffix('}')?;
    let mut pairs = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let close = loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        pairs.push((key.to_string(), value));
        rest = after[close + 1..].trim_start_matches(',');
    }
    pairs.sort();
    Some((name.to_string(), pairs))
}
