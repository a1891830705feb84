//! `successCondition` / `failureCondition`: CEL expressions over `result`, compiled with the `cel`
//! crate.
//!
//! Argo Rollouts evaluates its conditions with expr-lang; weir uses CEL, whose syntax covers what
//! Argo users write (`result >= 0.99`, `result[0] > 0.9 && result[0] < 1.1`, `result == "ok"`,
//! `result.status == "healthy"`, `len(result) > 0`), plus these additions:
//!
//! - `default(value, fallback)`: `fallback` when `value` is null, NaN or an empty list, **or when
//!   evaluating `value` fails** — so `default(result[0], 0)` is `0` for an empty vector;
//! - `isNaN(x)`, `isInf(x)`, `abs(x)`, `len(x)` (CEL's `size`), and Argo's `asInt(s)` /
//!   `asFloat(s)` for numbers in strings;
//! - numbers mix freely: every JSON number is a CEL `double`, comparisons between ints and doubles
//!   are numeric in CEL already (`result == 200` holds for 200.0), and `+ - * /` between an int
//!   and a double give a double (`result * 100 >= 99`) where plain CEL would raise an error.
//!
//! - `max(...)` / `min(...)` of numbers or of one list (`max(result) < 0.05` on a Datadog grouped
//!   query, as Argo users write it); `null` for an empty list.
//!
//! The additions are parse-time macros and context functions of the `cel` crate; the expression
//! text is never rewritten. A condition may only refer to `result` (and the variables its own
//! comprehensions bind): any other name is a compile error, so a typo can't hide inside `default`.
//! Likewise it may only call the functions the evaluator provides ([`GLOBAL_FUNCTIONS`],
//! [`MEMBER_FUNCTIONS`] and the macros `has`, `all`, `exists`, `exists_one`, `map`, `filter`,
//! `default`, `len`): `avg(result)` or `lenn(result)` is refused when the config loads instead of
//! failing every measurement.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{operators, CallExpr, EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map};
use cel::parser::Macro;
use cel::{Context, Env, ExecutionError, Program, Value};

/// The variable a condition sees.
const RESULT: &str = "result";

/// Internal function names: `@` can't start an identifier, so no condition can call them directly.
const BLANK: &str = "@weir_blank";
const ADD: &str = "@weir_add";
const SUB: &str = "@weir_sub";
const MUL: &str = "@weir_mul";
const DIV: &str = "@weir_div";

/// The functions a condition may call as `f(x)`: the CEL standard library's global functions the
/// `cel` crate implements (conversions, `size`, `matches`, `type`), then weir's additions.
pub const GLOBAL_FUNCTIONS: [&str; 16] = [
    "bool", "double", "dyn", "int", "uint", "string", "size", "matches", "type", "isNaN", "isInf",
    "abs", "asInt", "asFloat", "max", "min",
];

/// The functions a condition may call as `x.f(...)`: the CEL standard library's member functions
/// the `cel` crate implements (strings, sizes, optionals).
pub const MEMBER_FUNCTIONS: [&str; 9] = [
    "contains",
    "endsWith",
    "startsWith",
    "matches",
    "size",
    "hasValue",
    "value",
    "or",
    "orValue",
];

/// The macros called as `f(x)`, expanded when a condition compiles (so never calls in the
/// compiled form).
const GLOBAL_MACROS: [&str; 3] = ["has", "default", "len"];

/// The macros called as `list.f(x, ...)`, expanded when a condition compiles.
const MEMBER_MACROS: [&str; 5] = ["all", "exists", "exists_one", "map", "filter"];

/// The CEL environment: the standard library plus weir's macros. Built once.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(build_env()));

/// A compiled condition.
#[derive(Clone)]
pub struct Condition {
    source: String,
    program: Arc<Program>,
}

/// Why a condition could not be compiled or evaluated.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConditionError {
    /// The text is not a valid expression.
    #[error("invalid condition `{expr}`: {message}")]
    Syntax {
        /// The condition as written.
        expr: String,
        /// The parser's message.
        message: String,
    },
    /// The expression refers to a variable other than `result`.
    #[error("condition `{expr}` refers to unknown variable `{name}` (only `result` is defined)")]
    UnknownVariable {
        /// The condition as written.
        expr: String,
        /// The unknown name.
        name: String,
    },
    /// The expression calls a function the evaluator does not provide.
    #[error("condition `{expr}` calls unknown function `{name}` (known: {known})")]
    UnknownFunction {
        /// The condition as written.
        expr: String,
        /// The call as written: `avg` or `.avg` for a member call.
        name: String,
        /// The functions and macros a condition may call.
        known: String,
    },
    /// Evaluation failed: an index out of range, a missing key, mismatched types.
    #[error("{0}")]
    Evaluation(String),
    /// The expression evaluated to something other than a boolean.
    #[error("condition evaluated to {0}, not a boolean")]
    NotBoolean(String),
}

