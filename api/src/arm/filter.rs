//! `$filter` on lists: the part of OData's filter syntax that ARM lists take (`eq`, `ne`, `in`, `and`, `or`, `not`,
//! parentheses, string literals with `''` for a quote) over the documented properties of each list, for example
//! `properties/complianceState eq 'Non-Compliant' and tags/env in ('prod', 'staging')`. The OData crates of the
//! ecosystem read neither member paths such as `properties/complianceState` nor the `''` escape, hence this parser.
//! A filter is checked against the resource as it is answered, so derived properties (a cluster's `Offline`, a
//! configuration's `statusFreshness`) filter exactly as they read; anything else gets a 400 saying what is supported.

use std::future::Future;

use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use crate::arm::paging::{MAX_PAGE_SIZE, Page, PageRequest};
use crate::error::ApiError;

/// Longest `$filter` accepted, and deepest nesting of parentheses and `not`.
const MAX_LENGTH: usize = 2048;
const MAX_DEPTH: usize = 32;

/// The `$filter` query parameter of a list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterParam {
    /// OData filter over the list's documented properties: `eq`, `ne`, `in`, `and`, `or`, `not` and parentheses,
    /// with quoted string values, e.g. `properties/complianceState eq 'Non-Compliant'`.
    #[serde(rename = "$filter")]
    #[param(rename = "$filter")]
    pub filter: Option<String>,
}

impl FilterParam {
    /// The parsed filter, if one was given.
    pub fn parse(&self, fields: &[Field]) -> Result<Option<Filter>, ApiError> {
        self.filter
            .as_deref()
            .map(|text| Filter::parse(text, fields))
            .transpose()
    }

    /// The query parameter to carry into `nextLink`, empty without a filter.
    pub fn link_suffix(&self) -> String {
        self.filter
            .as_deref()
            .map(|text| {
                format!(
                    "&$filter={}",
                    form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
                )
            })
            .unwrap_or_default()
    }
}

/// How a property's values compare.
#[derive(Debug, Clone, Copy)]
pub enum Matching {
    /// Exactly (tag values).
    Exact,
    /// Regardless of case (names, which ARM compares so).
    IgnoreCase,
    /// One of these values, regardless of case; anything else is refused as a value the property never has.
    OneOf(&'static [&'static str]),
}

/// A property a list can be filtered on: its path in the answered resource (`tags/*` for any tag).
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub path: &'static str,
    pub matching: Matching,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// The property (path segments) has one of the values.
    In(Vec<String>, Vec<String>, Comparison),
}

/// How the values of one comparison are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Exact,
    IgnoreCase,
}

impl Filter {
    /// Parses `text` over the `fields` a list supports.
    pub fn parse(text: &str, fields: &[Field]) -> Result<Self, ApiError> {
        if text.len() > MAX_LENGTH {
            return Err(invalid(format!("is longer than {MAX_LENGTH} characters")));
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            tokens,
            at: 0,
            fields,
            depth: 0,
        };
        let filter = parser.or()?;
        match parser.peek() {
            None => Ok(filter),
            Some(token) => Err(invalid(format!("has '{}' where it should end", token.text()))),
        }
    }

    /// Whether the answered resource matches.
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Self::Or(a, b) => a.matches(resource) || b.matches(resource),
            Self::And(a, b) => a.matches(resource) && b.matches(resource),
            Self::Not(a) => !a.matches(resource),
            Self::In(path, values, comparison) => {
                let found = path.iter().try_fold(resource, |v, segment| v.get(segment));
                let Some(Value::String(found)) = found else {
                    return false;
                };
                values.iter().any(|value| match comparison {
                    Comparison::Exact => value == found,
                    Comparison::IgnoreCase => value.eq_ignore_ascii_case(found),
                })
            }
        }
    }
}

/// Reads a filtered page: scans the list in key order from where the page starts, in batches, keeping the items
/// whose answer matches, until one more than the page holds is found (so the page knows another follows) or the
/// list ends. `fetch` reads a batch as the store lists (up to `limit + 1` items), `key` continues after an item,
/// `link` makes the next page's link from its token.
pub async fn scan<R, T, E, F, Fut>(
    page: &PageRequest,
    filter: &Filter,
    fetch: F,
    key: impl Fn(&R) -> String,
    render: impl Fn(R) -> T,
    link: impl Fn(&str) -> String,
) -> Result<Page<T>, E>
where
    T: serde::Serialize,
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Vec<R>, E>>,
{
    let kept = matching(page, filter, fetch, key, render).await?;
    Ok(Page::from_items(
        kept,
        page,
        |(key, _)| key.clone(),
        link,
        |(_, item)| item,
    ))
}

