//! Configuration templates of policy assignments: the properties of a fluxConfiguration in which a string may be
//! an expression in the syntax of ARM templates, over the assignment's parameters and the cluster the
//! configuration is rendered for.
//!
//! As in ARM, a string is an expression when it begins with `[` and ends with `]`; its whole value replaces the
//! string, so it may be of any JSON type (`"[parameters('interval')]"` may be a number). A string that begins with
//! `[[` and ends with `]` is the literal string without its first `[`; any other string is literal. Composition
//! happens inside an expression (`concat`, `format`), never by embedding one in a longer string, which is refused
//! when it looks like an attempt (`"apps/[cluster().name]"`). Function names are case-insensitive, string literals
//! are single-quoted (`''` is a quote), integers are written as such, and booleans and null come from `true()`,
//! `false()` and `null()`. Properties are read with `.name` or `['name']`, array items with `[0]`; property names
//! match in any case, as in ARM.
//!
//! Besides ARM's own functions (the list is [`Function`]), a template may read its cluster: `cluster()` is an
//! object shaped like ARM's `resourceGroup()` (`id`, `name`, `type`, `resourceGroup`, `subscriptionId`,
//! `location`, `tags`), and `tag('name')` / `tag('name', default)` read one tag. A tag that is not set, read
//! without a default, leaves the expression unresolvable for that cluster: that is not an error of the template,
//! but of the cluster, reported per cluster.
//!
//! Compiling checks the syntax, the functions and their arities, the parameters named, and evaluates everything
//! that does not depend on the cluster (so that its errors are the write's); what does depend on the cluster is
//! evaluated once per cluster by [`Template::render`]. Hostile input is bounded: an expression's length, its
//! nesting, and the characters an evaluation may produce.

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::Problems;

/// Most characters of one expression, as ARM allows.
pub const MAX_EXPRESSION_CHARS: usize = 24_576;
/// Deepest nesting of calls, property reads and indexes in one expression.
pub const MAX_DEPTH: usize = 32;
/// Most bytes of one string an expression produces.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Most bytes the expressions of one rendering may produce altogether (strings, array items).
pub const MAX_WORK: usize = 1024 * 1024;

/// What a template knows of the cluster it is rendered for.
#[derive(Debug, Clone, Copy)]
pub struct ClusterFacts<'a> {
    pub subscription: &'a str,
    pub resource_group: &'a str,
    pub name: &'a str,
    pub location: &'a str,
    pub tags: &'a BTreeMap<String, String>,
}

impl ClusterFacts<'_> {
    /// The cluster's ARM id (a connectedCluster, as every id fluxplane answers).
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Kubernetes/connectedClusters/{}",
            self.subscription, self.resource_group, self.name
        )
    }

    /// What `cluster()` answers.
    fn object(&self) -> Value {
        let tags: Map<String, Value> = self
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "id": self.id(),
            "name": self.name,
            "type": "Microsoft.Kubernetes/connectedClusters",
            "resourceGroup": self.resource_group,
            "subscriptionId": self.subscription,
            "location": self.location,
            "tags": tags,
        })
    }

    /// The tag `name`: its exact spelling first, then any case (Azure's tag names are case-insensitive).
    fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .get(name)
            .or_else(|| {
                self.tags
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    }

    fn missing_tag(&self, name: &str) -> String {
        format!("tag '{name}' is not set on cluster '{}'", self.name)
    }
}

/// Why a template cannot be rendered for a cluster: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolvable {
    /// The place in the assignment, e.g. `properties.configurationTemplate.kustomizations.apps.path`.
    pub target: String,
    pub message: String,
}

impl std::fmt::Display for Unresolvable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.target, self.message)
    }
}

/// The functions a template may call. Names match in any case; each takes the arguments ARM's function of that
/// name takes, and means what it means there, except `cluster` and `tag`, which are fluxplane's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Parameters,
    Cluster,
    Tag,
    Concat,
    Format,
    ToLower,
    ToUpper,
    Replace,
    Trim,
    Substring,
    StartsWith,
    EndsWith,
    IndexOf,
    LastIndexOf,
    Split,
    Join,
    PadLeft,
    String,
    Int,
    Bool,
    Length,
    Empty,
    Contains,
    First,
    Last,
    If,
    And,
    Or,
    Not,
    True,
    False,
    Null,
    Equals,
    Greater,
    GreaterOrEquals,
    Less,
    LessOrEquals,
    Coalesce,
    TryGet,
}

/// Each function's name and its fewest and most arguments (`None`: any number).
const FUNCTIONS: &[(&str, Function, usize, Option<usize>)] = &[
    ("parameters", Function::Parameters, 1, Some(1)),
    ("cluster", Function::Cluster, 0, Some(0)),
    ("tag", Function::Tag, 1, Some(2)),
    ("concat", Function::Concat, 1, None),
    ("format", Function::Format, 1, None),
    ("toLower", Function::ToLower, 1, Some(1)),
    ("toUpper", Function::ToUpper, 1, Some(1)),
    ("replace", Function::Replace, 3, Some(3)),
    ("trim", Function::Trim, 1, Some(1)),
    ("substring", Function::Substring, 2, Some(3)),
    ("startsWith", Function::StartsWith, 2, Some(2)),
    ("endsWith", Function::EndsWith, 2, Some(2)),
    ("indexOf", Function::IndexOf, 2, Some(2)),
    ("lastIndexOf", Function::LastIndexOf, 2, Some(2)),
    ("split", Function::Split, 2, Some(2)),
    ("join", Function::Join, 2, Some(2)),
    ("padLeft", Function::PadLeft, 2, Some(3)),
    ("string", Function::String, 1, Some(1)),
    ("int", Function::Int, 1, Some(1)),
    ("bool", Function::Bool, 1, Some(1)),
    ("length", Function::Length, 1, Some(1)),
    ("empty", Function::Empty, 1, Some(1)),
    ("contains", Function::Contains, 2, Some(2)),
    ("first", Function::First, 1, Some(1)),
    ("last", Function::Last, 1, Some(1)),
    ("if", Function::If, 3, Some(3)),
    ("and", Function::And, 2, None),
    ("or", Function::Or, 2, None),
    ("not", Function::Not, 1, Some(1)),
    ("true", Function::True, 0, Some(0)),
    ("false", Function::False, 0, Some(0)),
    ("null", Function::Null, 0, Some(0)),
    ("equals", Function::Equals, 2, Some(2)),
    ("greater", Function::Greater, 2, Some(2)),
    ("greaterOrEquals", Function::GreaterOrEquals, 2, Some(2)),
    ("less", Function::Less, 2, Some(2)),
    ("lessOrEquals", Function::LessOrEquals, 2, Some(2)),
    ("coalesce", Function::Coalesce, 1, None),
    ("tryGet", Function::TryGet, 2, Some(2)),
];

