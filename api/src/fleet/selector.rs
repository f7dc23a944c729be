//! Label selectors over connected-cluster tags, with Kubernetes' syntax and semantics: `matchLabels` and
//! `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`), all of which must hold; an empty selector matches
//! every cluster. Tag names and values compare exactly (case-sensitively), as Kubernetes labels do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::arm::ids::is_dns1123_subdomain;
use crate::error::Problems;

/// Most terms (labels and expressions together) in one selector: as many as a cluster may carry tags.
pub const MAX_TERMS: usize = crate::clusters::model::MAX_TAGS;
/// Most values of one `In` or `NotIn` expression.
pub const MAX_VALUES: usize = 100;

/// Which clusters a group or an assignment takes in, by their tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Tags a cluster must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements a cluster's tags must all meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// For `In` and `NotIn`, at least one; for `Exists` and `DoesNotExist`, none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether a cluster with these tags is selected.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| tags.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(tags))
    }

    /// Records every problem of the selector under `target` (its JSON path).
    pub fn validate(&self, target: &str, p: &mut Problems) {
        let terms = self.match_labels.len() + self.match_expressions.len();
        if terms > MAX_TERMS {
            p.add(
                target,
                format!("has {terms} terms (matchLabels and matchExpressions); at most {MAX_TERMS} are allowed"),
            );
            return;
        }
        if let Some((i, _)) = self
            .match_expressions
            .iter()
            .enumerate()
            .find(|(_, r)| r.values.len() > MAX_VALUES)
        {
            p.add(
                format!("{target}.matchExpressions[{i}].values"),
                format!("at most {MAX_VALUES} values are allowed"),
            );
            return;
        }
        for (key, value) in &self.match_labels {
            let at = format!("{target}.matchLabels.{key}");
            check_key(key, &at, p);
            check_value(value, &at, p);
        }
        for (i, requirement) in self.match_expressions.iter().enumerate() {
            let at = format!("{target}.matchExpressions[{i}]");
            check_key(&requirement.key, &format!("{at}.key"), p);
            match requirement.operator {
                Operator::In | Operator::NotIn if requirement.values.is_empty() => {
                    p.add(format!("{at}.values"), "In and NotIn need at least one value")
                }
                Operator::Exists | Operator::DoesNotExist if !requirement.values.is_empty() => {
                    p.add(format!("{at}.values"), "Exists and DoesNotExist take no values")
                }
                _ => {}
            }
            for value in &requirement.values {
                check_value(value, &format!("{at}.values"), p);
            }
        }
    }
}

impl LabelSelector {
    /// Parses Kubernetes' string form of a selector, requirements separated by commas: `key=value` (or `==`),
    /// `key!=value`, `key in (a, b)`, `key notin (a, b)`, `key` (exists) and `!key` (does not exist). An error names
    /// the first part it cannot read; the result still wants `validate` for its keys and values.
    pub fn parse_str(text: &str) -> Result<Self, String> {
        let mut selector = Self::default();
        for part in split_requirements(text)? {
            let part = part.trim();
            let requirement = if let Some(key) = part.strip_prefix('!') {
                Requirement::new(key.trim(), Operator::DoesNotExist, Vec::new())
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::new(key.trim(), Operator::NotIn, vec![value.trim().to_owned()])
            } else if let Some((key, value)) = part.split_once('=') {
                let value = value.strip_prefix('=').unwrap_or(value).trim();
                selector.match_labels.insert(key.trim().to_owned(), value.to_owned());
                continue;
            } else if let Some((key, operator, values)) = set_requirement(part) {
                Requirement::new(key, operator, values)
            } else if !part.contains(char::is_whitespace) && !part.contains(['(', ')']) {
                Requirement::new(part, Operator::Exists, Vec::new())
            } else {
                return Err(format!("cannot read '{part}'"));
            };
            selector.match_expressions.push(requirement);
        }
        Ok(selector)
    }
}

/// The comma-separated parts of a selector string, commas inside `( )` kept.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("has a ')' without its '('")?,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("has a '(' that is never closed".into());
    }
    parts.push(&text[start..]);
    if parts.iter().any(|p| p.trim().is_empty()) {
        return Err("has an empty requirement".into());
    }
    Ok(parts)
}

/// `key in (a, b)` or `key notin (a, b)`.
fn set_requirement(part: &str) -> Option<(&str, Operator, Vec<String>)> {
    let (head, list) = part.split_once('(')?;
    let list = list.trim_end().strip_suffix(')')?;
    let mut words = head.split_whitespace();
    let (key, operator) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let operator = match operator {
        "in" => Operator::In,
        "notin" => Operator::NotIn,
        _ => return None,
    };
    let values: Vec<String> = list.split(',').map(|v| v.trim().to_owned()).collect();
    // `in ()` and `in (a,,b)` are not Kubernetes syntax: an empty set would select all or nothing by accident
    if values.iter().any(String::is_empty) {
        return None;
    }
    Some((key, operator, values))
}

