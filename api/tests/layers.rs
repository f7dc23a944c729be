//! The module map of `api/src` holds: routes → services → store, one way (ARCHITECTURE.md, "Layers").
//!
//! Reads every `crate::`, `super::` and `self::` path of the library's source (tests excluded), resolves each to
//! the file of the module it names, and checks the rules on the resulting graph of files:
//!
//! - no import cycle, but the one deliberate pair (`server.rs` builds the routes `openapi.rs` documents, and
//!   serves the document);
//! - route files (those that read the app's state: handlers, extractors and middleware) are imported by their own
//!   resource and the assembly only: never by another resource, a service, the store or the ARM kit;
//! - services never import routes or the app's state;
//! - `store/`, `arm/`, `error.rs` and `config.rs` import no resource's routes or services; `arm/`, `error.rs` and
//!   `config.rs` import neither the store nor the records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The folders of the resources.
const RESOURCES: &[&str] = &[
    "agents",
    "alerts",
    "clusters",
    "dashboards",
    "extensions",
    "fleet",
    "flux",
];
/// The files that assemble the app: they may import anything.
const ASSEMBLY: &[&str] = &["lib.rs", "server.rs", "openapi.rs", "state.rs", "testing.rs"];
/// The one import cycle allowed.
const DELIBERATE_PAIR: [&str; 2] = ["openapi.rs", "server.rs"];

struct Graph {
    /// Module path (`["fleet", "groups"]`) to file (`fleet/groups.rs`).
    modules: BTreeMap<Vec<String>, String>,
    /// File to the files it imports.
    edges: BTreeMap<String, BTreeSet<String>>,
    /// The files that read the app's state.
    routes: BTreeSet<String>,
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The source without its test modules (`#[cfg(test)] mod tests { .. }` at the end of a file, or a file of its own).
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// Every path a source names from inside the crate, with `use` groups expanded (one level of braces is all this
/// code base uses; nested groups are read as their prefix).
fn crate_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let starts = ["$crate::", "crate::", "super::", "self::"]
            .iter()
            .find(|p| rest.starts_with(**p))
            .filter(|_| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        let Some(start) = starts else {
            i += 1;
            continue;
        };
        let mut end = start.len();
        while end < rest.len() {
            let c = rest.as_bytes()[end];
            if c.is_ascii_alphanumeric() || c == b'_' || (c == b':' && rest[end..].starts_with("::")) {
                end += if c == b':' { 2 } else { 1 };
            } else {
                break;
            }
        }
        let path = rest[..end].trim_end_matches("::").trim_start_matches('$').to_owned();
        if rest[..end].ends_with("::") && rest.as_bytes().get(end) == Some(&b'{') {
            let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
            for item in rest[end + 1..close].split(',') {
                let item = item.split(" as ").next().unwrap().trim();
                let item = item.split("::{").next().unwrap().trim();
                if item.is_empty() || item == "self" {
                    paths.push(path.clone());
                } else {
                    paths.push(format!("{path}::{item}"));
                }
            }
            i += close;
        } else {
            paths.push(path);
            i += end;
        }
    }
    paths
}

fn resolve(modules: &BTreeMap<Vec<String>, String>, here: &[String], path: &str) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = match segments[0] {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here.to_vec(),
        _ => return None,
    };
    if segments[0] == "crate" || segments[0] == "self" {
        segments.remove(0);
    }
    while segments.first() == Some(&"super") {
        base.pop();
        segments.remove(0);
    }
    base.extend(segments.iter().map(|s| (*s).to_owned()));
    (1..=base.len()).rev().find_map(|n| modules.get(&base[..n])).cloned()
}

fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &root, &mut files);
    let files: Vec<String> = files.iter().map(|f| f.to_string_lossy().replace('\\', "/")).collect();
    let modules: BTreeMap<Vec<String>, String> = files.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut edges = BTreeMap::new();
    let mut routes = BTreeSet::new();
    for file in &files {
        // a file that is a test module of its own (`store/tests.rs`)
        if file.ends_with("/tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let text = without_tests(&text);
        let here = module_of(file);
        let mut imports = BTreeSet::new();
        for path in crate_paths(text) {
            if let Some(target) = resolve(&modules, &here, &path)
                && target != *file
            {
                imports.insert(target);
            }
        }
        if imports.contains("state.rs") && !ASSEMBLY.contains(&file.as_str()) {
            routes.insert(file.clone());
        }
        edges.insert(file.clone(), imports);
    }
    Graph { modules, edges, routes }
}

