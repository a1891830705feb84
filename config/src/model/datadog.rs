//! `provider.datadog`: a Datadog metrics query (issue #9), as Argo Rollouts' Datadog provider
//! sends it.

use std::path::PathBuf;
use std::time::Duration;

/// `provider.datadog`: a scalar metrics query over the last `interval`, judged on the value of
/// its formula (v2) or query.
///
/// `{{service}}`, `{{stable.version}}`, `{{canary.version}}` and `{{args.NAME}}` are substituted
/// in the queries, the formula and the address before each measurement.
///
/// - v2 (the default) sends `POST {address}/api/v2/query/scalar` with the body
///   `{"data": {"type": "scalar_request", "attributes": {"from": MS, "to": MS, "queries":
///   [{"data_source": "metrics", "name": NAME, "query": QUERY, "aggregator": AGG}...],
///   "formulas": [{"formula": FORMULA}]}}}`; `result` is the number in the answer's
///   (formula's) number column, or an array of the numbers of a grouped (`by {tag}`) query.
/// - v1 sends `GET {address}/api/v1/query?from=S&to=S&query=QUERY`; `result` is the last point
///   of the first series.
///
/// No data (no column, no point, only nulls) is `[]`, as for an empty Prometheus vector:
/// `default(result, 0)` and `len(result)` decide, other conditions are inconclusive.
#[derive(Clone, Debug, PartialEq)]
pub struct DatadogProvider {
    /// `apiVersion` (default v2: Datadog deprecates v1, and only v2 takes `queries` and a
    /// `formula`; Argo's default is still v1, so `weir import` writes it out).
    pub api_version: DatadogApiVersion,
    /// The queries by name, in the order written: `queries: {a: ..., b: ...}`, or `query: ...`
    /// alone, which is the one query named `query` (as Argo sends it). Never empty; one query
    /// only with v1; several only with a formula.
    pub queries: Vec<(String, String)>,
    /// `formula` (v2, needs `queries`): combines the queries by name, e.g. `a / b * 100`.
    pub formula: Option<String>,
    /// `interval` (default [`DatadogProvider::DEFAULT_INTERVAL`]): how far back the query looks,
    /// ending at the measurement. Not the metric's own `interval` (how often it is measured).
    pub interval: Duration,
    /// `aggregator` (v2, default `last` as in Argo): how each query's points become one number.
    pub aggregator: DatadogAggregator,
    /// `address` (default [`DatadogProvider::DEFAULT_ADDRESS`]): the API's base URL, `http://`
    /// or `https://` (e.g. `https://api.datadoghq.eu`).
    pub address: String,
    /// `apiKeyFile` (required): the file holding the API key (`DD-API-KEY`), read at every
    /// query so a rotated key needs no reload.
    pub api_key_file: PathBuf,
    /// `appKeyFile` (required): the file holding the application key (`DD-APPLICATION-KEY`),
    /// read at every query.
    pub app_key_file: PathBuf,
    /// `timeout` (default [`DatadogProvider::DEFAULT_TIMEOUT`], at most
    /// [`DatadogProvider::MAX_TIMEOUT`]): no complete answer by then is an error measurement.
    pub timeout: Duration,
}

/// `apiVersion` of a Datadog provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DatadogApiVersion {
    /// `v1`: `GET /api/v1/query`, one query.
    V1,
    /// `v2`: `POST /api/v2/query/scalar`, queries and a formula.
    #[default]
    V2,
}

/// `aggregator` of a Datadog v2 query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DatadogAggregator {
    /// `avg`
    Avg,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `sum`
    Sum,
    /// `last` (the default)
    #[default]
    Last,
    /// `percentile`
    Percentile,
    /// `mean`
    Mean,
    /// `l2norm`
    L2Norm,
    /// `area`
    Area,
}

impl DatadogProvider {
    /// `address` when not written: Datadog's US1 site.
    pub const DEFAULT_ADDRESS: &'static str = "https://api.datadoghq.com";
    /// `interval` when not written: 5m, as in Argo.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
    /// `timeout` when not written: 10s, as Argo's `requestTimeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The longest `timeout` accepted: 5m.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
}

impl DatadogAggregator {
    /// Every aggregator, as written.
    pub const ALL: [DatadogAggregator; 9] = [
        DatadogAggregator::Avg,
        DatadogAggregator::Min,
        DatadogAggregator::Max,
        DatadogAggregator::Sum,
        DatadogAggregator::Last,
        DatadogAggregator::Percentile,
        DatadogAggregator::Mean,
        DatadogAggregator::L2Norm,
        DatadogAggregator::Area,
    ];

    /// The name Datadog's API (and the config) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DatadogAggregator::Avg => "avg",
            DatadogAggregator::Min => "min",
            DatadogAggregator::Max => "max",
            DatadogAggregator::Sum => "sum",
            DatadogAggregator::Last => "last",
            DatadogAggregator::Percentile => "percentile",
            DatadogAggregator::Mean => "mean",
            DatadogAggregator::L2Norm => "l2norm",
            DatadogAggregator::Area => "area",
        }
    }
}