impl Requirement {
    fn new(key: &str, operator: Operator, values: Vec<String>) -> Self {
        Self {
            key: key.to_owned(),
            operator,
            values,
        }
    }

    fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        let value = tags.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // as in Kubernetes, a cluster without the tag is not in the set
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label name: 1-63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit.
fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// A key is a label name with an optional DNS-subdomain prefix: `env`, `fluxplane.io/tier`.
fn check_key(key: &str, target: &str, p: &mut Problems) {
    let valid = match key.split_once('/') {
        Some((prefix, name)) => !prefix.is_empty() && is_dns1123_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    };
    if !valid {
        p.add(
            target,
            format!(
                "'{key}' is not a valid key: a name of 1-63 letters, digits, '-', '_' or '.' starting and ending with \
                 a letter or digit, optionally after a DNS subdomain and '/'"
            ),
        );
    }
}

/// A value is empty or a label name.
fn check_value(value: &str, target: &str, p: &mut Problems) {
    if !value.is_empty() && !is_label_name(value) {
        p.add(
            target,
            format!(
                "'{value}' is not a valid value: empty, or 1-63 letters, digits, '-', '_' or '.' starting and ending \
                 with a letter or digit"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_string_form_reads_as_kubernetes_writes_it() {
        let selector =
            LabelSelector::parse_str("env=prod, tier==web,zone!=b,region in (eu, us),gpu,!legacy,x notin (1)").unwrap();
        assert_eq!(
            selector.match_labels,
            BTreeMap::from([("env".into(), "prod".into()), ("tier".into(), "web".into())])
        );
        let expressions: Vec<(&str, Operator, usize)> = selector
            .match_expressions
            .iter()
            .map(|r| (r.key.as_str(), r.operator, r.values.len()))
            .collect();
        assert_eq!(
            expressions,
            [
                ("zone", Operator::NotIn, 1),
                ("region", Operator::In, 2),
                ("gpu", Operator::Exists, 0),
                ("legacy", Operator::DoesNotExist, 0),
                ("x", Operator::NotIn, 1),
            ]
        );
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let selector = LabelSelector::parse_str("env=prod,zone!=b").unwrap();
        assert!(
            selector.matches(&tags(&[("env", "prod")])),
            "a missing key is not equal to b"
        );
        assert!(!selector.matches(&tags(&[("env", "prod"), ("zone", "b")])));
        for bad in [
            "env=prod,",
            "a b",
            "region in (eu",
            "x)",
            "",
            "x notin ()",
            "x in ()",
            "x in (a,,b)",
            "x in ( )",
        ] {
            assert!(LabelSelector::parse_str(bad).is_err(), "{bad}");
        }
    }

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn each_operator_selects_as_kubernetes_does() {
        let prod_eu = tags(&[("env", "prod"), ("region", "eu")]);
        let prod = tags(&[("env", "prod")]);
        let dev_us = tags(&[("env", "dev"), ("region", "us")]);
        let none = tags(&[]);
        let cases = [
            (json!({}), [true, true, true, true]),
            (json!({"matchLabels": {"env": "prod"}}), [true, true, false, false]),
            (
                json!({"matchLabels": {"env": "prod", "region": "eu"}}),
                [true, false, false, false],
            ),
            (
                json!({"matchExpressions": [{"key": "region", "operator": "In", "values": ["eu", "us"]}]}),
                [true, false, true, false],
            ),
            (
                json!({"matchExpressions": [{"key": "region", "operator": "NotIn", "values": ["eu"]}]}),
                [false, true, true, true],
            ),
            (
                json!({"matchExpressions": [{"key": "region", "operator": "Exists"}]}),
                [true, false, true, false],
            ),
            (
                json!({"matchExpressions": [{"key": "region", "operator": "DoesNotExist"}]}),
                [false, true, false, true],
            ),
            (
                json!({"matchLabels": {"env": "prod"},
                       "matchExpressions": [{"key": "region", "operator": "NotIn", "values": ["us"]}]}),
                [true, true, false, false],
            ),
        ];
        for (value, expected) in cases {
            let s = selector(value.clone());
            let got = [&prod_eu, &prod, &dev_us, &none].map(|t| s.matches(t));
            assert_eq!(got, expected, "{value}");
        }
    }

    #[test]
    fn a_selector_holds_a_bounded_number_of_terms_and_values() {
        let many: serde_json::Map<String, serde_json::Value> =
            (0..=MAX_TERMS).map(|i| (format!("k{i}"), json!("v"))).collect();
        let mut p = Problems::default();
        selector(json!({"matchLabels": many})).validate("properties.selector", &mut p);
        let err = p.into_result("group", None).unwrap_err();
        assert_eq!(err.detail().target.as_deref(), Some("properties.selector"));
        let values: Vec<String> = (0..=MAX_VALUES).map(|i| format!("v{i}")).collect();
        let mut p = Problems::default();
        selector(json!({"matchExpressions": [{"key": "k", "operator": "In", "values": values}]}))
            .validate("properties.selector", &mut p);
        let err = p.into_result("group", None).unwrap_err();
        assert_eq!(
            err.detail().target.as_deref(),
            Some("properties.selector.matchExpressions[0].values")
        );
    }

    #[test]
    fn malformed_selectors_are_refused_with_every_problem_named() {
        let s = selector(json!({
            "matchLabels": {"bad key!": "v", "ok": "-bad-value"},
            "matchExpressions": [
                {"key": "region", "operator": "In", "values": []},
                {"key": "region", "operator": "Exists", "values": ["eu"]},
                {"key": "fluxplane.io/tier", "operator": "NotIn", "values": ["gold"]},
                {"key": "/tier", "operator": "Exists"}
            ]
        }));
        let mut p = Problems::default();
        s.validate("properties.selector", &mut p);
        let err = p.into_result("cluster group", Some("properties")).unwrap_err();
        let targets: Vec<String> = err.detail().details.iter().filter_map(|d| d.target.clone()).collect();
        assert_eq!(
            targets,
            [
                "properties.selector.matchLabels.bad key!",
                "properties.selector.matchLabels.ok",
                "properties.selector.matchExpressions[0].values",
                "properties.selector.matchExpressions[1].values",
                "properties.selector.matchExpressions[3].key",
            ]
        );
        assert!(
            serde_json::from_value::<LabelSelector>(json!({"matchExpressions": [
            {"key": "a", "operator": "Gt", "values": ["1"]}]}))
            .is_err()
        );
        assert!(serde_json::from_value::<LabelSelector>(json!({"matchLabel": {}})).is_err());
    }

    fn tag_sets() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("[abc]", "[xyz]", 0..3)
    }

    proptest! {
        #[test]
        fn not_in_is_the_complement_of_in(t in tag_sets(), key in "[abc]", values in prop::collection::vec("[xyz]", 1..3)) {
            let with = |operator| LabelSelector {
                match_expressions: vec![Requirement { key: key.clone(), operator, values: values.clone() }],
                ..Default::default()
            };
            prop_assert_eq!(with(Operator::NotIn).matches(&t), !with(Operator::In).matches(&t));
        }

        #[test]
        fn does_not_exist_is_the_complement_of_exists(t in tag_sets(), key in "[abc]") {
            let with = |operator| LabelSelector {
                match_expressions: vec![Requirement { key: key.clone(), operator, values: vec![] }],
                ..Default::default()
            };
            prop_assert_eq!(with(Operator::DoesNotExist).matches(&t), !with(Operator::Exists).matches(&t));
        }

        #[test]
        fn a_match_label_is_an_in_of_one_value(t in tag_sets(), key in "[abc]", value in "[xyz]") {
            let labels = LabelSelector { match_labels: BTreeMap::from([(key.clone(), value.clone())]), ..Default::default() };
            let expression = LabelSelector {
                match_expressions: vec![Requirement { key, operator: Operator::In, values: vec![value] }],
                ..Default::default()
            };
            prop_assert_eq!(labels.matches(&t), expression.matches(&t));
        }

        #[test]
        fn requirements_are_a_conjunction(
            t in tag_sets(),
            a in "[abc]", b in "[abc]", va in "[xyz]", vb in "[xyz]",
        ) {
            let one = |key: &String, value: &String| Requirement {
                key: key.clone(), operator: Operator::In, values: vec![value.clone()],
            };
            let both = LabelSelector { match_expressions: vec![one(&a, &va), one(&b, &vb)], ..Default::default() };
            let first = LabelSelector { match_expressions: vec![one(&a, &va)], ..Default::default() };
            let second = LabelSelector { match_expressions: vec![one(&b, &vb)], ..Default::default() };
            prop_assert_eq!(both.matches(&t), first.matches(&t) && second.matches(&t));
        }

        #[test]
        fn only_the_keys_it_names_decide(t in tag_sets(), extra in "[def]", value in "[xyz]") {
            let s = LabelSelector {
                match_labels: BTreeMap::from([("a".to_owned(), "x".to_owned())]),
                match_expressions: vec![Requirement { key: "b".into(), operator: Operator::NotIn, values: vec!["y".into()] }],
            };
            let mut changed = t.clone();
            changed.insert(extra.clone(), value);
            prop_assert_eq!(s.matches(&t), s.matches(&changed));
        }
    }

    proptest! {
        #[test]
        fn any_selector_text_parses_or_is_refused_by_name(text in "[a-z!=(), ]{0,80}|\\PC{0,120}") {
            if let Ok(selector) = LabelSelector::parse_str(&text) {
                let mut p = Problems::default();
                selector.validate("tagSelector", &mut p);
                if let Err(err) = p.into_result("selector", None) {
                    prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
                }
            }
        }

        #[test]
        fn any_selector_document_is_read_or_refused(value in crate::testing::arbitrary_json()) {
            if let Ok(selector) = serde_json::from_value::<LabelSelector>(value) {
                let mut p = Problems::default();
                selector.validate("properties.selector", &mut p);
                let _ = p.into_result("selector", None);
            }
        }
    }
}