async fn matching<R, T, E, F, Fut>(
    page: &PageRequest,
    filter: &Filter,
    mut fetch: F,
    key: impl Fn(&R) -> String,
    render: impl Fn(R) -> T,
) -> Result<Vec<(String, T)>, E>
where
    T: serde::Serialize,
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Vec<R>, E>>,
{
    let mut kept = Vec::new();
    let mut after = page.after.clone();
    loop {
        let batch = fetch(PageRequest {
            after: after.clone(),
            limit: MAX_PAGE_SIZE,
        })
        .await?;
        let more = batch.len() > MAX_PAGE_SIZE as usize;
        for record in batch.into_iter().take(MAX_PAGE_SIZE as usize) {
            let record_key = key(&record);
            after = Some(record_key.clone());
            let item = render(record);
            if filter.matches(&serde_json::to_value(&item).unwrap_or_default()) {
                kept.push((record_key, item));
                if kept.len() > page.limit as usize {
                    return Ok(kept);
                }
            }
        }
        if !more {
            return Ok(kept);
        }
    }
}

fn invalid(why: String) -> ApiError {
    ApiError::invalid("$filter", format!("$filter {why}"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Text(String),
    Open,
    Close,
    Comma,
}

impl Token {
    fn text(&self) -> String {
        match self {
            Self::Word(word) => word.clone(),
            Self::Text(text) => format!("'{}'", text.replace('\'', "''")),
            Self::Open => "(".into(),
            Self::Close => ")".into(),
            Self::Comma => ",".into(),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Self::Word(word) if word.eq_ignore_ascii_case(keyword))
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, ApiError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            ',' => tokens.push(Token::Comma),
            '\'' => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) if chars.peek().is_some_and(|(_, next)| *next == '\'') => {
                            chars.next();
                            value.push('\'');
                        }
                        Some((_, '\'')) => break,
                        Some((_, c)) => value.push(c),
                        None => return Err(invalid(format!("has a string left open at character {}", at + 1))),
                    }
                }
                tokens.push(Token::Text(value));
            }
            c if c.is_alphanumeric() || c == '_' || c == '$' => {
                let mut word = String::from(c);
                while let Some((_, c)) = chars.peek().copied() {
                    if c.is_alphanumeric() || matches!(c, '_' | '/' | '.' | '-' | '$') {
                        word.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Word(word));
            }
            other => {
                return Err(invalid(format!(
                    "has '{other}' at character {}, which it cannot read",
                    at + 1
                )));
            }
        }
    }
    if tokens.is_empty() {
        return Err(invalid("is empty".into()));
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    fields: &'a [Field],
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn deeper(&mut self) -> Result<(), ApiError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(invalid(format!("nests deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, ApiError> {
        let mut left = self.and()?;
        while self.peek().is_some_and(|t| t.is_keyword("or")) {
            self.next();
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, ApiError> {
        let mut left = self.unary()?;
        while self.peek().is_some_and(|t| t.is_keyword("and")) {
            self.next();
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, ApiError> {
        if self.peek().is_some_and(|t| t.is_keyword("not")) {
            self.next();
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Token::Open) {
            self.next();
            self.deeper()?;
            let inner = self.or()?;
            self.depth -= 1;
            return match self.next() {
                Some(Token::Close) => Ok(inner),
                _ => Err(invalid("has a '(' that is never closed".into())),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Filter, ApiError> {
        let property = match self.next() {
            Some(Token::Word(word)) => word,
            Some(other) => return Err(invalid(format!("has {} where a property should be", other.text()))),
            None => return Err(invalid("ends where a comparison should be".into())),
        };
        if self.peek() == Some(&Token::Open) {
            return Err(invalid(format!(
                "calls the function '{property}': functions are not supported; use eq, ne or in"
            )));
        }
        let field = self.field(&property)?;
        let operator = match self.next() {
            Some(Token::Word(word)) => word.to_ascii_lowercase(),
            _ => return Err(invalid(format!("has no operator after '{property}'; use eq, ne or in"))),
        };
        let (values, negated) = match operator.as_str() {
            "eq" | "ne" => (vec![self.literal(&property)?], operator == "ne"),
            "in" => (self.list(&property)?, false),
            "gt" | "ge" | "lt" | "le" | "has" => {
                return Err(invalid(format!(
                    "uses '{operator}', which is not supported; use eq, ne or in"
                )));
            }
            other => return Err(invalid(format!("has '{other}' where eq, ne or in should be"))),
        };
        let (values, comparison) = canonical(&property, field.matching, values)?;
        let path = property.split('/').map(str::to_owned).collect();
        let filter = Filter::In(path, values, comparison);
        Ok(if negated { Filter::Not(Box::new(filter)) } else { filter })
    }

    fn field(&self, property: &str) -> Result<Field, ApiError> {
        let found = self.fields.iter().find(|f| match f.path.strip_suffix('*') {
            Some(prefix) => property.len() > prefix.len() && property.starts_with(prefix),
            None => f.path == property,
        });
        found.copied().ok_or_else(|| {
            let supported: Vec<&str> = self.fields.iter().map(|f| f.path).collect();
            invalid(format!(
                "names '{property}', which this list cannot be filtered on; it can be filtered on {}",
                supported.join(", ")
            ))
        })
    }

    fn literal(&mut self, property: &str) -> Result<String, ApiError> {
        match self.next() {
            Some(Token::Text(value)) => Ok(value),
            Some(other) => Err(invalid(format!(
                "compares '{property}' with {}: only quoted strings are supported, such as 'value'",
                other.text()
            ))),
            None => Err(invalid(format!("ends where a value for '{property}' should be"))),
        }
    }

    fn list(&mut self, property: &str) -> Result<Vec<String>, ApiError> {
        if self.next() != Some(Token::Open) {
            return Err(invalid(format!(
                "needs a list such as ('a', 'b') after '{property} in'"
            )));
        }
        let mut values = vec![self.literal(property)?];
        loop {
            match self.next() {
                Some(Token::Comma) => values.push(self.literal(property)?),
                Some(Token::Close) => return Ok(values),
                _ => return Err(invalid(format!("has a list for '{property}' that is never closed"))),
            }
        }
    }
}

/// The values as the property holds them: refused if it never holds one of them.
fn canonical(property: &str, matching: Matching, values: Vec<String>) -> Result<(Vec<String>, Comparison), ApiError> {
    match matching {
        Matching::Exact => Ok((values, Comparison::Exact)),
        Matching::IgnoreCase => Ok((values, Comparison::IgnoreCase)),
        Matching::OneOf(allowed) => {
            let values = values
                .into_iter()
                .map(|value| {
                    allowed
                        .iter()
                        .find(|a| a.eq_ignore_ascii_case(&value))
                        .map(|a| (*a).to_owned())
                        .ok_or_else(|| {
                            invalid(format!(
                                "compares '{property}' with '{value}', which it never is; it is one of {}",
                                allowed.join(", ")
                            ))
                        })
                })
                .collect::<Result<_, _>>()?;
            Ok((values, Comparison::Exact))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STATES: &[&str] = &["Compliant", "Non-Compliant", "Pending"];
    const FIELDS: &[Field] = &[
        Field {
            path: "name",
            matching: Matching::IgnoreCase,
        },
        Field {
            path: "properties/complianceState",
            matching: Matching::OneOf(STATES),
        },
        Field {
            path: "tags/*",
            matching: Matching::Exact,
        },
    ];

    fn resource(name: &str, state: &str, env: Option<&str>) -> Value {
        let mut r = json!({"name": name, "properties": {"complianceState": state}, "tags": {}});
        if let Some(env) = env {
            r["tags"]["env"] = json!(env);
        }
        r
    }

    fn filter(text: &str) -> Filter {
        Filter::parse(text, FIELDS).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    fn refusal(text: &str) -> String {
        match Filter::parse(text, FIELDS) {
            Ok(f) => panic!("{text} was accepted as {f:?}"),
            Err(err) => {
                assert_eq!(err.code(), "InvalidParameter");
                err.to_string()
            }
        }
    }

    #[test]
    fn comparisons_match_as_the_properties_read() {
        let a = resource("Alpha", "Non-Compliant", Some("prod"));
        let b = resource("beta", "Compliant", None);
        let f = filter("properties/complianceState eq 'non-compliant'");
        assert!(f.matches(&a) && !f.matches(&b), "enum values ignore case");
        let f = filter("name eq 'alpha'");
        assert!(f.matches(&a) && !f.matches(&b), "names ignore case");
        let f = filter("tags/env eq 'prod'");
        assert!(f.matches(&a) && !f.matches(&b));
        assert!(!filter("tags/env eq 'PROD'").matches(&a), "tag values are exact");
        let f = filter("tags/env ne 'prod'");
        assert!(
            !f.matches(&a) && f.matches(&b),
            "a missing tag is not equal to anything"
        );
        let f = filter("properties/complianceState in ('Compliant', 'Pending')");
        assert!(!f.matches(&a) && f.matches(&b));
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_inverts() {
        let a = resource("a", "Compliant", Some("prod"));
        let f = filter("name eq 'x' and name eq 'y' or tags/env eq 'prod'");
        assert!(f.matches(&a), "(x and y) or prod");
        let f = filter("name eq 'x' and (name eq 'y' or tags/env eq 'prod')");
        assert!(!f.matches(&a));
        assert!(filter("not (name eq 'x')").matches(&a));
        assert!(
            filter("NOT name EQ 'a' OR name eq 'a'").matches(&a),
            "keywords ignore case"
        );
    }

    #[test]
    fn quotes_are_escaped_by_doubling() {
        let r = resource("it's", "Compliant", None);
        assert!(filter("name eq 'it''s'").matches(&r));
    }

    #[test]
    fn what_is_not_supported_is_named() {
        assert!(refusal("properties/provisioningState eq 'Failed'").contains("cannot be filtered on"));
        assert!(refusal("name gt 'a'").contains("'gt', which is not supported"));
        assert!(refusal("startswith(name, 'a')").contains("functions are not supported"));
        assert!(refusal("name eq 3").contains("only quoted strings"));
        assert!(refusal("properties/complianceState eq 'Green'").contains("Compliant, Non-Compliant, Pending"));
        assert!(refusal("name eq 'a").contains("left open"));
        assert!(refusal("(name eq 'a'").contains("never closed"));
        assert!(refusal("name eq 'a' name").contains("should end"));
        assert!(refusal("name in 'a'").contains("needs a list"));
        assert!(refusal("").contains("is empty"));
        assert!(refusal("name eq 'a' & name eq 'b'").contains("'&'"));
        assert!(refusal("tags/ eq 'a'").contains("cannot be filtered on"));
        assert!(refusal(&format!("{}name eq 'a'{}", "(".repeat(40), ")".repeat(40))).contains("deeper"));
        assert!(refusal(&format!("name eq '{}'", "x".repeat(MAX_LENGTH))).contains("longer"));
    }

    /// Words and symbols of `$filter`, so that generated texts reach deep into the parser, not only the tokenizer.
    fn filter_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let token = prop_oneof![
            Just("name".to_owned()),
            Just("properties/complianceState".to_owned()),
            Just("tags/env".to_owned()),
            Just("eq".to_owned()),
            Just("ne".to_owned()),
            Just("in".to_owned()),
            Just("and".to_owned()),
            Just("or".to_owned()),
            Just("not".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just(",".to_owned()),
            Just("'Compliant'".to_owned()),
            Just("'it''s'".to_owned()),
            Just("'".to_owned()),
            Just("gt".to_owned()),
            Just("1".to_owned()),
            "[ -~]{0,6}",
        ];
        proptest::collection::vec(token, 0..60).prop_map(|tokens| tokens.join(" "))
    }

    proptest::proptest! {
        #[test]
        fn any_filter_text_parses_or_is_refused_as_a_bad_parameter(text in filter_text()) {
            if let Err(err) = Filter::parse(&text, FIELDS) {
                proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn any_text_at_all_parses_or_is_refused(text in "\\PC{0,300}") {
            if let Ok(filter) = Filter::parse(&text, FIELDS) {
                filter.matches(&resource("a", "Compliant", Some("x")));
            }
        }
    }

    #[test]
    fn the_longest_chain_a_filter_may_hold_is_evaluated_and_dropped_safely() {
        let clause = "name eq 'a' and ";
        let text = clause.repeat(MAX_LENGTH / clause.len() - 1) + "name eq 'a'";
        let filter = filter(&text);
        assert!(filter.matches(&resource("a", "Compliant", None)));
        let nested = format!("{}name eq 'a'{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(refusal(&nested).contains("deeper"), "nesting is bounded");
    }
}
