//! Header and mirror routes as the engine keeps them: serializable copies of the config's
//! `HeaderRoute`/`MirrorRoute` (the config crate has no serde), and their readable form for
//! events, the admin API and `weir get`.

use serde::{Deserialize, Serialize};
use weir_config::{AnyOf, HeaderRoute, MirrorRoute, RequestMatch, StringMatch, Weight};

/// The header and mirror routes a strategy has in force, in the order they were set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routes {
    /// Header and cookie routes.
    #[serde(default)]
    pub header_routes: Vec<HeaderRouteState>,
    /// Mirror routes.
    #[serde(default)]
    pub mirror_routes: Vec<MirrorRouteState>,
}

/// What setting a route did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteChange {
    /// A new route.
    Added,
    /// A route of that name got new settings.
    Replaced,
    /// A route of that name was set again with the same settings.
    Unchanged,
    /// The route was removed.
    Removed,
    /// A removal named a route that was not set.
    Absent,
}

// === impl RouteChange ===

impl RouteChange {
    /// Whether the change sends more requests (or copies) to the canary (`Some(true)`: a route
    /// added or replaced), fewer (`Some(false)`: removed), or changes nothing (`None`).
    pub fn widens(self) -> Option<bool> {
        match self {
            RouteChange::Added | RouteChange::Replaced => Some(true),
            RouteChange::Removed => Some(false),
            RouteChange::Unchanged | RouteChange::Absent => None,
        }
    }
}

// === impl Routes ===

impl Routes {
    /// Adds, replaces (by name) or, without conditions, removes a header route.
    pub fn set_header(&mut self, route: &HeaderRoute) -> RouteChange {
        let state = HeaderRouteState::from_config(route);
        set(
            &mut self.header_routes,
            state,
            |r| &r.name,
            route.any_of.is_empty(),
        )
    }

    /// Adds, replaces (by name) or, without conditions, removes a mirror route.
    pub fn set_mirror(&mut self, route: &MirrorRoute) -> RouteChange {
        let state = MirrorRouteState::from_config(route);
        set(
            &mut self.mirror_routes,
            state,
            |r| &r.name,
            route.any_of.is_empty(),
        )
    }

    /// Whether no route is set.
    pub fn is_empty(&self) -> bool {
        self.header_routes.is_empty() && self.mirror_routes.is_empty()
    }

    /// Removes every route; returns whether there was any.
    pub fn clear(&mut self) -> bool {
        let had = !self.is_empty();
        self.header_routes.clear();
        self.mirror_routes.clear();
        had
    }

    /// Whether some route here is not (with the same settings) in `before`: the change from
    /// `before` to these routes sends more requests (or copies) to the canary.
    pub fn adds_to(&self, before: &Routes) -> bool {
        self.header_routes
            .iter()
            .any(|r| !before.header_routes.contains(r))
            || self
                .mirror_routes
                .iter()
                .any(|r| !before.mirror_routes.contains(r))
    }

    /// Adds the routes to a policy.
    pub fn add_to(&self, policy: &mut weir_proxy::routes::Policy) {
        policy
            .header_routes
            .extend(self.header_routes.iter().map(HeaderRouteState::to_config));
        policy
            .mirror_routes
            .extend(self.mirror_routes.iter().map(MirrorRouteState::to_config));
    }
}

fn set<T: PartialEq>(
    routes: &mut Vec<T>,
    route: T,
    name: impl Fn(&T) -> &String,
    remove: bool,
) -> RouteChange {
    let position = routes.iter().position(|r| name(r) == name(&route));
    match (position, remove) {
        (Some(at), true) => {
            routes.remove(at);
            RouteChange::Removed
        }
        (None, true) => RouteChange::Absent,
        (Some(at), false) if routes[at] == route => RouteChange::Unchanged,
        (Some(at), false) => {
            routes[at] = route;
            RouteChange::Replaced
        }
        (None, false) => {
            routes.push(route);
            RouteChange::Added
        }
    }
}

/// A header (or cookie) route in force: matching requests go to the canary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRouteState {
    /// The route's name.
    pub name: String,
    /// The conditions: any entry whose conditions all hold.
    pub any_of: Vec<Vec<MatchState>>,
}

/// A mirror route in force: copies of a share of the matching requests go to the canary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorRouteState {
    /// The route's name.
    pub name: String,
    /// Share of the matching requests copied, in basis points.
    pub percentage_bp: u16,
    /// The conditions: any entry whose conditions all hold.
    pub any_of: Vec<Vec<MatchState>>,
}

/// One condition on a request head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MatchState {
    /// A header (lower-cased name).
    Header {
        /// Header name.
        name: String,
        /// The value condition.
        value: ValueState,
    },
    /// A cookie, by exact name.
    Cookie {
        /// Cookie name.
        name: String,
        /// The value condition.
        value: ValueState,
    },
    /// The method.
    Method(ValueState),
    /// The path.
    Path(ValueState),
}

/// How a value is compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueState {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches the whole value.
    Regex(String),
}

// === impl HeaderRouteState ===