impl Function {
    fn lookup(name: &str) -> Option<(Function, usize, Option<usize>)> {
        FUNCTIONS
            .iter()
            .find(|(n, ..)| n.eq_ignore_ascii_case(name))
            .map(|(_, f, min, max)| (*f, *min, *max))
    }

    pub fn name(self) -> &'static str {
        FUNCTIONS
            .iter()
            .find(|(_, f, ..)| *f == self)
            .map(|(n, ..)| *n)
            .expect("every function is listed")
    }

    /// Every function's name, for error messages and the documentation.
    pub fn names() -> impl Iterator<Item = &'static str> {
        FUNCTIONS.iter().map(|(n, ..)| *n)
    }
}

/// A parsed expression; constant parts folded into `Const` once compiled.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Const(Value),
    Call(Function, Vec<Expr>),
    Property(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
}

/// What a string of a template is.
enum Text<'a> {
    Literal(std::borrow::Cow<'a, str>),
    /// The expression between the brackets.
    Expression(&'a str),
}

fn classify(text: &str) -> Text<'_> {
    if text.len() >= 2 && text.starts_with('[') && text.ends_with(']') {
        if text.starts_with("[[") {
            return Text::Literal(std::borrow::Cow::Owned(text[1..].to_owned()));
        }
        return Text::Expression(&text[1..text.len() - 1]);
    }
    Text::Literal(std::borrow::Cow::Borrowed(text))
}

/// The first function call embedded in a literal string, as in `"apps/[cluster().name]"`: ARM would take it
/// literally, which is never what was meant.
fn embedded_call(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'[')
        .find_map(|(at, _)| {
            let rest = &text[at + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            let (function, ..) = Function::lookup(name)?;
            after.trim_start().starts_with('(').then(|| function.name())
        })
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

/// Parses the text between an expression's brackets.
fn parse(text: &str) -> Result<Expr, String> {
    let chars = text.chars().count();
    if chars > MAX_EXPRESSION_CHARS {
        return Err(format!(
            "the template language expression has {chars} characters; at most {MAX_EXPRESSION_CHARS} are allowed"
        ));
    }
    let mut parser = Parser { text, at: 0 };
    parser.blank();
    if parser.at == text.len() {
        return Err("the template language expression is empty".into());
    }
    let expr = parser.expr(1)?;
    parser.blank();
    match parser.peek() {
        None => Ok(expr),
        Some(c) => Err(parser.error(&format!("unexpected '{c}'"))),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn blank(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, what: &str) -> String {
        let position = self.text[..self.at].chars().count() + 1;
        format!(
            "the template language expression '{}' is not valid: {what} at position {position}",
            shorten(self.text)
        )
    }

    fn expect(&mut self, wanted: char, what: &str) -> Result<(), String> {
        self.blank();
        match self.peek() {
            Some(c) if c == wanted => {
                self.bump();
                Ok(())
            }
            Some(c) => Err(self.error(&format!("expected {what}, found '{c}'"))),
            None => Err(self.error(&format!("expected {what}, found the end"))),
        }
    }

    fn deeper(&self, level: usize) -> Result<usize, String> {
        if level > MAX_DEPTH {
            return Err(self.error(&format!("it nests deeper than {MAX_DEPTH} levels")));
        }
        Ok(level + 1)
    }

    /// One expression at nesting `level`: a literal or a call, then any property reads and indexes.
    fn expr(&mut self, level: usize) -> Result<Expr, String> {
        let mut level = self.deeper(level)?;
        self.blank();
        let mut expr = match self.peek() {
            Some('\'') => Expr::Const(Value::String(self.string()?)),
            Some(c) if c == '-' || c.is_ascii_digit() => Expr::Const(Value::from(self.integer()?)),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => self.call(level)?,
            Some(c) => return Err(self.error(&format!("unexpected '{c}'"))),
            None => return Err(self.error("expected a value, found the end")),
        };
        loop {
            self.blank();
            match self.peek() {
                Some('.') => {
                    level = self.deeper(level)?;
                    self.bump();
                    self.blank();
                    let name = self.identifier();
                    if name.is_empty() {
                        return Err(self.error("expected a property name after '.'"));
                    }
                    expr = Expr::Property(Box::new(expr), name.to_owned());
                }
                Some('[') => {
                    level = self.deeper(level)?;
                    self.bump();
                    let index = self.expr(level)?;
                    self.expect(']', "']'")?;
                    expr = Expr::Index(Box::new(expr), Box::new(index));
                }
                _ => return Ok(expr),
            }
        }
    }

    fn identifier(&mut self) -> &str {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.bump();
        }
        &self.text[start..self.at]
    }

    fn call(&mut self, level: usize) -> Result<Expr, String> {
        let start = self.at;
        let name = self.identifier().to_owned();
        let Some((function, min, max)) = Function::lookup(&name) else {
            self.at = start;
            return Err(format!(
                "the template function '{name}' is not found; the functions are: {}",
                Function::names().collect::<Vec<_>>().join(", ")
            ));
        };
        self.blank();
        if self.peek() != Some('(') {
            return Err(self.error(&format!("expected '(' after '{name}'")));
        }
        self.bump();
        let mut args = Vec::new();
        self.blank();
        if self.peek() == Some(')') {
            self.bump();
        } else {
            loop {
                args.push(self.expr(level)?);
                self.blank();
                match self.bump() {
                    Some(',') => continue,
                    Some(')') => break,
                    Some(c) => {
                        self.at -= c.len_utf8();
                        return Err(self.error(&format!("expected ',' or ')', found '{c}'")));
                    }
                    None => return Err(self.error("expected ',' or ')', found the end")),
                }
            }
        }
        let count = args.len();
        let fits = count >= min && max.is_none_or(|max| count <= max);
        if !fits {
            let expected = match max {
                Some(max) if max == min => format!("exactly {min}"),
                Some(max) => format!("from {min} to {max}"),
                None => format!("at least {min}"),
            };
            return Err(format!(
                "the template language function '{}' expects {expected} parameter(s), but was given {count}",
                function.name()
            ));
        }
        Ok(Expr::Call(function, args))
    }

    fn string(&mut self) -> Result<String, String> {
        self.bump(); // the opening quote
        let mut value = String::new();
        loop {
            match self.bump() {
                Some('\'') if self.peek() == Some('\'') => {
                    self.bump();
                    value.push('\'');
                }
                Some('\'') => return Ok(value),
                Some(c) => value.push(c),
                None => return Err(self.error("the string literal is not closed with '")),
            }
        }
    }

    fn integer(&mut self) -> Result<i64, String> {
        let start = self.at;
        if self.peek() == Some('-') {
            self.bump();
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        self.text[start..self.at]
            .parse()
            .map_err(|_| self.error(&format!("'{}' is not an integer", &self.text[start..self.at])))
    }
}

fn shorten(text: &str) -> String {
    const SHOWN: usize = 120;
    if text.chars().count() <= SHOWN {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(SHOWN).collect::<String>())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Compiling

/// A compiled template: its JSON with every constant part evaluated, and what is left to evaluate per cluster.
#[derive(Debug, Clone)]
pub struct Template {
    root: Node,
    /// The parameters, compiled the same way (they may read the cluster, not other parameters).
    parameters: Vec<(String, Node)>,
    /// The places in the template whose value depends on the cluster.
    per_cluster: Vec<String>,
    /// The same places as JSON pointers into the rendered template.
    pointers: Vec<String>,
}

#[derive(Debug, Clone)]
enum Node {
    Const(Value),
    /// An expression that reads the cluster, with its place.
    Expr(Expr, String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// Why an evaluation stopped.
#[derive(Debug)]
enum Stop {
    /// It reads the cluster, and there is none yet (compiling).
    Unknown,
    Failed(String),
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Stop::Failed(message)
    }
}

impl Template {
    /// Compiles `template` (at `target`) with its `parameters` (at `properties.parameters`), recording each problem
    /// under its place.
    pub fn compile(template: &Value, parameters: &Map<String, Value>, target: &str, p: &mut Problems) -> Self {
        let mut compiled = Template {
            root: Node::Const(Value::Null),
            parameters: Vec::new(),
            per_cluster: Vec::new(),
            pointers: Vec::new(),
        };
        for (name, value) in parameters {
            let node = compiled.compile_node(value, format!("properties.parameters.{name}"), true, p);
            compiled.parameters.push((name.clone(), node));
        }
        compiled.root = compiled.compile_node(template, target.to_owned(), false, p);
        collect_places(
            &compiled.root,
            &mut String::new(),
            &mut compiled.per_cluster,
            &mut compiled.pointers,
        );
        compiled
    }

    /// Whether some value depends on the cluster: otherwise every cluster gets the same rendering.
    pub fn per_cluster(&self) -> bool {
        !self.per_cluster.is_empty()
    }

    /// The places whose value depends on the cluster.
    pub fn places(&self) -> &[String] {
        &self.per_cluster
    }

    /// Whether `rendered` holds an array or an object at a place that depends on the cluster: what a cluster's
    /// values may put where the template's shared part has been checked holds only scalars otherwise.
    pub fn renders_structure(&self, rendered: &Value) -> bool {
        self.pointers
            .iter()
            .any(|p| matches!(rendered.pointer(p), Some(Value::Array(_) | Value::Object(_))))
    }

    /// The template rendered for `cluster`.
    pub fn render(&self, cluster: &ClusterFacts) -> Result<Value, Unresolvable> {
        let mut scope = Scope::new(self, Some(cluster));
        render_node(&self.root, &mut scope)
    }

    /// The template with what depends on the cluster left `null`: what every cluster's rendering shares.
    pub fn shared(&self) -> Value {
        fn shared(node: &Node) -> Value {
            match node {
                Node::Const(value) => value.clone(),
                Node::Expr(..) => Value::Null,
                Node::Array(items) => Value::Array(items.iter().map(shared).collect()),
                Node::Object(entries) => Value::Object(entries.iter().map(|(k, v)| (k.clone(), shared(v))).collect()),
            }
        }
        shared(&self.root)
    }

    fn parameter(&self, name: &str) -> Option<&Node> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .or_else(|| self.parameters.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map(|(_, node)| node)
    }

    fn compile_node(&self, value: &Value, target: String, in_parameters: bool, p: &mut Problems) -> Node {
        match value {
            Value::String(text) => match classify(text) {
                Text::Literal(literal) => {
                    if !text.starts_with("[[")
                        && let Some(function) = embedded_call(text)
                    {
                        p.add(
                            &target,
                            format!(
                                "'{function}(' inside a longer string: as in ARM templates, an expression must be the \
                                 whole string, e.g. \"[concat('apps/', cluster().name)]\" (write '[[' for a \
                                 literal '[' at the start)"
                            ),
                        );
                    }
                    Node::Const(Value::String(literal.into_owned()))
                }
                Text::Expression(source) => {
                    let expr = match parse(source) {
                        Ok(expr) => expr,
                        Err(message) => {
                            p.add(&target, message);
                            return Node::Const(Value::Null);
                        }
                    };
                    if in_parameters && uses(&expr, Function::Parameters) {
                        p.add(
                            &target,
                            "a parameter's value cannot use parameters(): parameters may read the cluster, not each \
                             other",
                        );
                        return Node::Const(Value::Null);
                    }
                    let mut scope = Scope::new(self, None);
                    match fold(expr, &mut scope) {
                        Ok(Expr::Const(value)) => Node::Const(value),
                        Ok(expr) => Node::Expr(expr, target),
                        Err(message) => {
                            p.add(&target, message);
                            Node::Const(Value::Null)
                        }
                    }
                }
            },
            Value::Array(items) => {
                let nodes: Vec<Node> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.compile_node(item, format!("{target}[{i}]"), in_parameters, p))
                    .collect();
                if nodes.iter().all(|n| matches!(n, Node::Const(_))) {
                    Node::Const(Value::Array(nodes.into_iter().map(into_const).collect()))
                } else {
                    Node::Array(nodes)
                }
            }
            Value::Object(map) => {
                let entries: Vec<(String, Node)> = map
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.compile_node(v, format!("{target}.{k}"), in_parameters, p),
                        )
                    })
                    .collect();
                if entries.iter().all(|(_, n)| matches!(n, Node::Const(_))) {
                    Node::Const(Value::Object(
                        entries.into_iter().map(|(k, n)| (k, into_const(n))).collect(),
                    ))
                } else {
                    Node::Object(entries)
                }
            }
            other => Node::Const(other.clone()),
        }
    }
}

