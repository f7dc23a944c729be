//! The agent's RBAC as `deploy/agent/agent.yaml` grants it, applied to each request the way a real API server
//! authorises it: the request's attributes (verb, API group, resource, namespace, name, or a non-resource path) as
//! k8s.io/apiserver's `RequestInfoFactory` derives them, checked against the rules of every role bound to the
//! agent's service account, as the RBAC authorizer does. The fake API server refuses (403) what these rules do not
//! allow, so a request the kube target makes without RBAC for it fails the tests.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent/agent.yaml");

/// What one request asks of the authorizer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Resource {
        /// Every verb the request needs: a server-side apply is a `patch` that creates a missing object, which the
        /// API server authorises as `create` too.
        verbs: Vec<String>,
        group: String,
        /// `resource` or `resource/subresource`.
        resource: String,
        /// `None` for cluster-scoped objects and requests across all namespaces.
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Access {
    /// The request's attributes, as the API server derives them from its method, path, query and content type.
    pub fn of(method: &str, path: &str, query: Option<&str>, content_type: Option<&str>) -> Self {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let rest = match parts.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => Some(("", rest)),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => Some((*group, rest)),
            _ => None,
        };
        let Some((group, mut rest)) = rest else {
            return Access::NonResource {
                verb: method.to_ascii_lowercase(),
                path: path.to_owned(),
            };
        };
        let mut namespace = None;
        if rest[0] == "namespaces" && rest.len() > 1 {
            namespace = Some(rest[1].to_owned());
            // `namespaces/{name}/status` and `/finalize` are subresources of the namespace itself
            if rest.len() > 2 && !["status", "finalize"].contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
        let name = rest.get(1).map(|n| (*n).to_owned());
        let resource = match rest.get(2) {
            Some(subresource) => format!("{}/{subresource}", rest[0]),
            None => rest[0].to_owned(),
        };
        let watch = query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let verb = match (method, name.is_some()) {
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) if watch => "watch",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (other, _) => {
                return Access::NonResource {
                    verb: other.to_ascii_lowercase(),
                    path: path.to_owned(),
                };
            }
        };
        let mut verbs = vec![verb.to_owned()];
        if verb == "patch" && content_type == Some("application/apply-patch+yaml") {
            verbs.push("create".to_owned());
        }
        Access::Resource {
            verbs,
            group: group.to_owned(),
            resource,
            namespace,
            name,
        }
    }

    /// The (group or path, resource, verb) triples the request uses, to compare with what the rules grant.
    pub fn grants_used(&self) -> Vec<Grant> {
        match self {
            Access::Resource {
                verbs, group, resource, ..
            } => verbs
                .iter()
                .map(|verb| Grant::Resource(group.clone(), resource.clone(), verb.clone()))
                .collect(),
            Access::NonResource { verb, path } => vec![Grant::NonResource(path.clone(), verb.clone())],
        }
    }
}

/// One thing a rule grants, expanded: a verb on a resource of a group, or a verb on a non-resource path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    Resource(String, String, String),
    NonResource(String, String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|item| item == "*" || item == wanted)
}

impl Rule {
    /// k8s.io/kubernetes' `rbac.RuleAllows` for one verb.
    fn allows(&self, access: &Access, verb: &str) -> bool {
        if !has(&self.verbs, verb) {
            return false;
        }
        match access {
            Access::Resource {
                group, resource, name, ..
            } => {
                let resource_matches = self.resources.iter().any(|r| {
                    r == "*"
                        || r == resource
                        || resource
                            .split_once('/')
                            .is_some_and(|(res, sub)| *r == format!("*/{sub}") || *r == format!("{res}/*"))
                });
                has(&self.api_groups, group)
                    && resource_matches
                    && (self.resource_names.is_empty()
                        || name.as_ref().is_some_and(|n| self.resource_names.contains(n)))
            }
            Access::NonResource { path, .. } => self.non_resource_urls.iter().any(|url| {
                url == "*" || url == path || url.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
            }),
        }
    }