impl HeaderRouteState {
    /// The engine's copy of a config route.
    pub fn from_config(route: &HeaderRoute) -> HeaderRouteState {
        HeaderRouteState {
            name: route.name.clone(),
            any_of: any_of_state(&route.any_of),
        }
    }

    /// The config form the route table is built from.
    pub fn to_config(&self) -> HeaderRoute {
        HeaderRoute {
            name: self.name.clone(),
            any_of: any_of_config(&self.any_of),
        }
    }

    /// `x-beta: exact "yes"`, entries joined with ` or `.
    pub fn conditions(&self) -> String {
        describe(&self.any_of)
    }
}

// === impl MirrorRouteState ===

impl MirrorRouteState {
    /// The engine's copy of a config route.
    pub fn from_config(route: &MirrorRoute) -> MirrorRouteState {
        MirrorRouteState {
            name: route.name.clone(),
            percentage_bp: route.percentage.basis_points(),
            any_of: any_of_state(&route.any_of),
        }
    }

    /// The config form the route table is built from.
    pub fn to_config(&self) -> MirrorRoute {
        MirrorRoute {
            name: self.name.clone(),
            percentage: self.percentage(),
            any_of: any_of_config(&self.any_of),
        }
    }

    /// The share of matching requests copied.
    pub fn percentage(&self) -> Weight {
        Weight::from_basis_points(self.percentage_bp).unwrap_or(Weight::FULL)
    }

    /// `method: exact "GET" and path: prefix "/api"`, entries joined with ` or `; `every
    /// request` when there is no condition.
    pub fn conditions(&self) -> String {
        describe(&self.any_of)
    }
}

fn any_of_state(any_of: &AnyOf) -> Vec<Vec<MatchState>> {
    any_of
        .iter()
        .map(|all| all.iter().map(MatchState::from_config).collect())
        .collect()
}

fn any_of_config(any_of: &[Vec<MatchState>]) -> AnyOf {
    any_of
        .iter()
        .map(|all| all.iter().map(MatchState::to_config).collect())
        .collect()
}

/// Conditions in words: `x-beta: exact "yes" and cookie beta: regex "on|yes"`, entries joined
/// with ` or ` (parenthesised when there are several with more than one condition).
pub fn describe(any_of: &[Vec<MatchState>]) -> String {
    let wrap = any_of.len() > 1;
    let entries: Vec<String> = any_of
        .iter()
        .filter(|all| !all.is_empty())
        .map(|all| {
            let text = all
                .iter()
                .map(MatchState::to_string)
                .collect::<Vec<_>>()
                .join(" and ");
            if wrap && all.len() > 1 {
                format!("({text})")
            } else {
                text
            }
        })
        .collect();
    if entries.is_empty() {
        "every request".into()
    } else {
        entries.join(" or ")
    }
}

// === impl MatchState ===

impl MatchState {
    fn from_config(condition: &RequestMatch) -> MatchState {
        match condition {
            RequestMatch::Header { name, value } => MatchState::Header {
                name: name.clone(),
                value: ValueState::from_config(value),
            },
            RequestMatch::Cookie { name, value } => MatchState::Cookie {
                name: name.clone(),
                value: ValueState::from_config(value),
            },
            RequestMatch::Method(value) => MatchState::Method(ValueState::from_config(value)),
            RequestMatch::Path(value) => MatchState::Path(ValueState::from_config(value)),
        }
    }

    fn to_config(&self) -> RequestMatch {
        match self {
            MatchState::Header { name, value } => RequestMatch::Header {
                name: name.clone(),
                value: value.to_config(),
            },
            MatchState::Cookie { name, value } => RequestMatch::Cookie {
                name: name.clone(),
                value: value.to_config(),
            },
            MatchState::Method(value) => RequestMatch::Method(value.to_config()),
            MatchState::Path(value) => RequestMatch::Path(value.to_config()),
        }
    }
}

impl std::fmt::Display for MatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatchState::Header { name, value } => write!(f, "header {name}: {value}"),
            MatchState::Cookie { name, value } => write!(f, "cookie {name}: {value}"),
            MatchState::Method(value) => write!(f, "method: {value}"),
            MatchState::Path(value) => write!(f, "path: {value}"),
        }
    }
}

// === impl ValueState ===

impl ValueState {
    fn from_config(value: &StringMatch) -> ValueState {
        match value {
            StringMatch::Exact(v) => ValueState::Exact(v.clone()),
            StringMatch::Prefix(v) => ValueState::Prefix(v.clone()),
            StringMatch::Regex(v) => ValueState::Regex(v.clone()),
        }
    }

    fn to_config(&self) -> StringMatch {
        match self {
            ValueState::Exact(v) => StringMatch::Exact(v.clone()),
            ValueState::Prefix(v) => StringMatch::Prefix(v.clone()),
            ValueState::Regex(v) => StringMatch::Regex(v.clone()),
        }
    }
}

impl std::fmt::Display for ValueState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueState::Exact(v) => write!(f, "exact {v:?}"),
            ValueState::Prefix(v) => write!(f, "prefix {v:?}"),
            ValueState::Regex(v) => write!(f, "regex {v:?}"),
        }
    }
}
