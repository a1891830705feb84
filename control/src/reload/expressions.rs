//! Conditions (CEL) and `jsonPath`s compiled when the config loads, so a syntax error or an
//! unknown variable or function is reported with its field path by `weir validate` and refused by a reload,
//! instead of failing every measurement at run time. An expression with a placeholder
//! (`{{args.threshold}}`) is compiled once its run fills it in, so only its placeholder-free
//! form is checked here.

use weir_config::{Model, Provider};

use crate::engine::analysis::condition::Condition;
use crate::engine::analysis::json_path::JsonPath;

/// Every problem found, one line each with its field path.
pub(super) fn check(model: &Model) -> Vec<String> {
    let mut problems = Vec::new();
    for (t, template) in model.analysis_templates.iter().enumerate() {
        for (m, metric) in template.metrics.iter().enumerate() {
            let at = format!("analysisTemplates[{t}].metrics[{m}]");
            for (field, text) in [
                ("successCondition", &metric.success_condition),
                ("failureCondition", &metric.failure_condition),
            ] {
                let Some(text) = text.as_deref().filter(|t| !t.contains("{{")) else {
                    continue;
                };
                if let Err(error) = Condition::compile(text) {
                    problems.push(format!("{at}.{field}: {error}"));
                }
            }
            if let Provider::Web(web) = &metric.provider {
                if let Some(path) = web.json_path.as_deref().filter(|p| !p.contains("{{")) {
                    if let Err(error) = JsonPath::parse(path) {
                        problems.push(format!("{at}.provider.web.jsonPath: {error}"));
                    }
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bad_condition_or_json_path_is_refused_at_load_with_its_field_path() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("weir.yaml");
        let config = |success: &str, json_path: &str| {
            format!(
                r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
services: [{{ name: s, stable: {{ version: v1, upstreams: ["127.0.0.1:9001"] }} }}]
analysisTemplates:
  - name: t
    args: [{{ name: threshold }}]
    metrics:
      - name: rate
        successCondition: '{success}'
        failureCondition: 'result[0] > {{{{args.threshold}}}}'
        provider: {{ builtin: {{ metric: success-rate }} }}
      - name: web
        successCondition: result == "ok"
        provider: {{ web: {{ url: "http://127.0.0.1:9/x", jsonPath: "{json_path}" }} }}
"#
            )
        };
        std::fs::write(&path, config("result >= 0.99 &&", "$.data[")).expect("write");
        let problems = crate::reload::load(&path).expect_err("refused").problems();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with("analysisTemplates[0].metrics[0].successCondition: "),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with("analysisTemplates[0].metrics[1].provider.web.jsonPath: "),
            "{problems:#?}"
        );
        // An unknown variable is caught too; a condition with a placeholder waits for its run.
        std::fs::write(&path, config("rsult >= 0.99", "$.status")).expect("write");
        let problems = crate::reload::load(&path).expect_err("refused").problems();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("rsult"), "{problems:#?}");
        // So is a function the evaluator does not provide, with the list of those it does.
        std::fs::write(&path, config("avg(result) >= 0.99", "$.status")).expect("write");
        let problems = crate::reload::load(&path).expect_err("refused").problems();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with("analysisTemplates[0].metrics[0].successCondition: ")
                && problems[0].contains("unknown function `avg`")
                && problems[0].contains("default()"),
            "{problems:#?}"
        );
        eprintln!("refused at load: {}", problems[0]);
        std::fs::write(&path, config("result >= 0.99", "$.status")).expect("write");
        assert!(crate::reload::load(&path).is_ok());
    }
}