// === impl Condition ===

impl Condition {
    /// Compiles `expr`.
    pub fn compile(expr: &str) -> Result<Condition, ConditionError> {
        let program = ENV.compile(expr).map_err(|errors| ConditionError::Syntax {
            expr: expr.to_string(),
            message: syntax_message(&errors),
        })?;
        let mut free = BTreeSet::new();
        free_variables(program.expression(), &mut Vec::new(), &mut free);
        if let Some(name) = free.into_iter().find(|name| *name != RESULT) {
            return Err(ConditionError::UnknownVariable {
                expr: expr.to_string(),
                name: name.to_string(),
            });
        }
        if let Some(name) = unknown_function(program.expression()) {
            return Err(ConditionError::UnknownFunction {
                expr: expr.to_string(),
                name,
                known: known_functions(),
            });
        }
        Ok(Condition {
            source: expr.to_string(),
            program: Arc::new(program),
        })
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with `result` bound to `value`; the expression must give a boolean.
    pub fn evaluate(&self, value: &serde_json::Value) -> Result<bool, ConditionError> {
        let mut context = Context::with_env(Arc::clone(&ENV));
        add_functions(&mut context)?;
        context.add_variable_from_value(RESULT, to_cel(value));
        match self.program.execute(&context) {
            Ok(Value::Bool(holds)) => Ok(holds),
            Ok(other) => Err(ConditionError::NotBoolean(describe_cel(&other))),
            Err(error) => Err(ConditionError::Evaluation(error.to_string())),
        }
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl PartialEq for Condition {
    /// Conditions are equal when written the same.
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Condition {}

/// The parser's errors on one line: `1:10: Syntax error: mismatched input ...` (the parser also
/// draws the source with a caret under the error, which is left out).
fn syntax_message(errors: &cel::ParseErrors) -> String {
    let text = errors.to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("ERROR: "))
        .map(|line| line.strip_prefix("<input>:").unwrap_or(line))
        .collect();
    if lines.is_empty() {
        text.trim().to_string()
    } else {
        lines.join("; ")
    }
}

// === the environment ===

/// The standard environment with weir's macros: `default`, `len`, and the mixed-number arithmetic
/// operators.
fn build_env() -> Env {
    let mut env = Env::stdlib();
    let macros = [
        // default(x, fallback) → @not_strictly_false(@weir_blank(x)) ? fallback : x
        // `@not_strictly_false` is CEL's own error-absorbing test (true when its argument is true
        // or fails), the one comprehensions use for their loop condition.
        Macro::global("default", 2, |helper, _target, args| {
            let (Some(fallback), Some(value)) = (args.pop(), args.pop()) else {
                return Err(helper.new_error(0, "default() takes two arguments"));
            };
            let blank = helper.next_expr(call(BLANK, vec![value.clone()]));
            let test = helper.next_expr(call(operators::NOT_STRICTLY_FALSE, vec![blank]));
            Ok(Some(helper.next_expr(call(
                operators::CONDITIONAL,
                vec![test, fallback, value],
            ))))
        }),
        // len(x) → size(x)
        Macro::global("len", 1, |helper, _target, args| {
            Ok(Some(helper.next_expr(call("size", std::mem::take(args)))))
        }),
        arithmetic(operators::ADD, ADD),
        arithmetic(operators::SUBSTRACT, SUB),
        arithmetic(operators::MULTIPLY, MUL),
        arithmetic(operators::DIVIDE, DIV),
    ];
    for m in macros {
        // The names are fixed and distinct; a clash would be a bug caught by every test.
        env.add_macro(m)
            .expect("weir's condition macros do not clash with the standard ones");
    }
    env
}

/// A macro turning the binary `operator` into a call of weir's `function`.
fn arithmetic(operator: &'static str, function: &'static str) -> Macro {
    Macro::global(operator, 2, move |helper, _target, args| {
        Ok(Some(helper.next_expr(call(function, std::mem::take(args)))))
    })
}

/// A global call expression.
fn call(function: &str, args: Vec<IdedExpr>) -> Expr {
    Expr::Call(CallExpr {
        func_name: function.to_string(),
        target: None,
        args,
    })
}

/// Registers weir's functions in an evaluation context.
fn add_functions(context: &mut Context<'_, '_>) -> Result<(), ConditionError> {
    let declare = |error: cel::DeclarationError| ConditionError::Evaluation(error.to_string());
    context
        .add_function(BLANK, |value: Value| is_blank(&value))
        .map_err(declare)?;
    context
        .add_function(ADD, |a: Value, b: Value| mixed(a, b, |a, b| a + b))
        .map_err(declare)?;
    context
        .add_function(SUB, |a: Value, b: Value| mixed(a, b, |a, b| a - b))
        .map_err(declare)?;
    context
        .add_function(MUL, |a: Value, b: Value| mixed(a, b, |a, b| a * b))
        .map_err(declare)?;
    context
        .add_function(DIV, |a: Value, b: Value| mixed(a, b, |a, b| a / b))
        .map_err(declare)?;
    context.add_function("isNaN", is_nan).map_err(declare)?;
    context.add_function("isInf", is_inf).map_err(declare)?;
    context.add_function("abs", abs).map_err(declare)?;
    context.add_function("asInt", as_int).map_err(declare)?;
    context.add_function("asFloat", as_float).map_err(declare)?;
    context
        .add_function("max", cel::functions::max)
        .map_err(declare)?;
    context
        .add_function("min", cel::functions::min)
        .map_err(declare)?;
    Ok(())
}

/// Whether `default` replaces the value: null, NaN or an empty list.
fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Float(x) => x.is_nan(),
        Value::List(items) => items.is_empty(),
        _ => false,
    }
}

/// Applies a binary arithmetic operator, promoting an int (or uint) mixed with a double to double.
fn mixed(
    a: Value,
    b: Value,
    op: impl Fn(Value, Value) -> cel::ResolveResult,
) -> cel::ResolveResult {
    match (&a, &b) {
        (Value::Float(_), Value::Int(_) | Value::UInt(_))
        | (Value::Int(_) | Value::UInt(_), Value::Float(_)) => {
            op(Value::Float(as_f64(&a)), Value::Float(as_f64(&b)))
        }
        _ => op(a, b),
    }
}

/// A numeric value as `f64` (callers check it is numeric).
fn as_f64(value: &Value) -> f64 {
    match value {
        Value::Int(i) => *i as f64,
        Value::UInt(u) => *u as f64,
        Value::Float(x) => *x,
        _ => f64::NAN,
    }
}

/// `isNaN(x)`.
fn is_nan(value: Value) -> cel::ResolveResult {
    match value {
        Value::Float(x) => Ok(Value::Bool(x.is_nan())),
        Value::Int(_) | Value::UInt(_) => Ok(Value::Bool(false)),
        other => Err(not_a_number("isNaN", &other)),
    }
}

/// `isInf(x)`.
fn is_inf(value: Value) -> cel::ResolveResult {
    match value {
        Value::Float(x) => Ok(Value::Bool(x.is_infinite())),
        Value::Int(_) | Value::UInt(_) => Ok(Value::Bool(false)),
        other => Err(not_a_number("isInf", &other)),
    }
}

/// `abs(x)`.
fn abs(value: Value) -> cel::ResolveResult {
    match value {
        Value::Float(x) => Ok(Value::Float(x.abs())),
        Value::Int(i) => i
            .checked_abs()
            .map(Value::Int)
            .ok_or_else(|| ExecutionError::function_error("abs", "integer overflow")),
        Value::UInt(u) => Ok(Value::UInt(u)),
        other => Err(not_a_number("abs", &other)),
    }
}

/// `asInt(s)`: an integer from a string (or a whole double), as in Argo Rollouts.
fn as_int(value: Value) -> cel::ResolveResult {
    match value {
        Value::String(s) => s.trim().parse::<i64>().map(Value::Int).map_err(|error| {
            ExecutionError::function_error("asInt", format!("{s:?} is not an integer: {error}"))
        }),
        Value::Int(i) => Ok(Value::Int(i)),
        Value::Float(x) if x == x.trunc() && x.abs() < 9.0e15 => Ok(Value::Int(x as i64)),
        other => Err(ExecutionError::function_error(
            "asInt",
            format!(
                "expected a string holding an integer, got {}",
                describe_cel(&other)
            ),
        )),
    }
}

/// `asFloat(s)`: a double from a string (or a number), as in Argo Rollouts.
fn as_float(value: Value) -> cel::ResolveResult {
    match value {
        Value::String(s) => s.trim().parse::<f64>().map(Value::Float).map_err(|error| {
            ExecutionError::function_error("asFloat", format!("{s:?} is not a number: {error}"))
        }),
        Value::Int(_) | Value::UInt(_) | Value::Float(_) => Ok(Value::Float(as_f64(&value))),
        other => Err(ExecutionError::function_error(
            "asFloat",
            format!(
                "expected a string holding a number, got {}",
                describe_cel(&other)
            ),
        )),
    }
}

/// The error of a numeric function applied to something else.
fn not_a_number(function: &str, value: &Value) -> ExecutionError {
    ExecutionError::function_error(
        function,
        format!("expected a number, got {}", describe_cel(value)),
    )
}

// === values ===

/// A JSON value as a CEL value; every number becomes a double.
fn to_cel(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(to_cel).collect()))
        }
        serde_json::Value::Object(fields) => {
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A CEL value for messages: its JSON form where it has one.
fn describe_cel(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(x) => x.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::List(items) => {
            let items: Vec<String> = items.iter().map(describe_cel).collect();
            format!("[{}]", items.join(", "))
        }
        other => format!("{other:?}"),
    }
}

