//! What `kustomize build` would read for a kustomization path, checked without kustomize, for the `dir` target
//! (where no Flux runs to say whether a build succeeds).
//!
//! The check follows each `kustomization.yaml` (or `.yml`, or `Kustomization`) as kustomize does: every local
//! resource (a file of Kubernetes objects, or a directory holding a kustomization of its own, recursively), base,
//! component, CRD file, patch file, generator file and transformer configuration must exist and parse; the file
//! itself may only hold the fields kustomize knows (kustomize refuses others). A path without a kustomization file
//! is treated as Flux's kustomize-controller treats it: it generates one listing every `.yaml`/`.yml` file below it
//! (each must decode as Kubernetes objects) and every subdirectory holding a kustomization file (whose tree it does
//! not descend further).
//!
//! Three outcomes, never a guess: `Built` when every reference checks out, `Broken` (what kustomize would fail on,
//! naming the kustomization file and the reference), `Unverified` when something is out of reach: a remote base,
//! a limit of this check. A broken local reference wins over an unverifiable remote one: the build fails either
//! way. It reads the repository through an index of one commit's tree ([`Snapshot`]) and a reader of blobs
//! ([`Blobs`]), so a hostile repository costs bounded work: files, bytes, nesting, symbolic links are all capped.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The names kustomize recognises for a kustomization file, in its order.
pub const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Bounds of one check, so that a repository cannot make the agent read or recurse without end.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file read, in bytes.
    pub file_bytes: u64,
    /// Bytes read in all for one kustomization path.
    pub total_bytes: u64,
    /// Files read for one kustomization path.
    pub files: usize,
    /// Kustomizations nested in one another (an overlay of an overlay of ...).
    pub depth: usize,
    /// Symbolic links followed to resolve one path.
    pub link_hops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            file_bytes: 8 << 20,
            total_bytes: 64 << 20,
            files: 10_000,
            depth: 32,
            link_hops: 16,
        }
    }
}

/// What one kustomization path's build would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every local reference exists and parses; counts the files read.
    Built { files: usize },
    /// What kustomize would fail on.
    Broken(String),
    /// What this check cannot verify (remote references, its own limits), with the reason.
    Unverified(String),
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Link,
    /// A Git submodule: Flux does not fetch them for Azure's Git sources, so it is an empty directory there.
    Submodule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub oid: String,
    pub size: u64,
}

/// Every path of one commit's tree (directories included), as `git ls-tree -r -t -l -z` lists them.
#[derive(Debug, Default)]
pub struct Snapshot {
    entries: BTreeMap<String, Entry>,
}

impl Snapshot {
    /// Reads the output of `git ls-tree -r -t -l -z --full-tree COMMIT`: `mode type oid size\tpath\0`.
    pub fn from_ls_tree(output: &[u8]) -> anyhow::Result<Self> {
        let mut entries = BTreeMap::new();
        for record in output.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let text = String::from_utf8_lossy(record);
            let (head, path) = text
                .split_once('\t')
                .ok_or_else(|| anyhow::anyhow!("unexpected ls-tree line '{text}'"))?;
            let fields: Vec<&str> = head.split_whitespace().collect();
            let [mode, _, oid, size] = fields[..] else {
                anyhow::bail!("unexpected ls-tree line '{text}'");
            };
            let kind = match mode {
                "040000" => Kind::Dir,
                "120000" => Kind::Link,
                "160000" => Kind::Submodule,
                _ => Kind::File,
            };
            let entry = Entry {
                kind,
                oid: oid.to_owned(),
                size: size.parse().unwrap_or(0),
            };
            entries.insert(path.to_owned(), entry);
        }
        Ok(Self { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, path: &str) -> Option<&Entry> {
        if path.is_empty() {
            return Some(&ROOT);
        }
        self.entries.get(path)
    }

    /// The entries directly in `dir`, by name.
    fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let length = prefix.len();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(path, _)| path.starts_with(&prefix))
            .filter_map(move |(path, entry)| {
                let name = &path[length..];
                (!name.contains('/')).then_some((name, entry))
            })
    }
}

static ROOT: Entry = Entry {
    kind: Kind::Dir,
    oid: String::new(),
    size: 0,
};

/// Reads blobs of the snapshot's commit.
pub trait Blobs {
    fn read(&mut self, oid: &str) -> anyhow::Result<Vec<u8>>;
}

/// Checks the build of `path` (relative to the repository root, as a Flux Kustomization's `spec.path`).
pub fn check(snapshot: &Snapshot, blobs: &mut dyn Blobs, path: &str, limits: Limits) -> Outcome {
    let mut walk = Walk {
        snapshot,
        blobs,
        limits,
        read_bytes: 0,
        read_files: 0,
        stack: Vec::new(),
        built: BTreeSet::new(),
        unverified: None,
    };
    let result = walk.top(path);
    match result {
        Err(Stop::Broken(message)) => Outcome::Broken(message),
        Err(Stop::Limit(message)) => Outcome::Unverified(message),
        Ok(()) => match walk.unverified {
            Some(message) => Outcome::Unverified(message),
            None => Outcome::Built { files: walk.read_files },
        },
    }
}

/// Why a walk stops: a build failure, or one of this check's own limits.
enum Stop {
    Broken(String),
    Limit(String),
}

type Step<T = ()> = Result<T, Stop>;

fn broken<T>(message: impl Into<String>) -> Step<T> {
    Err(Stop::Broken(message.into()))
}