    fn grants(&self) -> Vec<Grant> {
        let mut grants = Vec::new();
        for verb in &self.verbs {
            for group in &self.api_groups {
                for resource in &self.resources {
                    grants.push(Grant::Resource(group.clone(), resource.clone(), verb.clone()));
                }
            }
            for path in &self.non_resource_urls {
                grants.push(Grant::NonResource(path.clone(), verb.clone()));
            }
        }
        grants
    }
}

/// The rules bound to the agent's service account: a ClusterRoleBinding's in every namespace, a RoleBinding's in
/// its own namespace only.
#[derive(Debug)]
pub struct Rbac {
    cluster_wide: Vec<Rule>,
    /// (namespace, rules)
    namespaced: Vec<(String, Vec<Rule>)>,
}

impl Rbac {
    /// The RBAC `deploy/agent/agent.yaml` gives the service account its Deployment runs as.
    pub fn of_manifest() -> &'static Rbac {
        static RBAC: OnceLock<Rbac> = OnceLock::new();
        RBAC.get_or_init(|| {
            let text = std::fs::read_to_string(MANIFEST).unwrap_or_else(|err| panic!("{MANIFEST}: {err}"));
            Rbac::parse(&text)
        })
    }

    pub fn parse(text: &str) -> Rbac {
        let documents: Vec<Value> = serde_yaml_ng::Deserializer::from_str(text)
            .map(|document| Value::deserialize(document).expect("the manifest is YAML"))
            .filter(|document| !document.is_null())
            .collect();
        let of_kind = |kind: &'static str| documents.iter().filter(move |d| d["kind"] == kind);
        let deployment = of_kind("Deployment").next().expect("the manifest runs the agent");
        let account = (
            deployment["metadata"]["namespace"].as_str().unwrap_or("default"),
            deployment["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default"),
        );
        let binds_agent = |binding: &Value| {
            binding["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == account.1
                        && s["namespace"].as_str().or(binding["metadata"]["namespace"].as_str()) == Some(account.0)
                })
            })
        };
        let rules_of = |kind: &'static str, name: &str, namespace: Option<&str>| -> Vec<Rule> {
            let role = of_kind(kind)
                .find(|r| r["metadata"]["name"] == name && r["metadata"]["namespace"].as_str() == namespace)
                .unwrap_or_else(|| panic!("the manifest binds the agent to {kind} {name}, which it does not define"));
            serde_json::from_value(role["rules"].clone()).expect("a role's rules")
        };
        let mut rbac = Rbac {
            cluster_wide: Vec::new(),
            namespaced: Vec::new(),
        };
        for binding in of_kind("ClusterRoleBinding").filter(|b| binds_agent(b)) {
            let name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            rbac.cluster_wide.extend(rules_of("ClusterRole", name, None));
        }
        for binding in of_kind("RoleBinding").filter(|b| binds_agent(b)) {
            let namespace = binding["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            let rules = match binding["roleRef"]["kind"].as_str() {
                Some("ClusterRole") => rules_of("ClusterRole", name, None),
                _ => rules_of("Role", name, Some(namespace)),
            };
            rbac.namespaced.push((namespace.to_owned(), rules));
        }
        rbac
    }

    /// Whether the agent may make the request: every verb it needs allowed by some rule in force where it acts.
    pub fn allows(&self, access: &Access) -> bool {
        let verbs = match access {
            Access::Resource { verbs, .. } => verbs.clone(),
            Access::NonResource { verb, .. } => vec![verb.clone()],
        };
        let in_force = |rules: &[Rule], verb: &str| rules.iter().any(|rule| rule.allows(access, verb));
        verbs.iter().all(|verb| {
            in_force(&self.cluster_wide, verb)
                || match access {
                    // a RoleBinding grants nothing across namespaces, nor any non-resource path
                    Access::Resource {
                        namespace: Some(namespace),
                        ..
                    } => self
                        .namespaced
                        .iter()
                        .any(|(n, rules)| n == namespace && in_force(rules, verb)),
                    _ => false,
                }
        })
    }

    /// Everything the rules grant, expanded.
    pub fn grants(&self) -> BTreeSet<Grant> {
        self.cluster_wide
            .iter()
            .chain(self.namespaced.iter().flat_map(|(_, rules)| rules))
            .flat_map(Rule::grants)
            .collect()
    }
}