/// Collects the identifiers `expr` refers to that none of its comprehensions bind.
fn free_variables<'a>(expr: &'a IdedExpr, bound: &mut Vec<&'a str>, free: &mut BTreeSet<&'a str>) {
    match &expr.expr {
        Expr::Ident(name) => {
            if !bound.contains(&name.as_str()) {
                free.insert(name);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, free);
            }
            for arg in &call.args {
                free_variables(arg, bound, free);
            }
        }
        Expr::Select(select) => free_variables(&select.operand, bound, free),
        Expr::List(list) => {
            for element in &list.elements {
                free_variables(element, bound, free);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                entry_variables(&entry.expr, bound, free);
            }
        }
        Expr::Struct(structure) => {
            for entry in &structure.entries {
                entry_variables(&entry.expr, bound, free);
            }
        }
        Expr::Comprehension(comprehension) => {
            free_variables(&comprehension.iter_range, bound, free);
            free_variables(&comprehension.accu_init, bound, free);
            let depth = bound.len();
            bound.push(&comprehension.iter_var);
            if let Some(second) = &comprehension.iter_var2 {
                bound.push(second);
            }
            bound.push(&comprehension.accu_var);
            free_variables(&comprehension.loop_cond, bound, free);
            free_variables(&comprehension.loop_step, bound, free);
            free_variables(&comprehension.result, bound, free);
            bound.truncate(depth);
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// The first call in `expr` (depth first) to a function a condition cannot use: `name` for a
/// global call, `.name` for a member call. Operators (`_+_`, `@in`, weir's `@weir_*`) are
/// always known.
fn unknown_function(expr: &IdedExpr) -> Option<String> {
    let mut found = None;
    visit(expr, &mut |e| {
        if found.is_some() {
            return;
        }
        let Expr::Call(call) = &e.expr else { return };
        let name = call.func_name.as_str();
        let operator = !name.starts_with(|c: char| c.is_ascii_alphabetic());
        let known = if call.target.is_some() {
            MEMBER_FUNCTIONS.contains(&name)
        } else {
            GLOBAL_FUNCTIONS.contains(&name)
        };
        if !operator && !known {
            found = Some(match call.target {
                Some(_) => format!(".{name}"),
                None => name.to_string(),
            });
        }
    });
    found
}

/// The functions and macros a condition may call, for messages.
fn known_functions() -> String {
    let members = MEMBER_FUNCTIONS
        .iter()
        .chain(&MEMBER_MACROS)
        .map(|name| format!(".{name}()"));
    let globals = GLOBAL_FUNCTIONS
        .iter()
        .chain(&GLOBAL_MACROS)
        .map(|name| format!("{name}()"));
    globals.chain(members).collect::<Vec<_>>().join(", ")
}

/// Calls `f` on `expr` and every expression inside it.
fn visit(expr: &IdedExpr, f: &mut impl FnMut(&IdedExpr)) {
    f(expr);
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                visit(target, f);
            }
            for arg in &call.args {
                visit(arg, f);
            }
        }
        Expr::Select(select) => visit(&select.operand, f),
        Expr::List(list) => {
            for element in &list.elements {
                visit(element, f);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                visit_entry(&entry.expr, f);
            }
        }
        Expr::Struct(structure) => {
            for entry in &structure.entries {
                visit_entry(&entry.expr, f);
            }
        }
        Expr::Comprehension(comprehension) => {
            for part in [
                &comprehension.iter_range,
                &comprehension.accu_init,
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                visit(part, f);
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// [`visit`] of a map or struct entry.
fn visit_entry(entry: &EntryExpr, f: &mut impl FnMut(&IdedExpr)) {
    match entry {
        EntryExpr::MapEntry(entry) => {
            visit(&entry.key, f);
            visit(&entry.value, f);
        }
        EntryExpr::StructField(field) => visit(&field.value, f),
    }
}

/// [`free_variables`] of a map or struct entry.
fn entry_variables<'a>(
    entry: &'a EntryExpr,
    bound: &mut Vec<&'a str>,
    free: &mut BTreeSet<&'a str>,
) {
    match entry {
        EntryExpr::MapEntry(entry) => {
            free_variables(&entry.key, bound, free);
            free_variables(&entry.value, bound, free);
        }
        EntryExpr::StructField(field) => free_variables(&field.value, bound, free),
    }
}
