//! Configuration templates of policy assignments: the properties of a fluxConfiguration in which a string that is
//! exactly `[parameters('name')]` stands for the assignment's parameter `name`, as in ARM templates. The value
//! replaces the whole string, so it may be of any JSON type; a string starting with `[[` is a literal `[`. A
//! placeholder anywhere else in a string, or one naming no parameter, is an error.

use serde_json::{Map, Value};

use crate::error::Problems;

const OPEN: &str = "[parameters('";
const CLOSE: &str = "')]";

/// The template with every placeholder replaced, recording each problem under its path (`target` is the
/// template's own).
pub fn substitute(template: &Value, parameters: &Map<String, Value>, target: &str, p: &mut Problems) -> Value {
    match template {
        Value::String(text) => string(text, parameters, target, p),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| substitute(item, parameters, &format!("{target}[{i}]"), p))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, parameters, &format!("{target}.{k}"), p)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn string(text: &str, parameters: &Map<String, Value>, target: &str, p: &mut Problems) -> Value {
    if let Some(literal) = text.strip_prefix("[[") {
        return Value::String(format!("[{literal}"));
    }
    if let Some(name) = text.strip_prefix(OPEN).and_then(|rest| rest.strip_suffix(CLOSE)) {
        return match parameters.get(name) {
            Some(value) => value.clone(),
            None => {
                p.add(
                    target,
                    format!("the template uses the parameter '{name}', which parameters does not define"),
                );
                Value::Null
            }
        };
    }
    if text.contains(OPEN) {
        p.add(
            target,
            "a placeholder must be the whole string: \"[parameters('name')]\" (write '[[' for a literal '[')",
        );
    }
    Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parameters() -> Map<String, Value> {
        json!({"branch": "main", "interval": 120, "paths": ["./a", "./b"]})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn placeholders_take_their_parameters_value_whatever_its_type() {
        let template = json!({
            "gitRepository": {"url": "https://x/r", "repositoryRef": {"branch": "[parameters('branch')]"},
                              "syncIntervalInSeconds": "[parameters('interval')]"},
            "note": "[[parameters('branch')] stays literal",
            "list": ["[parameters('paths')]"]
        });
        let mut p = Problems::default();
        let rendered = substitute(&template, &parameters(), "properties.configurationTemplate", &mut p);
        assert!(p.into_result("t", None).is_ok());
        assert_eq!(rendered["gitRepository"]["repositoryRef"]["branch"], "main");
        assert_eq!(rendered["gitRepository"]["syncIntervalInSeconds"], 120);
        assert_eq!(rendered["note"], "[parameters('branch')] stays literal");
        assert_eq!(rendered["list"][0], json!(["./a", "./b"]));
    }

    #[test]
    fn unknown_parameters_and_embedded_placeholders_are_errors_at_their_paths() {
        let template = json!({"a": "[parameters('missing')]", "b": ["x-[parameters('branch')]"]});
        let mut p = Problems::default();
        substitute(&template, &parameters(), "t", &mut p);
        let err = p.into_result("assignment", None).unwrap_err();
        let targets: Vec<String> = err.detail().details.iter().filter_map(|d| d.target.clone()).collect();
        assert_eq!(targets, ["t.a", "t.b[0]"]);
    }

    proptest::proptest! {
        #[test]
        fn any_template_renders_or_names_its_problems(
            template in crate::testing::arbitrary_json(),
            parameters in proptest::collection::btree_map("[a-z]{1,3}", crate::testing::arbitrary_json(), 0..4),
        ) {
            let parameters: Map<String, Value> = parameters.into_iter().collect();
            let mut p = Problems::default();
            let rendered = substitute(&template, &parameters, "properties.configurationTemplate", &mut p);
            if let Err(err) = p.into_result("template", None) {
                proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            } else if !Value::Object(parameters).to_string().contains("[parameters('") {
                // values are placed as they are (not rendered again), so only then is no placeholder left
                proptest::prop_assert!(!rendered.to_string().contains("[parameters('"));
            }
        }
    }
}