fn into_const(node: Node) -> Value {
    match node {
        Node::Const(value) => value,
        _ => unreachable!("checked to be constant"),
    }
}

fn collect_places(node: &Node, pointer: &mut String, places: &mut Vec<String>, pointers: &mut Vec<String>) {
    let at = pointer.len();
    match node {
        Node::Const(_) => {}
        Node::Expr(_, target) => {
            places.push(target.clone());
            pointers.push(pointer.clone());
        }
        Node::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointer.push_str(&format!("/{i}"));
                collect_places(item, pointer, places, pointers);
                pointer.truncate(at);
            }
        }
        Node::Object(entries) => {
            for (key, item) in entries {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                collect_places(item, pointer, places, pointers);
                pointer.truncate(at);
            }
        }
    }
}

fn uses(expr: &Expr, function: Function) -> bool {
    match expr {
        Expr::Const(_) => false,
        Expr::Call(f, args) => *f == function || args.iter().any(|a| uses(a, function)),
        Expr::Property(base, _) => uses(base, function),
        Expr::Index(base, index) => uses(base, function) || uses(index, function),
    }
}

/// Evaluates what can be evaluated without a cluster: an expression that does not read the cluster becomes its
/// value, one that does keeps its constant parts evaluated. Errors in constant parts are the template's.
fn fold(expr: Expr, scope: &mut Scope) -> Result<Expr, String> {
    let folded = match expr {
        Expr::Const(_) => return Ok(expr),
        Expr::Call(function, args) => {
            let args = args
                .into_iter()
                .map(|a| fold(a, scope))
                .collect::<Result<Vec<_>, _>>()?;
            Expr::Call(function, args)
        }
        Expr::Property(base, name) => Expr::Property(Box::new(fold(*base, scope)?), name),
        Expr::Index(base, index) => Expr::Index(Box::new(fold(*base, scope)?), Box::new(fold(*index, scope)?)),
    };
    match eval(&folded, scope) {
        Ok(value) => Ok(Expr::Const(value)),
        Err(Stop::Unknown) => Ok(folded),
        Err(Stop::Failed(message)) => Err(message),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Evaluating

struct Scope<'a> {
    template: &'a Template,
    cluster: Option<&'a ClusterFacts<'a>>,
    cluster_object: OnceCell<Value>,
    work: usize,
}

impl<'a> Scope<'a> {
    fn new(template: &'a Template, cluster: Option<&'a ClusterFacts<'a>>) -> Self {
        Self {
            template,
            cluster,
            cluster_object: OnceCell::new(),
            work: 0,
        }
    }

    fn cluster(&self) -> Result<&'a ClusterFacts<'a>, Stop> {
        self.cluster.ok_or(Stop::Unknown)
    }

    /// Counts `bytes` produced against the rendering's budget.
    fn produced(&mut self, bytes: usize) -> Result<(), Stop> {
        self.work += bytes;
        if self.work > MAX_WORK {
            return Err(Stop::Failed(format!(
                "the template's expressions produce more than {MAX_WORK} bytes for one cluster"
            )));
        }
        Ok(())
    }

    fn string(&mut self, value: String) -> Result<Value, Stop> {
        if value.len() > MAX_STRING_BYTES {
            return Err(too_long(value.len()));
        }
        self.produced(value.len())?;
        Ok(Value::String(value))
    }
}

fn too_long(bytes: usize) -> Stop {
    Stop::Failed(format!(
        "an expression produces a string of {bytes} bytes or more; at most {MAX_STRING_BYTES} are allowed"
    ))
}

fn render_node(node: &Node, scope: &mut Scope) -> Result<Value, Unresolvable> {
    Ok(match node {
        Node::Const(value) => value.clone(),
        Node::Expr(expr, target) => eval(expr, scope).map_err(|stop| Unresolvable {
            target: target.clone(),
            message: match stop {
                Stop::Failed(message) => message,
                Stop::Unknown => "the expression reads a cluster, and there is none".into(),
            },
        })?,
        Node::Array(items) => Value::Array(items.iter().map(|n| render_node(n, scope)).collect::<Result<_, _>>()?),
        Node::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, n)| Ok((k.clone(), render_node(n, scope)?)))
                .collect::<Result<_, Unresolvable>>()?,
        ),
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "Integer",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Object",
    }
}