/// A `kustomization.yaml`, with every field kustomize knows (kustomize refuses a file with any other); the fields
/// that name files are typed, the rest kept as they are.
#[derive(Debug, Default, Deserialize)]
#[allow(dead_code)] // fields that name no file are read by nothing but `deny_unknown_fields`
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KustomizationFile {
    api_version: Option<Value>,
    kind: Option<String>,
    metadata: Option<Value>,
    openapi: Option<BTreeMap<String, String>>,
    name_prefix: Option<Value>,
    name_suffix: Option<Value>,
    namespace: Option<Value>,
    common_labels: Option<Value>,
    labels: Option<Value>,
    common_annotations: Option<Value>,
    patches_strategic_merge: Option<Vec<String>>,
    patches_json6902: Option<Vec<PatchEntry>>,
    patches: Option<Vec<PatchEntry>>,
    images: Option<Value>,
    image_tags: Option<Value>,
    replacements: Option<Vec<ReplacementEntry>>,
    replicas: Option<Value>,
    vars: Option<Value>,
    sort_options: Option<Value>,
    resources: Option<Vec<String>>,
    components: Option<Vec<String>>,
    crds: Option<Vec<String>>,
    bases: Option<Vec<String>>,
    config_map_generator: Option<Vec<GeneratorEntry>>,
    secret_generator: Option<Vec<GeneratorEntry>>,
    helm_globals: Option<Value>,
    helm_charts: Option<Vec<Value>>,
    helm_chart_inflation_generator: Option<Vec<Value>>,
    generator_options: Option<Value>,
    configurations: Option<Vec<String>>,
    generators: Option<Vec<String>>,
    transformers: Option<Vec<String>>,
    validators: Option<Vec<String>>,
    inventory: Option<Value>,
    build_metadata: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct PatchEntry {
    path: Option<String>,
    patch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ReplacementEntry {
    path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct GeneratorEntry {
    name: Option<String>,
    files: Option<Vec<String>>,
    envs: Option<Vec<String>>,
    env: Option<String>,
}

/// What a directory reference must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A resource, base, generator or transformer directory: a `Kustomization`.
    Kustomization,
    /// A `components` entry: a `Component`.
    Component,
}

struct Walk<'a> {
    snapshot: &'a Snapshot,
    blobs: &'a mut dyn Blobs,
    limits: Limits,
    read_bytes: u64,
    read_files: usize,
    /// The kustomization directories being built, outermost first: a cycle's witness.
    stack: Vec<String>,
    /// Directories already built whole (a base shared by two overlays is checked once).
    built: BTreeSet<String>,
    /// The first reference out of reach, reported if nothing is broken.
    unverified: Option<String>,
}

impl Walk<'_> {
    fn top(&mut self, path: &str) -> Step {
        let dir = match normalise("", path) {
            Some(dir) => dir,
            None => return broken(format!("path '{path}' is outside the repository")),
        };
        let Some((dir, entry)) = self.resolve(&dir)? else {
            return broken(format!("path '{path}' does not exist"));
        };
        if entry.kind != Kind::Dir && entry.kind != Kind::Submodule {
            return broken(format!("path '{path}' is not a directory"));
        }
        match self.kustomization_file(&dir)? {
            Some(file) => self.build(&dir, &file, Expect::Kustomization),
            None => self.generated(&dir, 0),
        }
    }

    /// Flux's generated kustomization: every YAML file below `dir` as a resource (each must decode as Kubernetes
    /// objects), and every subdirectory holding a kustomization file, which is built and not descended into.
    fn generated(&mut self, dir: &str, depth: usize) -> Step {
        // the walk recurses per directory level, which the repository chooses: bounded like nesting
        if depth > self.limits.depth {
            return Err(Stop::Limit(format!(
                "{dir}: directories nest more than {} deep; the dir target checks no deeper",
                self.limits.depth
            )));
        }
        let children: Vec<(String, Entry)> = self
            .snapshot
            .children(dir)
            .map(|(name, entry)| (join(dir, name), entry.clone()))
            .collect();
        for (path, entry) in children {
            match entry.kind {
                Kind::Dir => match self.kustomization_file(&path)? {
                    Some(file) => self.nested(&path, &file, Expect::Kustomization)?,
                    None => self.generated(&path, depth + 1)?,
                },
                // Flux's walk neither follows linked directories nor finds anything in an unfetched submodule
                Kind::Submodule => {}
                Kind::File | Kind::Link if path.ends_with(".yaml") || path.ends_with(".yml") => {
                    let Some((resolved, target)) = self.resolve(&path)? else {
                        return broken(format!("{path}: a symbolic link to nothing"));
                    };
                    if target.kind != Kind::File {
                        continue;
                    }
                    let text = self.read(&resolved, &target)?;
                    if let Some(problem) = objects_problem(&text) {
                        return broken(format!("failed to decode Kubernetes YAML from {path}: {problem}"));
                    }
                }
                Kind::File | Kind::Link => {}
            }
        }
        Ok(())
    }

    /// The kustomization file of `dir`, if it has one; two or more is kustomize's error.
    fn kustomization_file(&mut self, dir: &str) -> Step<Option<String>> {
        let mut found = Vec::new();
        for name in KUSTOMIZATION_FILES {
            let path = join(dir, name);
            if let Some((_, entry)) = self.resolve(&path)?
                && entry.kind == Kind::File
            {
                found.push(path);
            }
        }
        if found.len() > 1 {
            return broken(format!(
                "found multiple kustomization files under '{}': {}",
                display_dir(dir),
                found.join(", ")
            ));
        }
        Ok(found.pop())
    }

    /// Builds the kustomization `file` of `dir`.
    fn build(&mut self, dir: &str, file: &str, expect: Expect) -> Step {
        if self.built.contains(dir) {
            return Ok(());
        }
        if self.stack.len() >= self.limits.depth {
            return Err(Stop::Limit(format!(
                "{file}: kustomizations nest more than {} deep; the dir target checks no deeper",
                self.limits.depth
            )));
        }
        let Some((resolved, entry)) = self.resolve(file)? else {
            return broken(format!("{file} does not exist"));
        };
        let text = self.read(&resolved, &entry)?;
        let k: KustomizationFile = if text.trim().is_empty() {
            KustomizationFile::default()
        } else {
            serde_yaml_ng::from_str::<Option<KustomizationFile>>(&text)
                .map_err(|err| Stop::Broken(format!("{file}: invalid Kustomization: {err}")))?
                .unwrap_or_default()
        };
        let kind = k.kind.clone().unwrap_or_else(|| "Kustomization".to_owned());
        match (kind.as_str(), expect) {
            ("Kustomization", Expect::Kustomization) | ("Component", Expect::Component) => {}
            ("Component", Expect::Kustomization) => {
                return broken(format!(
                    "{file}: expected kind != 'Component' for path '{}' (components belong under 'components')",
                    display_dir(dir)
                ));
            }
            ("Kustomization", Expect::Component) => {
                return broken(format!(
                    "{file}: expected kind 'Component' for path '{}' but got 'Kustomization'",
                    display_dir(dir)
                ));
            }
            (other, _) => {
                return broken(format!(
                    "{file}: kind should be Kustomization or Component, not '{other}'"
                ));
            }
        }
        self.stack.push(dir.to_owned());
        let result = self.fields(dir, file, &k);
        self.stack.pop();
        result?;
        self.built.insert(dir.to_owned());
        Ok(())
    }

    fn fields(&mut self, dir: &str, file: &str, k: &KustomizationFile) -> Step {
        if k.helm_charts.as_ref().is_some_and(|c| !c.is_empty())
            || k.helm_chart_inflation_generator.as_ref().is_some_and(|c| !c.is_empty())
        {
            return broken(format!(
                "{file}: helmCharts need kustomize's --enable-helm, which Flux's kustomize-controller does not set \
                 (use a HelmRelease)"
            ));
        }
        for (field, list) in [("resource", &k.resources), ("base", &k.bases)] {
            for reference in list.iter().flatten() {
                self.resource(dir, file, field, reference)?;
            }
        }
        for reference in k.components.iter().flatten() {
            self.directory(dir, file, "component", reference, Expect::Component)?;
        }
        for reference in k.crds.iter().flatten() {
            self.yaml_file(dir, file, "crd", reference)?;
        }
        for (field, patches) in [("patch", &k.patches), ("patchesJson6902 patch", &k.patches_json6902)] {
            for patch in patches.iter().flatten() {
                if let Some(path) = &patch.path {
                    self.yaml_file(dir, file, field, path)?;
                }
                if let Some(inline) = &patch.patch
                    && let Some(problem) = yaml_problem(inline)
                {
                    return broken(format!("{file}: inline {field}: {problem}"));
                }
            }
        }
        for patch in k.patches_strategic_merge.iter().flatten() {
            self.strategic_merge_patch(dir, file, patch)?;
        }
        for replacement in k.replacements.iter().flatten() {
            if let Some(path) = &replacement.path {
                self.yaml_file(dir, file, "replacement", path)?;
            }
        }
        for (kind, generators) in [
            ("configMapGenerator", &k.config_map_generator),
            ("secretGenerator", &k.secret_generator),
        ] {
            for generator in generators.iter().flatten() {
                let field = format!("{kind} '{}'", generator.name.as_deref().unwrap_or_default());
                for source in generator.files.iter().flatten() {
                    // `key=path` or `path`
                    let path = source.split_once('=').map_or(source.as_str(), |(_, path)| path);
                    self.any_file(dir, file, &format!("{field} file"), path)?;
                }
                for path in generator.envs.iter().flatten().chain(generator.env.iter()) {
                    self.any_file(dir, file, &format!("{field} env file"), path)?;
                }
            }
        }
        for reference in k.configurations.iter().flatten() {
            self.yaml_file(dir, file, "configuration", reference)?;
        }
        for (field, list) in [
            ("generator", &k.generators),
            ("transformer", &k.transformers),
            ("validator", &k.validators),
        ] {
            for reference in list.iter().flatten() {
                self.plugin(dir, file, field, reference)?;
            }
        }
        if let Some(path) = k.openapi.as_ref().and_then(|o| o.get("path")) {
            self.yaml_file(dir, file, "openapi", path)?;
        }
        Ok(())
    }

    /// A `resources` (or `bases`) entry: a file of Kubernetes objects, a kustomization directory, or remote.
    fn resource(&mut self, dir: &str, file: &str, field: &str, reference: &str) -> Step {
        let Some((path, entry)) = self.local(dir, file, field, reference)? else {
            return Ok(());
        };
        match entry.kind {
            Kind::Dir | Kind::Submodule => self.directory_at(file, field, reference, &path, Expect::Kustomization),
            _ => {
                let text = self.read(&path, &entry)?;
                match objects_problem(&text) {
                    Some(problem) => broken(format!("{file}: {field} '{reference}': {path}: {problem}")),
                    None => Ok(()),
                }
            }
        }
    }

    /// A reference that must be a kustomization directory (`components`).
    fn directory(&mut self, dir: &str, file: &str, field: &str, reference: &str, expect: Expect) -> Step {
        let Some((path, entry)) = self.local(dir, file, field, reference)? else {
            return Ok(());
        };
        if entry.kind == Kind::File {
            return broken(format!("{file}: {field} '{reference}' is a file, not a directory"));
        }
        self.directory_at(file, field, reference, &path, expect)
    }

    fn directory_at(&mut self, file: &str, field: &str, reference: &str, path: &str, expect: Expect) -> Step {
        match self.kustomization_file(path)? {
            Some(inner) => self.nested(path, &inner, expect).map_err(|stop| match stop {
                // the innermost file names what is wrong; a cycle names the way round
                Stop::Broken(message) if message.starts_with("cycle") => {
                    Stop::Broken(format!("{file}: {field} '{reference}': {message}"))
                }
                other => other,
            }),
            None => {
                let submodule = self.snapshot.get(path).is_some_and(|e| e.kind == Kind::Submodule);
                broken(format!(
                    "{file}: {field} '{reference}': unable to find one of 'kustomization.yaml', 'kustomization.yml' \
                     or 'Kustomization' in directory '{}'{}",
                    display_dir(path),
                    if submodule {
                        " (a Git submodule, which Flux does not fetch)"
                    } else {
                        ""
                    }
                ))
            }
        }
    }

    /// Builds the kustomization directory `path` (its file `inner`), refusing a cycle.
    fn nested(&mut self, path: &str, inner: &str, expect: Expect) -> Step {
        if let Some(start) = self.stack.iter().position(|d| d == path) {
            let mut way: Vec<String> = self.stack[start..].iter().map(|d| display_dir(d)).collect();
            way.push(display_dir(path));
            return broken(format!("cycle detected: {}", way.join(" → ")));
        }
        self.build(path, inner, expect)
    }

    /// A patchesStrategicMerge entry: a file if one exists there (kustomize's rule), otherwise an inline patch.
    fn strategic_merge_patch(&mut self, dir: &str, file: &str, patch: &str) -> Step {
        let field = "patchesStrategicMerge patch";
        if !patch.contains('\n')
            && let Some(path) = normalise(dir, patch)
            && let Some((resolved, entry)) = self.resolve(&path)?
            && entry.kind == Kind::File
        {
            let text = self.read(&resolved, &entry)?;
            return match yaml_problem(&text) {
                Some(problem) => broken(format!("{file}: {field} '{patch}': {resolved}: {problem}")),
                None => Ok(()),
            };
        }
        match serde_yaml_ng::from_str::<Value>(patch) {
            Ok(Value::Mapping(_)) => Ok(()),
            _ if patch.contains('\n') => broken(format!("{file}: inline {field} is not a YAML object")),
            _ => broken(format!("{file}: {field} '{patch}' does not exist")),
        }
    }

    /// A generator, transformer or validator entry: inline YAML, a file of plugin configurations, a kustomization
    /// directory, or remote.
    fn plugin(&mut self, dir: &str, file: &str, field: &str, reference: &str) -> Step {
        if reference.contains('\n') {
            return match yaml_problem(reference) {
                Some(problem) => broken(format!("{file}: inline {field}: {problem}")),
                None => Ok(()),
            };
        }
        let Some((path, entry)) = self.local(dir, file, field, reference)? else {
            return Ok(());
        };
        match entry.kind {
            Kind::Dir | Kind::Submodule => self.directory_at(file, field, reference, &path, Expect::Kustomization),
            _ => {
                let text = self.read(&path, &entry)?;
                match yaml_problem(&text) {
                    Some(problem) => broken(format!("{file}: {field} '{reference}': {path}: {problem}")),
                    None => Ok(()),
                }
            }
        }
    }

    /// A file that must exist and hold valid YAML (or JSON, which is YAML).
    fn yaml_file(&mut self, dir: &str, file: &str, field: &str, reference: &str) -> Step {
        let Some((path, entry)) = self.local(dir, file, field, reference)? else {
            return Ok(());
        };
        if entry.kind != Kind::File {
            return broken(format!("{file}: {field} '{reference}' is a directory, not a file"));
        }
        let text = self.read(&path, &entry)?;
        match yaml_problem(&text) {
            Some(problem) => broken(format!("{file}: {field} '{reference}': {path}: {problem}")),
            None => Ok(()),
        }
    }

    /// A file that must exist, whatever it holds (a generator's data).
    fn any_file(&mut self, dir: &str, file: &str, field: &str, reference: &str) -> Step {
        let Some((_, entry)) = self.local(dir, file, field, reference)? else {
            return Ok(());
        };
        if entry.kind != Kind::File {
            return broken(format!("{file}: {field} '{reference}' is a directory, not a file"));
        }
        Ok(())
    }

    /// Resolves a reference of the kustomization `file` in `dir` to an existing local entry; `None` for a remote
    /// reference (recorded as unverifiable); a missing one is broken.
    fn local(&mut self, dir: &str, file: &str, field: &str, reference: &str) -> Step<Option<(String, Entry)>> {
        if is_remote(reference) {
            self.unverifiable(file, field, reference);
            return Ok(None);
        }
        let Some(path) = normalise(dir, reference) else {
            return broken(format!("{file}: {field} '{reference}' is outside the repository"));
        };
        match self.resolve(&path)? {
            Some(found) => Ok(Some(found)),
            None if looks_like_a_host(reference) => {
                self.unverifiable(file, field, reference);
                Ok(None)
            }
            None => broken(format!("{file}: {field} '{reference}' does not exist")),
        }
    }

    fn unverifiable(&mut self, file: &str, field: &str, reference: &str) {
        self.unverified.get_or_insert_with(|| {
            format!("{file}: {field} '{reference}' is remote; the dir target does not fetch remote references")
        });
    }

    /// Follows symbolic links along `path`, component by component, within the repository.
    fn resolve(&mut self, path: &str) -> Step<Option<(String, Entry)>> {
        let mut hops = 0;
        let mut pending: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        pending.reverse();
        let mut current = String::new();
        while let Some(segment) = pending.pop() {
            let next = join(&current, &segment);
            let Some(entry) = self.snapshot.get(&next).cloned() else {
                return Ok(None);
            };
            if entry.kind != Kind::Link {
                current = next;
                continue;
            }
            hops += 1;
            if hops > self.limits.link_hops {
                return broken(format!("{path}: too many levels of symbolic links"));
            }
            let target = self.read(&next, &entry)?;
            let Some(resolved) = normalise(&current, &target) else {
                return broken(format!(
                    "{path}: the symbolic link {next} points outside the repository"
                ));
            };
            for part in resolved.split('/').filter(|s| !s.is_empty()).rev() {
                pending.push(part.to_owned());
            }
            current.clear();
        }
        let entry = self.snapshot.get(&current).cloned();
        Ok(entry.map(|entry| (current, entry)))
    }

    /// Reads a file as text, within the limits.
    fn read(&mut self, path: &str, entry: &Entry) -> Step<String> {
        if entry.size > self.limits.file_bytes {
            return Err(Stop::Limit(format!(
                "{path} is larger than {} bytes; the dir target does not read files that large",
                self.limits.file_bytes
            )));
        }
        self.read_files += 1;
        self.read_bytes += entry.size;
        if self.read_files > self.limits.files {
            return Err(Stop::Limit(format!(
                "the build reads more than {} files; the dir target checks no more",
                self.limits.files
            )));
        }
        if self.read_bytes > self.limits.total_bytes {
            return Err(Stop::Limit(format!(
                "the build reads more than {} bytes; the dir target checks no more",
                self.limits.total_bytes
            )));
        }
        let bytes = self
            .blobs
            .read(&entry.oid)
            .map_err(|err| Stop::Limit(format!("reading {path}: {err:#}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `reference` resolved against `dir`, without `.` and `..`; `None` when it leaves the repository (Flux's
/// kustomize runs on a file system that refuses paths outside the source's root).
fn normalise(dir: &str, reference: &str) -> Option<String> {
    if reference.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    for segment in reference.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn display_dir(dir: &str) -> String {
    if dir.is_empty() { ".".to_owned() } else { dir.to_owned() }
}

/// A reference kustomize fetches rather than reads: a URL, or one of go-getter's and Git's forms.
fn is_remote(reference: &str) -> bool {
    reference.contains("://")
        || reference.starts_with("git::")
        || reference.starts_with("git@")
        || reference.starts_with("gh:")
        || reference.contains("?ref=")
}

/// `github.com/org/repo/path`: a remote reference if no local path has that name.
fn looks_like_a_host(reference: &str) -> bool {
    reference
        .split('/')
        .next()
        .is_some_and(|first| first.contains('.') && first != "." && first != ".." && reference.contains('/'))
        && !reference.ends_with(".yaml")
        && !reference.ends_with(".yml")
}

/// Why `text` is not valid YAML (every document of it), if it is not.
fn yaml_problem(text: &str) -> Option<String> {
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        if let Err(err) = Value::deserialize(document) {
            return Some(format!("invalid YAML: {err}"));
        }
    }
    None
}

/// Why `text` is not a stream of Kubernetes objects as kustomize reads resources, if it is not: each document
/// empty, or an object with `kind` and `metadata.name` (a `...List` needs no name), kustomize's own checks.
fn objects_problem(text: &str) -> Option<String> {
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(err) => return Some(format!("invalid YAML: {err}")),
        };
        let n = index + 1;
        let object = match value {
            Value::Null => continue,
            Value::Mapping(object) => object,
            _ => return Some(format!("missing Resource metadata (document {n} is not an object)")),
        };
        let field = |name: &str| object.get(name);
        if field("apiVersion").is_none() && field("kind").is_none() && field("metadata").is_none() {
            return Some(format!("missing Resource metadata (document {n})"));
        }
        let kind = field("kind").and_then(Value::as_str).unwrap_or_default();
        if kind.is_empty() {
            return Some(format!("missing kind in object (document {n})"));
        }
        let name = field("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !kind.ends_with("List") && name.is_empty() {
            return Some(format!("missing metadata.name in object (document {n}, kind {kind})"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_resolved_against_their_directory_and_kept_inside_the_repository() {
        assert_eq!(normalise("overlays/prod", "../../base").as_deref(), Some("base"));
        assert_eq!(
            normalise("overlays/prod", "./patch.yaml").as_deref(),
            Some("overlays/prod/patch.yaml")
        );
        assert_eq!(normalise("", "./apps/").as_deref(), Some("apps"));
        assert_eq!(normalise("apps", "../../etc/passwd"), None);
        assert_eq!(normalise("apps", "/etc/passwd"), None);
    }

    #[test]
    fn remote_references_are_told_from_local_ones() {
        for remote in [
            "https://github.com/org/repo//base?ref=v1",
            "git::https://example.com/repo.git//base",
            "git@github.com:org/repo.git//base",
            "ssh://git@github.com/org/repo//base",
            "https://raw.githubusercontent.com/org/repo/main/x.yaml",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in ["../base", "deploy.yaml", "./github.com", "config.d/app.yaml"] {
            assert!(!is_remote(local), "{local}");
        }
        assert!(looks_like_a_host("github.com/org/repo/base"));
        assert!(!looks_like_a_host("../base"));
        assert!(!looks_like_a_host("config.d/app.yaml"));
    }

    #[test]
    fn kubernetes_objects_need_a_kind_and_a_name_as_kustomize_requires() {
        assert_eq!(
            objects_problem("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"),
            None
        );
        assert_eq!(
            objects_problem("---\n---\napiVersion: v1\nkind: List\nitems: []\n"),
            None
        );
        assert!(
            objects_problem("replicas: 3\nimage: nginx\n")
                .unwrap()
                .contains("missing Resource metadata")
        );
        assert!(
            objects_problem("apiVersion: v1\nmetadata:\n  name: a\n")
                .unwrap()
                .contains("missing kind")
        );
        assert!(
            objects_problem("apiVersion: v1\nkind: ConfigMap\n")
                .unwrap()
                .contains("metadata.name")
        );
        assert!(objects_problem("kind: [unclosed\n").unwrap().contains("invalid YAML"));
        assert!(objects_problem("- a\n- b\n").unwrap().contains("not an object"));
    }

    #[test]
    fn a_yaml_bomb_is_refused_rather_than_expanded() {
        let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
        for (i, previous) in ('b'..='k').zip('a'..) {
            bomb.push_str(&format!(
                "{i}: &{i} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"
            ));
        }
        let started = std::time::Instant::now();
        assert!(yaml_problem(&bomb).is_some(), "a billion laughs must not parse");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// An in-memory repository (every path's object id is the path itself), for the limits' tests.
    struct Memory(BTreeMap<String, String>);

    impl Blobs for Memory {
        fn read(&mut self, oid: &str) -> anyhow::Result<Vec<u8>> {
            Ok(self.0.get(oid).cloned().unwrap_or_default().into_bytes())
        }
    }

    fn memory(files: &[(String, String)]) -> (Snapshot, Memory) {
        let mut listing = Vec::new();
        let mut dirs = BTreeSet::new();
        for (path, contents) in files {
            let mut dir = path.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                dirs.insert(parent.to_owned());
                dir = parent;
            }
            listing.extend(format!("100644 blob {path} {}\t{path}\0", contents.len()).into_bytes());
        }
        for dir in dirs {
            listing.extend(format!("040000 tree {dir} -\t{dir}\0").into_bytes());
        }
        let snapshot = Snapshot::from_ls_tree(&listing).unwrap();
        (snapshot, Memory(files.iter().cloned().collect()))
    }

    fn owned(files: &[(&str, &str)]) -> Vec<(String, String)> {
        files.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect()
    }

    #[test]
    fn nesting_past_the_limit_is_unverified_not_broken() {
        let mut files = Vec::new();
        for level in 0..40 {
            let dir = (0..=level).map(|l| format!("d{l}")).collect::<Vec<_>>().join("/");
            files.push((
                format!("{dir}/kustomization.yaml"),
                "resources: [d{next}]\n".replace("{next}", &(level + 1).to_string()),
            ));
        }
        let deepest = (0..=40).map(|l| format!("d{l}")).collect::<Vec<_>>().join("/");
        files.push((format!("{deepest}/kustomization.yaml"), "resources: []\n".to_owned()));
        let (snapshot, mut blobs) = memory(&files);
        match check(&snapshot, &mut blobs, "d0", Limits::default()) {
            Outcome::Unverified(reason) => assert!(reason.contains("nest more than 32"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let generous = Limits {
            depth: 64,
            ..Limits::default()
        };
        assert!(matches!(
            check(&snapshot, &mut blobs, "d0", generous),
            Outcome::Built { .. }
        ));
    }

    #[test]
    fn a_directory_tree_deeper_than_the_limit_is_unverified_not_a_stack_overflow() {
        let deep = (0..300).map(|l| format!("d{l}")).collect::<Vec<_>>().join("/");
        let (snapshot, mut blobs) = memory(&[(format!("{deep}/cm.yaml"), CM.to_owned())]);
        match check(&snapshot, &mut blobs, "d0", Limits::default()) {
            Outcome::Unverified(reason) => assert!(reason.contains("directories nest more than 32"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let shallow = (0..10).map(|l| format!("d{l}")).collect::<Vec<_>>().join("/");
        let (snapshot, mut blobs) = memory(&[(format!("{shallow}/cm.yaml"), CM.to_owned())]);
        assert!(matches!(
            check(&snapshot, &mut blobs, "", Limits::default()),
            Outcome::Built { files: 1 }
        ));
    }

    #[test]
    fn files_past_the_size_count_or_byte_limits_are_unverified_naming_the_limit() {
        let big = format!("{CM}data:\n  blob: {}\n", "x".repeat(2000));
        let files = owned(&[
            ("app/kustomization.yaml", "resources: [a.yaml, b.yaml, c.yaml]\n"),
            ("app/a.yaml", CM),
            ("app/b.yaml", CM),
            ("app/c.yaml", &big),
        ]);
        let (snapshot, mut blobs) = memory(&files);
        assert!(matches!(
            check(&snapshot, &mut blobs, "app", Limits::default()),
            Outcome::Built { files: 4 }
        ));
        let small_files = Limits {
            file_bytes: 1000,
            ..Limits::default()
        };
        match check(&snapshot, &mut blobs, "app", small_files) {
            Outcome::Unverified(reason) => {
                assert!(reason.starts_with("app/c.yaml is larger than 1000 bytes"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let few_files = Limits {
            files: 3,
            ..Limits::default()
        };
        match check(&snapshot, &mut blobs, "app", few_files) {
            Outcome::Unverified(reason) => assert!(reason.contains("more than 3 files"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let few_bytes = Limits {
            total_bytes: 500,
            ..Limits::default()
        };
        match check(&snapshot, &mut blobs, "app", few_bytes) {
            Outcome::Unverified(reason) => assert!(reason.contains("more than 500 bytes"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n";

    use crate::testing::{CONFIG_MAP, Repository};

    /// The outcome of each path at the repository's head, through the real mirror.
    async fn outcomes(repository: &Repository, paths: &[&str]) -> Vec<Outcome> {
        let mirror = repository.mirror().await;
        let head = crate::testing::git(&repository.work, &["rev-parse", "HEAD"]);
        mirror
            .check_kustomizations(&head, paths.iter().map(|p| p.to_string()).collect())
            .await
            .unwrap()
    }

    async fn outcome(repository: &Repository, path: &str) -> Outcome {
        outcomes(repository, &[path]).await.remove(0)
    }

    fn broken_message(outcome: Outcome) -> String {
        match outcome {
            Outcome::Broken(message) => message,
            other => panic!("expected a broken build, got {other:?}"),
        }
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n";

    #[tokio::test]
    async fn an_overlay_missing_its_base_is_non_compliant_naming_the_file() {
        let repository = Repository::new(&[
            ("base/kustomization.yaml", "resources:\n- deployment.yaml\n"),
            ("base/deployment.yaml", DEPLOYMENT),
            (
                "overlays/prod/kustomization.yaml",
                "resources:\n- ../../base\n- ../base/missing.yaml\n",
            ),
        ]);
        assert_eq!(
            broken_message(outcome(&repository, "./overlays/prod").await),
            "overlays/prod/kustomization.yaml: resource '../base/missing.yaml' does not exist"
        );
    }

    #[tokio::test]
    async fn an_overlay_using_every_kind_of_local_reference_builds() {
        let repository = Repository::new(&[
            (
                "base/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- deployment.yaml\n\
                 configMapGenerator:\n- name: settings\n  files:\n  - config.properties\n  - renamed=raw/data.bin\n\
                 secretGenerator:\n- name: creds\n  envs:\n  - creds.env\n  env: more.env\n",
            ),
            ("base/deployment.yaml", DEPLOYMENT),
            ("base/config.properties", "a=b\n"),
            ("base/raw/data.bin", "\u{1}\u{2}not yaml: [\n"),
            ("base/creds.env", "USER=me\n"),
            ("base/more.env", "PASS=x\n"),
            (
                "components/monitoring/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources:\n- monitor.yaml\n",
            ),
            ("components/monitoring/monitor.yaml", CONFIG_MAP),
            (
                "crds/widget.yaml",
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\n",
            ),
            (
                "overlays/prod/kustomization.yaml",
                "namespace: prod\nnamePrefix: prod-\nresources:\n- ../../base\nbases: []\ncomponents:\n- ../../components/monitoring\n\
                 crds:\n- ../../crds/widget.yaml\npatches:\n- path: replicas.yaml\n- patch: |-\n    - op: add\n      path: /metadata/labels/x\n      value: y\n  target:\n    kind: Deployment\n\
                 patchesStrategicMerge:\n- memory.yaml\n- |-\n  apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: web\n\
                 patchesJson6902:\n- target:\n    kind: Deployment\n    name: web\n  path: json-patch.yaml\n\
                 replacements:\n- path: replacement.yaml\nconfigurations:\n- transformer-config.yaml\n\
                 transformers:\n- labels.yaml\nopenapi:\n  path: schema.json\nimages:\n- name: nginx\n  newTag: \"1.27\"\n",
            ),
            (
                "overlays/prod/replicas.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n",
            ),
            (
                "overlays/prod/memory.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
            ),
            (
                "overlays/prod/json-patch.yaml",
                "- op: replace\n  path: /spec/replicas\n  value: 5\n",
            ),
            (
                "overlays/prod/replacement.yaml",
                "source:\n  kind: ConfigMap\n  name: settings\ntargets: []\n",
            ),
            (
                "overlays/prod/transformer-config.yaml",
                "namePrefix:\n- path: metadata/name\n",
            ),
            (
                "overlays/prod/labels.yaml",
                "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: labels\nlabels:\n  team: a\n",
            ),
            ("overlays/prod/schema.json", "{\"definitions\": {}}"),
        ]);
        match outcome(&repository, "overlays/prod").await {
            Outcome::Built { files } => assert!(files >= 13, "every reference was read: {files}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn each_kind_of_missing_reference_is_named_with_its_kustomization_file() {
        let cases = [
            ("components:\n- ../nowhere\n", "component '../nowhere' does not exist"),
            ("crds:\n- crd.yaml\n", "crd 'crd.yaml' does not exist"),
            ("patches:\n- path: patch.yaml\n", "patch 'patch.yaml' does not exist"),
            (
                "patchesStrategicMerge:\n- smp.yaml\n",
                "patchesStrategicMerge patch 'smp.yaml' does not exist",
            ),
            (
                "patchesJson6902:\n- path: ops.yaml\n  target: {kind: Deployment}\n",
                "patchesJson6902 patch 'ops.yaml' does not exist",
            ),
            (
                "configMapGenerator:\n- name: cm\n  files:\n  - key=gone.txt\n",
                "configMapGenerator 'cm' file 'gone.txt' does not exist",
            ),
            (
                "secretGenerator:\n- name: s\n  envs:\n  - gone.env\n",
                "secretGenerator 's' env file 'gone.env' does not exist",
            ),
            (
                "configurations:\n- conf.yaml\n",
                "configuration 'conf.yaml' does not exist",
            ),
            ("transformers:\n- t.yaml\n", "transformer 't.yaml' does not exist"),
            ("generators:\n- g.yaml\n", "generator 'g.yaml' does not exist"),
            ("replacements:\n- path: r.yaml\n", "replacement 'r.yaml' does not exist"),
            (
                "openapi:\n  path: schema.json\n",
                "openapi 'schema.json' does not exist",
            ),
            ("bases:\n- ../old-base\n", "base '../old-base' does not exist"),
        ];
        let files: Vec<(String, String)> = cases
            .iter()
            .enumerate()
            .map(|(i, (kustomization, _))| (format!("case{i}/kustomization.yaml"), kustomization.to_string()))
            .collect();
        let borrowed: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        let repository = Repository::new(&borrowed);
        let paths: Vec<String> = (0..cases.len()).map(|i| format!("case{i}")).collect();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        for (i, result) in outcomes(&repository, &paths).await.into_iter().enumerate() {
            assert_eq!(
                broken_message(result),
                format!("case{i}/kustomization.yaml: {}", cases[i].1)
            );
        }
    }

    #[tokio::test]
    async fn bad_yaml_in_a_referenced_file_is_broken_naming_the_file() {
        let repository = Repository::new(&[
            (
                "app/kustomization.yaml",
                "resources:\n- deployment.yaml\npatches:\n- path: patch.yaml\n",
            ),
            ("app/deployment.yaml", DEPLOYMENT),
            ("app/patch.yaml", "spec:\n  replicas: [3\n"),
            ("other/kustomization.yaml", "resources:\n- values.yaml\n"),
            ("other/values.yaml", "replicaCount: 3\nimage: nginx\n"),
            ("third/kustomization.yaml", "resources: [\n"),
        ]);
        let results = outcomes(&repository, &["app", "other", "third"]).await;
        let app = broken_message(results[0].clone());
        assert!(
            app.starts_with("app/kustomization.yaml: patch 'patch.yaml': app/patch.yaml: invalid YAML"),
            "{app}"
        );
        let other = broken_message(results[1].clone());
        assert!(
            other.starts_with(
                "other/kustomization.yaml: resource 'values.yaml': other/values.yaml: missing Resource metadata"
            ),
            "{other}"
        );
        let third = broken_message(results[2].clone());
        assert!(
            third.starts_with("third/kustomization.yaml: invalid Kustomization"),
            "{third}"
        );
    }

    #[tokio::test]
    async fn a_base_broken_inside_names_the_bases_own_file() {
        let repository = Repository::new(&[
            ("base/kustomization.yaml", "resources:\n- service.yaml\n"),
            ("overlays/dev/kustomization.yaml", "resources:\n- ../../base\n"),
        ]);
        assert_eq!(
            broken_message(outcome(&repository, "overlays/dev").await),
            "base/kustomization.yaml: resource 'service.yaml' does not exist"
        );
    }

    #[tokio::test]
    async fn remote_references_are_unknown_never_built_and_local_breakage_still_wins() {
        let repository = Repository::new(&[
            (
                "remote/kustomization.yaml",
                "resources:\n- https://github.com/org/repo//deploy?ref=v1.0.0\n- local.yaml\n",
            ),
            ("remote/local.yaml", CONFIG_MAP),
            (
                "hosted/kustomization.yaml",
                "resources:\n- github.com/org/repo/deploy\ncomponents:\n- git@github.com:org/repo.git//c\n",
            ),
            (
                "both/kustomization.yaml",
                "resources:\n- https://example.com/x.yaml\n- missing.yaml\n",
            ),
        ]);
        let results = outcomes(&repository, &["remote", "hosted", "both"]).await;
        assert_eq!(
            results[0],
            Outcome::Unverified(
                "remote/kustomization.yaml: resource 'https://github.com/org/repo//deploy?ref=v1.0.0' is remote; the \
                 dir target does not fetch remote references"
                    .into()
            )
        );
        assert!(matches!(&results[1], Outcome::Unverified(r) if r.contains("'github.com/org/repo/deploy' is remote")));
        assert_eq!(
            broken_message(results[2].clone()),
            "both/kustomization.yaml: resource 'missing.yaml' does not exist"
        );
    }

    #[tokio::test]
    async fn a_path_without_kustomization_yaml_is_built_as_flux_generates_it() {
        let repository = Repository::new(&[
            ("plain/ns.yaml", CONFIG_MAP),
            ("plain/deep/er/deploy.yml", DEPLOYMENT),
            ("plain/README.md", "# not YAML: [\n"),
            ("plain/overlay/kustomization.yaml", "resources:\n- ../ns.yaml\n"),
            ("docs/README.md", "nothing to apply\n"),
            ("mixed/app.yaml", DEPLOYMENT),
            ("mixed/chart/values.yaml", "replicaCount: 2\n"),
            ("nested/ok.yaml", CONFIG_MAP),
            ("nested/sub/kustomization.yaml", "resources:\n- gone.yaml\n"),
            ("nested/sub/also-not-read.yaml", "not: [valid\n"),
        ]);
        let results = outcomes(&repository, &["plain", "docs", "mixed", "nested", "./"]).await;
        assert!(matches!(results[0], Outcome::Built { .. }), "{:?}", results[0]);
        assert!(
            matches!(results[1], Outcome::Built { .. }),
            "an empty build applies nothing: {:?}",
            results[1]
        );
        assert_eq!(
            broken_message(results[2].clone()),
            "failed to decode Kubernetes YAML from mixed/chart/values.yaml: missing Resource metadata (document 1)"
        );
        assert_eq!(
            broken_message(results[3].clone()),
            "nested/sub/kustomization.yaml: resource 'gone.yaml' does not exist",
            "a subdirectory's own kustomization is built, and its other files not read"
        );
        assert!(
            matches!(results[4], Outcome::Broken(_)),
            "the root holds the broken ones: {:?}",
            results[4]
        );
    }

    #[tokio::test]
    async fn a_missing_or_file_path_is_named() {
        let repository = Repository::new(&[("apps/app.yaml", CONFIG_MAP)]);
        let results = outcomes(&repository, &["./nowhere", "apps/app.yaml", "../outside"]).await;
        assert_eq!(broken_message(results[0].clone()), "path './nowhere' does not exist");
        assert_eq!(
            broken_message(results[1].clone()),
            "path 'apps/app.yaml' is not a directory"
        );
        assert_eq!(
            broken_message(results[2].clone()),
            "path '../outside' is outside the repository"
        );
    }

    #[tokio::test]
    async fn cycles_are_reported_not_followed_and_a_shared_base_is_no_cycle() {
        let repository = Repository::new(&[
            ("a/kustomization.yaml", "resources:\n- ../b\n"),
            ("b/kustomization.yaml", "resources:\n- ../a\n"),
            ("self/kustomization.yaml", "resources:\n- .\n"),
            ("base/kustomization.yaml", "resources:\n- cm.yaml\n"),
            ("base/cm.yaml", CONFIG_MAP),
            ("left/kustomization.yaml", "resources:\n- ../base\n"),
            ("right/kustomization.yaml", "resources:\n- ../base\n"),
            ("both/kustomization.yaml", "resources:\n- ../left\n- ../right\n"),
        ]);
        let results = outcomes(&repository, &["a", "self", "both"]).await;
        assert_eq!(
            broken_message(results[0].clone()),
            "b/kustomization.yaml: resource '../a': cycle detected: a → b → a"
        );
        assert_eq!(
            broken_message(results[1].clone()),
            "self/kustomization.yaml: resource '.': cycle detected: self → self"
        );
        assert!(matches!(results[2], Outcome::Built { .. }), "{:?}", results[2]);
    }

    #[tokio::test]
    async fn what_kustomize_refuses_in_a_kustomization_file_is_refused() {
        let repository = Repository::new(&[
            ("typo/kustomization.yaml", "resource:\n- cm.yaml\n"),
            ("typo/cm.yaml", CONFIG_MAP),
            ("two/kustomization.yaml", "resources: []\n"),
            ("two/kustomization.yml", "resources: []\n"),
            ("component/kustomization.yaml", "kind: Component\n"),
            (
                "uses-component-as-resource/kustomization.yaml",
                "resources:\n- ../component\n",
            ),
            (
                "uses-kustomization-as-component/kustomization.yaml",
                "components:\n- ../two-ok\n",
            ),
            ("two-ok/kustomization.yaml", "resources: []\n"),
            (
                "helm/kustomization.yaml",
                "helmCharts:\n- name: podinfo\n  repo: https://stefanprodan.github.io/podinfo\n",
            ),
            ("not-a-dir/kustomization.yaml", "resources:\n- ../plain\n"),
            ("plain/cm.yaml", CONFIG_MAP),
            ("wrong-kind/kustomization.yaml", "kind: Deployment\n"),
        ]);
        let paths = [
            "typo",
            "two",
            "uses-component-as-resource",
            "uses-kustomization-as-component",
            "helm",
            "not-a-dir",
            "wrong-kind",
        ];
        let results: Vec<String> = outcomes(&repository, &paths)
            .await
            .into_iter()
            .map(broken_message)
            .collect();
        assert!(
            results[0].contains("typo/kustomization.yaml: invalid Kustomization: unknown field `resource`"),
            "{}",
            results[0]
        );
        assert!(
            results[1].starts_with("found multiple kustomization files under 'two'"),
            "{}",
            results[1]
        );
        assert!(results[2].contains("expected kind != 'Component'"), "{}", results[2]);
        assert!(
            results[3].contains("expected kind 'Component' for path 'two-ok' but got 'Kustomization'"),
            "{}",
            results[3]
        );
        assert!(results[4].contains("--enable-helm"), "{}", results[4]);
        assert!(
            results[5].contains("unable to find one of 'kustomization.yaml'"),
            "{}",
            results[5]
        );
        assert!(results[5].contains("in directory 'plain'"), "{}", results[5]);
        assert!(
            results[6].contains("kind should be Kustomization or Component"),
            "{}",
            results[6]
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symbolic_links_are_followed_inside_the_repository_only() {
        let repository = Repository::new(&[
            ("shared/base/kustomization.yaml", "resources:\n- cm.yaml\n"),
            ("shared/base/cm.yaml", CONFIG_MAP),
            ("inside/kustomization.yaml", "resources:\n- base\n"),
            ("outside/kustomization.yaml", "resources:\n- secret.yaml\n"),
            ("looping/kustomization.yaml", "resources:\n- a.yaml\n"),
        ]);
        repository.link("inside/base", "../shared/base");
        repository.link("outside/secret.yaml", "../../../../etc/passwd");
        repository.link("looping/a.yaml", "b.yaml");
        repository.link("looping/b.yaml", "a.yaml");
        let results = outcomes(&repository, &["inside", "outside", "looping"]).await;
        assert!(matches!(results[0], Outcome::Built { .. }), "{:?}", results[0]);
        assert!(broken_message(results[1].clone()).contains("points outside the repository"));
        assert!(broken_message(results[2].clone()).contains("too many levels of symbolic links"));
    }
}