/// The resource a file belongs to, if any.
fn resource(file: &str) -> Option<&str> {
    let first = file.split('/').next()?;
    RESOURCES.iter().copied().find(|r| *r == first && file.contains('/'))
}

fn is_service(file: &str) -> bool {
    file.ends_with("service.rs")
}

/// The strongly connected components of more than one file (Tarjan's algorithm, iteratively).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let nodes: Vec<&String> = edges.keys().collect();
    let index_of: BTreeMap<&String, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let successors: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| edges[*n].iter().filter_map(|t| index_of.get(t).copied()).collect())
        .collect();
    let (mut index, mut low, mut on_stack) = (
        vec![usize::MAX; nodes.len()],
        vec![0; nodes.len()],
        vec![false; nodes.len()],
    );
    let (mut stack, mut next, mut found) = (Vec::new(), 0, Vec::new());
    for start in 0..nodes.len() {
        if index[start] != usize::MAX {
            continue;
        }
        let mut work = vec![(start, 0usize)];
        while let Some((v, child)) = work.pop() {
            if child == 0 {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = successors[v].get(child) {
                work.push((v, child + 1));
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = BTreeSet::new();
                loop {
                    let w = stack.pop().unwrap();
                    on_stack[w] = false;
                    component.insert(nodes[w].clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    found.push(component);
                }
            }
        }
    }
    found
}

#[test]
fn the_source_is_read_as_a_graph_of_its_files() {
    let graph = graph();
    assert!(graph.modules.len() > 40, "{:?}", graph.modules.keys());
    assert!(graph.edges["flux/routes.rs"].contains("flux/service.rs"));
    assert!(graph.edges["flux/service.rs"].contains("store/mod.rs"));
    assert!(
        graph.edges["store/sql.rs"].contains("lifecycle.rs"),
        "$crate:: paths inside macros count"
    );
    assert!(graph.routes.contains("clusters/routes.rs") && !graph.routes.contains("clusters/service.rs"));
    let found = cycles(&BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned(), "c".to_owned()])),
        ("c".to_owned(), BTreeSet::new()),
    ]));
    assert_eq!(found, vec![BTreeSet::from(["a".to_owned(), "b".to_owned()])]);
}

#[test]
fn no_import_cycle_but_the_deliberate_pair() {
    let graph = graph();
    let allowed = BTreeSet::from(DELIBERATE_PAIR.map(str::to_owned));
    let cycles: Vec<_> = cycles(&graph.edges).into_iter().filter(|c| *c != allowed).collect();
    assert!(cycles.is_empty(), "import cycles between files of api/src: {cycles:?}");
}

#[test]
fn no_resource_imports_another_resources_routes_and_no_lower_layer_imports_routes() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (file, imports) in &graph.edges {
        if ASSEMBLY.contains(&file.as_str()) {
            continue;
        }
        for target in imports.iter().filter(|t| graph.routes.contains(*t)) {
            let same_resource = resource(file).is_some() && resource(file) == resource(target);
            let from_routes = graph.routes.contains(file);
            if !(same_resource && from_routes) {
                wrong.push(format!("{file} imports the routes {target}"));
            }
        }
        if is_service(file) && imports.contains("state.rs") {
            wrong.push(format!("the service {file} imports the app's state"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_store_and_the_arm_kit_sit_below_every_resource() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (file, imports) in &graph.edges {
        let kit = file.starts_with("arm/") || file == "error.rs" || file == "config.rs";
        let store = file.starts_with("store/");
        if !(kit || store) {
            continue;
        }
        for target in imports {
            let upward = graph.routes.contains(target)
                || is_service(target)
                || ASSEMBLY.contains(&target.as_str())
                || (kit && (resource(target).is_some() || target.starts_with("store/") || target == "model.rs"));
            if upward {
                wrong.push(format!("{file} imports {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