fn expects(function: Function, what: &str, value: &Value) -> Stop {
    Stop::Failed(format!(
        "the template language function '{}' expects {what}; the value given is of type '{}'",
        function.name(),
        type_name(value)
    ))
}

/// `cluster().tags` (with any spelling of the names), which reads of a tag are answered from directly.
fn is_cluster_tags(expr: &Expr) -> bool {
    matches!(expr, Expr::Property(base, name)
        if name.eq_ignore_ascii_case("tags") && matches!(**base, Expr::Call(Function::Cluster, _)))
}

/// About how many bytes `value` takes: what copying it costs.
fn size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => 8 + items.iter().map(size).sum::<usize>(),
        Value::Object(map) => 8 + map.iter().map(|(k, v)| k.len() + size(v)).sum::<usize>(),
        _ => 8,
    }
}

fn eval(expr: &Expr, scope: &mut Scope) -> Result<Value, Stop> {
    match expr {
        Expr::Const(value) => {
            scope.produced(size(value))?;
            Ok(value.clone())
        }
        Expr::Property(base, name) if is_cluster_tags(base) => {
            let cluster = scope.cluster()?;
            cluster
                .tag(name)
                .map(|v| Value::String(v.to_owned()))
                .ok_or_else(|| Stop::Failed(cluster.missing_tag(name)))
        }
        Expr::Index(base, index) if is_cluster_tags(base) => {
            let index = eval(index, scope)?;
            let cluster = scope.cluster()?;
            let Value::String(name) = &index else {
                return Err(Stop::Failed(format!(
                    "tags are read by name; the index given is of type '{}'",
                    type_name(&index)
                )));
            };
            cluster
                .tag(name)
                .map(|v| Value::String(v.to_owned()))
                .ok_or_else(|| Stop::Failed(cluster.missing_tag(name)))
        }
        Expr::Property(base, name) => {
            let base = eval(base, scope)?;
            property(&base, name)
        }
        Expr::Index(base, index) => {
            let base = eval(base, scope)?;
            let index = eval(index, scope)?;
            match (&base, &index) {
                (Value::Object(_), Value::String(name)) => property(&base, name),
                (Value::Array(items), Value::Number(n)) => {
                    let at = n.as_i64().unwrap_or(-1);
                    usize::try_from(at)
                        .ok()
                        .and_then(|i| items.get(i))
                        .cloned()
                        .ok_or_else(|| {
                            Stop::Failed(format!("the index {n} is outside the array of {} item(s)", items.len()))
                        })
                }
                _ => Err(Stop::Failed(format!(
                    "a value of type '{}' cannot be indexed by a value of type '{}'",
                    type_name(&base),
                    type_name(&index)
                ))),
            }
        }
        Expr::Call(function, args) => call(*function, args, scope),
    }
}

/// The property `name` of `base`: its exact spelling first, then any case, as ARM reads properties.
fn property(base: &Value, name: &str) -> Result<Value, Stop> {
    let Value::Object(map) = base else {
        return Err(Stop::Failed(format!(
            "the property '{name}' cannot be read from a value of type '{}'",
            type_name(base)
        )));
    };
    lookup(map, name).cloned().ok_or_else(|| {
        let available: Vec<&str> = map.keys().take(20).map(String::as_str).collect();
        Stop::Failed(format!(
            "the language expression property '{name}' doesn't exist; available properties are '{}'",
            available.join(", ")
        ))
    })
}

fn lookup<'m>(map: &'m Map<String, Value>, name: &str) -> Option<&'m Value> {
    map.get(name)
        .or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

fn as_str(function: Function, value: &Value) -> Result<&str, Stop> {
    value.as_str().ok_or_else(|| expects(function, "a string", value))
}

fn as_int(function: Function, value: &Value) -> Result<i64, Stop> {
    value.as_i64().ok_or_else(|| expects(function, "an integer", value))
}

fn as_bool(function: Function, value: &Value) -> Result<bool, Stop> {
    value.as_bool().ok_or_else(|| expects(function, "a boolean", value))
}

/// A scalar as text, as ARM's `string()` writes it (objects and arrays as compact JSON).
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// ARM compares strings case-insensitively, lower case first among those equal but for case.
fn compare(function: Function, a: &Value, b: &Value) -> Result<Ordering, Stop> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.as_i64().is_some() && y.as_i64().is_some() => {
            Ok(x.as_i64().cmp(&y.as_i64()))
        }
        (Value::String(x), Value::String(y)) => Ok(x.to_lowercase().cmp(&y.to_lowercase()).then_with(|| y.cmp(x))),
        _ => Err(Stop::Failed(format!(
            "the template language function '{}' compares two integers or two strings; the values given are of \
             types '{}' and '{}'",
            function.name(),
            type_name(a),
            type_name(b)
        ))),
    }
}

fn call(function: Function, args: &[Expr], scope: &mut Scope) -> Result<Value, Stop> {
    use Function as F;
    // the lazy ones first: they evaluate only the arguments they need
    match function {
        F::If => {
            let condition = eval(&args[0], scope)?;
            let chosen = if as_bool(function, &condition)? {
                &args[1]
            } else {
                &args[2]
            };
            return eval(chosen, scope);
        }
        F::Coalesce => {
            for arg in args {
                let value = eval(arg, scope)?;
                if !value.is_null() {
                    return Ok(value);
                }
            }
            return Ok(Value::Null);
        }
        F::And | F::Or => {
            let wanted = function == F::Or;
            for arg in args {
                let value = eval(arg, scope)?;
                if as_bool(function, &value)? == wanted {
                    return Ok(Value::Bool(wanted));
                }
            }
            return Ok(Value::Bool(!wanted));
        }
        F::Cluster => {
            let cluster = scope.cluster()?;
            return Ok(scope.cluster_object.get_or_init(|| cluster.object()).clone());
        }
        F::Parameters => {
            let name = eval(&args[0], scope)?;
            let name = as_str(function, &name)?.to_owned();
            let template = scope.template;
            let Some(node) = template.parameter(&name) else {
                return Err(Stop::Failed(format!(
                    "the template uses the parameter '{name}', which parameters does not define"
                )));
            };
            return match node {
                Node::Const(value) => {
                    scope.produced(size(value))?;
                    Ok(value.clone())
                }
                _ if scope.cluster.is_none() => Err(Stop::Unknown),
                node => render_node(node, scope).map_err(|u| Stop::Failed(format!("{} (in {})", u.message, u.target))),
            };
        }
        F::Tag => {
            let name = eval(&args[0], scope)?;
            let name = as_str(function, &name)?.to_owned();
            let default = args.get(1).map(|d| eval(d, scope)).transpose()?;
            let cluster = scope.cluster()?;
            return match (cluster.tag(&name), default) {
                (Some(value), _) => Ok(Value::String(value.to_owned())),
                (None, Some(default)) => Ok(default),
                (None, None) => Err(Stop::Failed(cluster.missing_tag(&name))),
            };
        }
        _ => {}
    }
    let args: Vec<Value> = args.iter().map(|a| eval(a, scope)).collect::<Result<_, _>>()?;
    let arg = |i: usize| &args[i];
    match function {
        F::Concat => {
            if args.iter().all(Value::is_array) {
                scope.produced(args.iter().map(size).sum())?;
                let items: Vec<Value> = args
                    .iter()
                    .flat_map(|a| a.as_array().unwrap().iter().cloned())
                    .collect();
                return Ok(Value::Array(items));
            }
            let mut text = String::new();
            for a in &args {
                match a {
                    Value::Array(_) | Value::Object(_) => {
                        return Err(expects(function, "strings (or only arrays)", a));
                    }
                    other => text.push_str(&text_of(other)),
                }
                if text.len() > MAX_STRING_BYTES {
                    break;
                }
            }
            scope.string(text)
        }
        F::Format => {
            let pattern = as_str(function, arg(0))?.to_owned();
            let text = format_string(&pattern, &args[1..])?;
            scope.string(text)
        }
        F::ToLower => scope.string(as_str(function, arg(0))?.to_lowercase()),
        F::ToUpper => scope.string(as_str(function, arg(0))?.to_uppercase()),
        F::Trim => scope.string(as_str(function, arg(0))?.trim().to_owned()),
        F::Replace => {
            let (text, old, new) = (
                as_str(function, arg(0))?,
                as_str(function, arg(1))?,
                as_str(function, arg(2))?,
            );
            if old.is_empty() {
                return Err(Stop::Failed(
                    "the template language function 'replace' needs a non-empty string to replace".into(),
                ));
            }
            let size = text
                .len()
                .saturating_add(text.matches(old).count().saturating_mul(new.len()));
            if size > MAX_STRING_BYTES {
                return Err(too_long(size));
            }
            let replaced = text.replace(old, new);
            scope.string(replaced)
        }
        F::Substring => {
            let text = as_str(function, arg(0))?;
            let chars: Vec<char> = text.chars().collect();
            let start = as_int(function, arg(1))?;
            let length = match args.get(2) {
                Some(l) => as_int(function, l)?,
                None => chars.len() as i64 - start,
            };
            if start < 0 || length < 0 || start + length > chars.len() as i64 {
                return Err(Stop::Failed(format!(
                    "the template language function 'substring': the index {start} and length {length} must refer \
                     to a location within the string of {} characters",
                    chars.len()
                )));
            }
            let part: String = chars[start as usize..(start + length) as usize].iter().collect();
            scope.string(part)
        }
        F::StartsWith | F::EndsWith | F::IndexOf | F::LastIndexOf => {
            let text = as_str(function, arg(0))?.to_lowercase();
            let find = as_str(function, arg(1))?.to_lowercase();
            Ok(match function {
                F::StartsWith => Value::Bool(text.starts_with(&find)),
                F::EndsWith => Value::Bool(text.ends_with(&find)),
                F::IndexOf => Value::from(text.find(&find).map_or(-1, |at| text[..at].chars().count() as i64)),
                _ => Value::from(text.rfind(&find).map_or(-1, |at| text[..at].chars().count() as i64)),
            })
        }
        F::Split => {
            let text = as_str(function, arg(0))?;
            let delimiters: Vec<&str> = match arg(1) {
                Value::String(d) => vec![d.as_str()],
                Value::Array(items) => items.iter().map(|d| as_str(function, d)).collect::<Result<_, _>>()?,
                other => {
                    return Err(expects(
                        function,
                        "a string or an array of strings as delimiters",
                        other,
                    ));
                }
            };
            let delimiters: Vec<&str> = delimiters.into_iter().filter(|d| !d.is_empty()).collect();
            let mut parts = vec![text.to_owned()];
            for delimiter in delimiters {
                parts = parts
                    .iter()
                    .flat_map(|p| p.split(delimiter).map(str::to_owned).collect::<Vec<_>>())
                    .collect();
            }
            scope.produced(text.len() + parts.len() * 8)?;
            Ok(Value::Array(parts.into_iter().map(Value::String).collect()))
        }
        F::Join => {
            let Value::Array(items) = arg(0) else {
                return Err(expects(function, "an array", arg(0)));
            };
            let delimiter = as_str(function, arg(1))?;
            let mut text = String::new();
            for (i, item) in items.iter().enumerate() {
                if matches!(item, Value::Array(_) | Value::Object(_)) {
                    return Err(expects(function, "an array of strings", item));
                }
                if i > 0 {
                    text.push_str(delimiter);
                }
                text.push_str(&text_of(item));
                if text.len() > MAX_STRING_BYTES {
                    break;
                }
            }
            scope.string(text)
        }
        F::PadLeft => {
            let text = match arg(0) {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_i64() => n.to_string(),
                other => return Err(expects(function, "a string or an integer", other)),
            };
            let total = as_int(function, arg(1))?;
            if total < 0 || total as usize > MAX_STRING_BYTES {
                return Err(Stop::Failed(format!(
                    "the template language function 'padLeft' pads to at most {MAX_STRING_BYTES} characters"
                )));
            }
            let pad = match args.get(2) {
                Some(p) => {
                    let p = as_str(function, p)?;
                    let mut chars = p.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => c,
                        _ => {
                            return Err(Stop::Failed(
                                "the template language function 'padLeft' pads with one character".into(),
                            ));
                        }
                    }
                }
                None => ' ',
            };
            let missing = (total as usize).saturating_sub(text.chars().count());
            let padded: String = std::iter::repeat_n(pad, missing).chain(text.chars()).collect();
            scope.string(padded)
        }
        F::String => {
            let text = text_of(arg(0));
            scope.string(text)
        }
        F::Int => match arg(0) {
            Value::Number(n) if n.is_i64() => Ok(arg(0).clone()),
            Value::String(s) => s.trim().parse::<i64>().map(Value::from).map_err(|_| {
                Stop::Failed(format!(
                    "the template language function 'int' cannot convert '{}' to an integer",
                    shorten(s)
                ))
            }),
            other => Err(expects(function, "a string or an integer", other)),
        },
        F::Bool => match arg(0) {
            Value::Bool(_) => Ok(arg(0).clone()),
            Value::Number(n) if n.is_i64() => Ok(Value::Bool(n.as_i64() != Some(0))),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            Value::String(s) => Err(Stop::Failed(format!(
                "the template language function 'bool' cannot convert '{}' to a boolean",
                shorten(s)
            ))),
            other => Err(expects(function, "a string or an integer", other)),
        },
        F::Length => match arg(0) {
            Value::String(s) => Ok(Value::from(s.chars().count())),
            Value::Array(items) => Ok(Value::from(items.len())),
            Value::Object(map) => Ok(Value::from(map.len())),
            other => Err(expects(function, "a string, an array or an object", other)),
        },
        F::Empty => match arg(0) {
            Value::Null => Ok(Value::Bool(true)),
            Value::String(s) => Ok(Value::Bool(s.is_empty())),
            Value::Array(items) => Ok(Value::Bool(items.is_empty())),
            Value::Object(map) => Ok(Value::Bool(map.is_empty())),
            other => Err(expects(function, "a string, an array or an object", other)),
        },
        F::Contains => match (arg(0), arg(1)) {
            (Value::String(s), item) if !matches!(item, Value::Array(_) | Value::Object(_)) => {
                Ok(Value::Bool(s.contains(&text_of(item))))
            }
            (Value::Array(items), item) => Ok(Value::Bool(items.contains(item))),
            (Value::Object(map), Value::String(key)) => Ok(Value::Bool(lookup(map, key).is_some())),
            (container, _) => Err(expects(
                function,
                "a string, an array or an object to look in",
                container,
            )),
        },
        F::First | F::Last => match arg(0) {
            Value::String(s) => {
                let c = if function == F::First {
                    s.chars().next()
                } else {
                    s.chars().last()
                };
                Ok(Value::String(c.map(String::from).unwrap_or_default()))
            }
            Value::Array(items) => Ok(if function == F::First {
                items.first()
            } else {
                items.last()
            }
            .cloned()
            .unwrap_or(Value::Null)),
            other => Err(expects(function, "a string or an array", other)),
        },
        F::Not => Ok(Value::Bool(!as_bool(function, arg(0))?)),
        F::True => Ok(Value::Bool(true)),
        F::False => Ok(Value::Bool(false)),
        F::Null => Ok(Value::Null),
        F::Equals => Ok(Value::Bool(equal(arg(0), arg(1)))),
        F::Greater => Ok(Value::Bool(compare(function, arg(0), arg(1))? == Ordering::Greater)),
        F::GreaterOrEquals => Ok(Value::Bool(compare(function, arg(0), arg(1))? != Ordering::Less)),
        F::Less => Ok(Value::Bool(compare(function, arg(0), arg(1))? == Ordering::Less)),
        F::LessOrEquals => Ok(Value::Bool(compare(function, arg(0), arg(1))? != Ordering::Greater)),
        F::TryGet => match (arg(0), arg(1)) {
            (Value::Object(map), Value::String(key)) => Ok(lookup(map, key).cloned().unwrap_or(Value::Null)),
            (Value::Array(items), Value::Number(n)) => Ok(n
                .as_u64()
                .and_then(|i| items.get(i as usize))
                .cloned()
                .unwrap_or(Value::Null)),
            (container, _) => Err(expects(
                function,
                "an object and a key, or an array and an index",
                container,
            )),
        },
        F::If | F::Coalesce | F::And | F::Or | F::Cluster | F::Parameters | F::Tag => {
            unreachable!("evaluated above")
        }
    }
}

/// Values equal as JSON; integers whatever their representation.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// `format`'s pattern: `{0}` is the first argument, `{{` and `}}` are braces; .NET's format specifiers
/// (`{0:N2}`) are not supported.
fn format_string(pattern: &str, args: &[Value]) -> Result<String, Stop> {
    let fail = |what: String| Stop::Failed(format!("the template language function 'format': {what}"));
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut index = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) if c.is_ascii_digit() => index.push(c),
                        Some(c) if c == ':' || c == ',' => {
                            return Err(fail(format!(
                                "format specifiers such as '{{{index}{c}…}}' are not supported"
                            )));
                        }
                        _ => return Err(fail(format!("'{pattern}' has an unclosed or invalid '{{'"))),
                    }
                }
                let at: usize = index
                    .parse()
                    .map_err(|_| fail(format!("'{pattern}' has an empty '{{}}'")))?;
                let value = args.get(at).ok_or_else(|| {
                    fail(format!(
                        "'{{{at}}}' refers to argument {at}, but {} argument(s) follow the pattern",
                        args.len()
                    ))
                })?;
                out.push_str(&text_of(value));
            }
            '}' => return Err(fail(format!("'{pattern}' has a '}}' that closes nothing"))),
            c => out.push(c),
        }
        if out.len() > MAX_STRING_BYTES {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn facts<'a>(name: &'a str, tags: &'a BTreeMap<String, String>) -> ClusterFacts<'a> {
        ClusterFacts {
            subscription: "sub",
            resource_group: "rg-eu",
            name,
            location: "westeurope",
            tags,
        }
    }

    fn compile(template: Value, parameters: Value) -> Result<Template, Vec<(String, String)>> {
        let mut p = Problems::default();
        let compiled = Template::compile(
            &template,
            parameters.as_object().unwrap(),
            "properties.configurationTemplate",
            &mut p,
        );
        match p.into_result("template", None) {
            Ok(()) => Ok(compiled),
            Err(err) => Err(err
                .detail()
                .details
                .iter()
                .map(|d| (d.target.clone().unwrap_or_default(), d.message.clone()))
                .collect()),
        }
    }

    /// The value of one expression for a cluster tagged `tags` (named `prod-1`).
    fn value(expression: &str, tags_: &[(&str, &str)]) -> Result<Value, String> {
        let template = compile(
            json!({"v": expression}),
            json!({"branch": "main", "n": 3, "list": ["a", "b"]}),
        )
        .map_err(|e| e[0].1.clone())?;
        let tags = tags(tags_);
        template
            .render(&facts("prod-1", &tags))
            .map(|v| v["v"].clone())
            .map_err(|u| u.message)
    }

    #[test]
    fn strings_are_expressions_only_whole_and_double_brackets_escape_them() {
        assert_eq!(value("[parameters('branch')]", &[]), Ok(json!("main")));
        assert_eq!(value("[parameters('n')]", &[]), Ok(json!(3)), "any JSON type");
        assert_eq!(
            value("[[parameters('branch')]", &[]),
            Ok(json!("[parameters('branch')]"))
        );
        assert_eq!(
            value("[test] value", &[]),
            Ok(json!("[test] value")),
            "not ending in ']': literal"
        );
        assert_eq!(value("plain", &[]), Ok(json!("plain")));
        assert_eq!(
            value("[ toLower( 'A' ) ]", &[]),
            Ok(json!("a")),
            "blanks between tokens"
        );
    }

    #[test]
    fn a_template_reads_its_clusters_name_group_location_and_tags() {
        let cases = [
            ("[cluster().name]", json!("prod-1")),
            ("[cluster().resourceGroup]", json!("rg-eu")),
            ("[cluster().location]", json!("westeurope")),
            ("[cluster().subscriptionId]", json!("sub")),
            (
                "[cluster().id]",
                json!(
                    "/subscriptions/sub/resourceGroups/rg-eu/providers/Microsoft.Kubernetes/connectedClusters/prod-1"
                ),
            ),
            ("[cluster().tags.region]", json!("eu")),
            ("[CLUSTER().Tags.Region]", json!("eu")),
            ("[cluster().tags['region']]", json!("eu")),
            ("[tag('region')]", json!("eu")),
            ("[tag('tier', 'bronze')]", json!("bronze")),
            ("[concat('apps/', cluster().tags.env)]", json!("apps/prod")),
            (
                "[concat(parameters('branch'), '-', cluster().name)]",
                json!("main-prod-1"),
            ),
            ("[toUpper(cluster().tags.region)]", json!("EU")),
            (
                "[format('{0}-{1}', cluster().tags.env, cluster().tags.region)]",
                json!("prod-eu"),
            ),
            (
                "[if(equals(cluster().tags.env, 'prod'), 'stable', 'main')]",
                json!("stable"),
            ),
            ("[coalesce(tryGet(cluster().tags, 'tier'), 'bronze')]", json!("bronze")),
            (
                "[if(contains(cluster().tags, 'tier'), cluster().tags.tier, 'none')]",
                json!("none"),
            ),
            ("[length(cluster().tags)]", json!(2)),
        ];
        for (expression, expected) in cases {
            assert_eq!(
                value(expression, &[("region", "eu"), ("env", "prod")]),
                Ok(expected),
                "{expression}"
            );
        }
    }

    #[test]
    fn arm_functions_mean_what_they_mean_in_arm() {
        let cases = [
            ("[concat('a', 1, true())]", json!("a1True")),
            (
                "[concat(parameters('list'), split('c,d', ','))]",
                json!(["a", "b", "c", "d"]),
            ),
            ("[format('{0}/{{x}}/{1}', 'a', 2)]", json!("a/{x}/2")),
            ("[replace('a-b-c', '-', '.')]", json!("a.b.c")),
            ("[substring('abcdef', 1, 3)]", json!("bcd")),
            ("[substring('abcdef', 4)]", json!("ef")),
            ("[startsWith('Prod-EU', 'prod')]", json!(true)),
            ("[endsWith('prod-eu', 'EU')]", json!(true)),
            ("[indexOf('abcabc', 'C')]", json!(2)),
            ("[lastIndexOf('abcabc', 'c')]", json!(5)),
            ("[join(parameters('list'), '+')]", json!("a+b")),
            ("[padLeft(7, 3, '0')]", json!("007")),
            ("[string(parameters('list'))]", json!("[\"a\",\"b\"]")),
            ("[int('42')]", json!(42)),
            ("[bool('TRUE')]", json!(true)),
            ("[empty('')]", json!(true)),
            ("[first('abc')]", json!("a")),
            ("[last(parameters('list'))]", json!("b")),
            ("[and(true(), not(false()))]", json!(true)),
            ("[or(false(), false())]", json!(false)),
            ("[greater('A', 'a')]", json!(true)),
            ("[less(1, 2)]", json!(true)),
            ("[greaterOrEquals(2, 2)]", json!(true)),
            ("[lessOrEquals('b', 'a')]", json!(false)),
            ("[null()]", json!(null)),
            ("[coalesce(null(), null())]", json!(null)),
            ("[parameters('list')[1]]", json!("b")),
            ("[tryGet(parameters('list'), 5)]", json!(null)),
            ("[trim('  x ')]", json!("x")),
            ("['it''s']", json!("it's")),
            ("[-3]", json!(-3)),
        ];
        for (expression, expected) in cases {
            assert_eq!(value(expression, &[]), Ok(expected), "{expression}");
        }
    }

    #[test]
    fn if_and_coalesce_evaluate_only_what_they_need() {
        assert_eq!(
            value(
                "[if(contains(cluster().tags, 'region'), cluster().tags.region, 'eu')]",
                &[]
            ),
            Ok(json!("eu")),
            "the branch not taken reads a missing tag and is not evaluated"
        );
        assert_eq!(value("[coalesce('x', cluster().tags.missing)]", &[]), Ok(json!("x")));
    }

    #[test]
    fn a_missing_tag_without_a_default_makes_the_cluster_unresolvable_at_its_place() {
        let template = compile(
            json!({"kustomizations": {"apps": {"path": "[concat('apps/', cluster().tags.region)]"}}}),
            json!({}),
        )
        .unwrap();
        let none = tags(&[]);
        let err = template.render(&facts("prod-1", &none)).unwrap_err();
        assert_eq!(err.target, "properties.configurationTemplate.kustomizations.apps.path");
        assert_eq!(err.message, "tag 'region' is not set on cluster 'prod-1'");
        assert_eq!(
            value("[tag('region')]", &[]),
            Err("tag 'region' is not set on cluster 'prod-1'".into())
        );
    }

    #[test]
    fn errors_that_do_not_depend_on_the_cluster_are_the_templates_and_named_where_they_are() {
        let err = compile(
            json!({
                "a": "[nope('x')]",
                "b": {"c": "[concat('x']"},
                "d": ["ok", "[toLower('a', 'b')]"],
                "e": "[parameters('missing')]",
                "f": "[concat(cluster().name, toLower(1))]",
                "g": "apps/[cluster().name]",
                "h": "[format('{0:N2}', 1)]",
                "i": "[]",
                "j": "[concat('a') 'b']",
                "k": "[cluster]",
            }),
            json!({"p": "[parameters('q')]", "q": "x"}),
        )
        .unwrap_err();
        let at = |target: &str| {
            err.iter()
                .find(|(t, _)| t == target)
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| panic!("no error at {target}: {err:?}"))
        };
        let t = "properties.configurationTemplate";
        assert!(at(&format!("{t}.a")).contains("the template function 'nope' is not found"));
        assert!(at(&format!("{t}.b.c")).contains("expected ',' or ')', found the end"));
        assert!(at(&format!("{t}.d[1]")).contains("'toLower' expects exactly 1 parameter(s), but was given 2"));
        assert!(at(&format!("{t}.e")).contains("the parameter 'missing'"));
        assert!(
            at(&format!("{t}.f")).contains("'toLower' expects a string; the value given is of type 'Integer'"),
            "an error in a constant part of an expression that reads the cluster is found when compiling"
        );
        assert!(at(&format!("{t}.g")).contains("an expression must be the whole string"));
        assert!(at(&format!("{t}.h")).contains("format specifiers"));
        assert!(at(&format!("{t}.i")).contains("is empty"));
        assert!(at(&format!("{t}.j")).contains("unexpected '''"));
        assert!(at(&format!("{t}.k")).contains("expected '(' after 'cluster'"));
        assert!(at("properties.parameters.p").contains("cannot use parameters()"));
        assert_eq!(err.len(), 11, "{err:?}");
    }

    #[test]
    fn expressions_are_bounded_in_length_nesting_and_what_they_produce() {
        let deep = format!("[{}'x'{}]", "toLower(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(value(&deep, &[]).unwrap_err().contains("deeper than"));
        let chained = format!("[cluster(){}]", ".a".repeat(MAX_DEPTH + 1));
        assert!(value(&chained, &[]).unwrap_err().contains("deeper than"));
        let long = format!("['{}']", "x".repeat(MAX_EXPRESSION_CHARS));
        assert!(value(&long, &[]).unwrap_err().contains("at most 24576"));
        let huge = "[padLeft('x', 65536, 'y')]";
        assert!(value(huge, &[]).is_ok());
        let doubled = format!("[concat({})]", ["padLeft('x', 60000)"; 2].join(", "));
        assert!(value(&doubled, &[]).unwrap_err().contains("at most 65536"));
        // many strings within the limit each, past the budget together: per cluster, since they read it
        let many = format!(
            "[concat({})]",
            ["string(length(padLeft(cluster().name, 60000)))"; 20].join(", ")
        );
        assert!(value(&many, &[]).unwrap_err().contains("more than"));
        // copies of a large parameter count as well, before they are made
        let big: Vec<String> = (0..6000).map(|i| format!("item-{i}")).collect();
        let copies = format!("[concat({})]", ["parameters('big')"; 20].join(", "));
        let mut p = Problems::default();
        Template::compile(
            &json!({"v": copies}),
            json!({"big": big}).as_object().unwrap(),
            "t",
            &mut p,
        );
        let err = p.into_result("template", None).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn constant_parts_are_evaluated_once_and_only_the_rest_per_cluster() {
        let template = compile(
            json!({
                "gitRepository": {"url": "https://x/r", "repositoryRef": {"branch": "[parameters('branch')]"}},
                "kustomizations": {"apps": {"path": "[concat('./', parameters('base'), '/', cluster().tags.env)]"}},
                "postBuild": "[parameters('pb')]",
            }),
            json!({"branch": "main", "base": "apps", "pb": {"substitute": {"cluster": "[cluster().name]"}}}),
        )
        .unwrap();
        assert!(template.per_cluster());
        assert_eq!(
            template.places(),
            [
                "properties.configurationTemplate.kustomizations.apps.path",
                "properties.configurationTemplate.postBuild"
            ]
        );
        let shared = template.shared();
        assert_eq!(shared["gitRepository"]["repositoryRef"]["branch"], "main");
        assert_eq!(shared["kustomizations"]["apps"]["path"], Value::Null);
        let env = tags(&[("env", "prod")]);
        let rendered = template.render(&facts("c-7", &env)).unwrap();
        assert_eq!(rendered["kustomizations"]["apps"]["path"], "./apps/prod");
        assert_eq!(
            rendered["postBuild"]["substitute"]["cluster"], "c-7",
            "a parameter may read the cluster"
        );
        let fixed = compile(json!({"a": "[toLower('X')]"}), json!({})).unwrap();
        assert!(!fixed.per_cluster());
        assert_eq!(fixed.shared(), json!({"a": "x"}));
    }

    proptest::proptest! {
        #[test]
        fn any_expression_parses_or_says_why(text in "\\PC{0,40}|\\[[a-zA-Z(),'\\[\\]. 0-9-]{0,40}\\]") {
            let template = Value::String(text);
            let mut p = Problems::default();
            let compiled = Template::compile(&template, &Map::new(), "t", &mut p);
            match p.into_result("template", None) {
                Err(err) => proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST),
                Ok(()) => {
                    let tags = tags(&[("a", "b")]);
                    let _ = compiled.render(&facts("c", &tags));
                }
            }
        }

        #[test]
        fn any_template_renders_or_names_its_problems(
            template in crate::testing::arbitrary_json(),
            parameters in proptest::collection::btree_map("[a-z]{1,3}", crate::testing::arbitrary_json(), 0..4),
        ) {
            let parameters: Map<String, Value> = parameters.into_iter().collect();
            let mut p = Problems::default();
            let compiled = Template::compile(&template, &parameters, "properties.configurationTemplate", &mut p);
            if let Err(err) = p.into_result("template", None) {
                proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            } else if !compiled.per_cluster() {
                let tags = tags(&[]);
                proptest::prop_assert_eq!(compiled.render(&facts("c", &tags)).ok(), Some(compiled.shared()));
            }
        }
    }
}
