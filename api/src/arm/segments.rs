//! ARM's case rules for request paths: the fixed segments (`subscriptions`, `resourceGroups`, `providers`,
//! provider namespaces, resource types and actions such as `operations`) match whatever their case, while names
//! keep theirs. Azure's own clients rely on it: `@azure/arm-hybridkubernetes` sends `/resourcegroups/`.
//!
//! The router matches literally, so a request's path is rewritten before routing: each segment in a fixed
//! position of ARM's grammar that spells a word of the route table in another case is replaced by the table's
//! spelling. Names are never touched, so a cluster called `History` stays `History`; they are compared
//! case-insensitively by the store's keys (see `ids`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::Uri;
use axum::http::uri::PathAndQuery;

/// The fixed words of the route table, by their lower-case form.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary(Arc<HashMap<String, String>>);

impl Vocabulary {
    /// The literal segments of `paths` (route templates such as `/subscriptions/{subscriptionId}/...`).
    pub fn of<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let words = paths
            .into_iter()
            .flat_map(|path| path.split('/'))
            .filter(|segment| !segment.is_empty() && !segment.starts_with('{'))
            .map(|word| (word.to_ascii_lowercase(), word.to_owned()))
            .collect();
        Self(Arc::new(words))
    }

    fn spell<'a>(&'a self, segment: &'a str) -> &'a str {
        self.0
            .get(&segment.to_ascii_lowercase())
            .map_or(segment, String::as_str)
    }

    /// `path` with its fixed segments spelled as the route table spells them, or `None` when it needs no change
    /// (most requests: the agent's, and every client that spells ARM's words as documented).
    pub fn canonical(&self, path: &str) -> Option<String> {
        let mut expect = Position::Start;
        let mut changed = false;
        let mut out = String::with_capacity(path.len());
        for (index, segment) in path.split('/').enumerate() {
            if index > 0 {
                out.push('/');
            }
            if index == 0 || segment.is_empty() {
                // the leading empty segment, or a doubled slash: ARM's grammar does not go on past it
                out.push_str(segment);
                if index > 0 {
                    expect = Position::Stop;
                }
                continue;
            }
            let spelled = match expect {
                Position::Start => {
                    let word = self.spell(segment);
                    let root = word == "subscriptions" || word == "providers";
                    expect = if word == "providers" {
                        Position::Namespace
                    } else if root {
                        Position::Name
                    } else {
                        Position::Stop
                    };
                    if root { word } else { segment }
                }
                Position::Word => {
                    let word = self.spell(segment);
                    expect = if word == "providers" {
                        Position::Namespace
                    } else {
                        Position::Name
                    };
                    word
                }
                Position::Namespace => {
                    expect = Position::Word;
                    self.spell(segment)
                }
                Position::Name => {
                    expect = Position::Word;
                    segment
                }
                Position::Stop => segment,
            };
            changed |= spelled != segment;
            out.push_str(spelled);
        }
        changed.then_some(out)
    }

    /// Rewrites the request's path in place (the query is kept as sent).
    pub fn canonicalize(&self, mut request: Request) -> Request {
        let uri = request.uri();
        if let Some(path) = self.canonical(uri.path()) {
            let path_and_query = match uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            let mut parts = uri.clone().into_parts();
            if let Ok(rewritten) = PathAndQuery::try_from(path_and_query) {
                parts.path_and_query = Some(rewritten);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
        }
        request
    }
}

/// What ARM's grammar expects next: `/subscriptions/{name}/resourceGroups/{name}/providers/{namespace}/{type}/
/// {name}/{type}/{name}...`, where a type may again be `providers`.
#[derive(Clone, Copy)]
enum Position {
    Start,
    Word,
    Namespace,
    Name,
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocabulary() -> Vocabulary {
        Vocabulary::of([
            "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}/history",
            "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}/operations/{operationId}",
            "/providers/Microsoft.KubernetesConfiguration/operations",
            "/agent/v1/desired-state",
        ])
    }

    #[test]
    fn fixed_segments_are_spelled_as_the_routes_spell_them() {
        assert_eq!(
            vocabulary()
                .canonical("/SUBSCRIPTIONS/s1/resourcegroups/My-RG/PROVIDERS/microsoft.kubernetes/connectedclusters/Prod/HISTORY")
                .as_deref(),
            Some("/subscriptions/s1/resourceGroups/My-RG/providers/Microsoft.Kubernetes/connectedClusters/Prod/history")
        );
    }

    #[test]
    fn names_keep_their_case_even_when_they_spell_a_fixed_word() {
        assert_eq!(
            vocabulary()
                .canonical("/subscriptions/Providers/resourcegroups/History/providers/Microsoft.Kubernetes/connectedClusters/OPERATIONS")
                .as_deref(),
            Some("/subscriptions/Providers/resourceGroups/History/providers/Microsoft.Kubernetes/connectedClusters/OPERATIONS")
        );
    }

    #[test]
    fn nested_providers_and_actions_are_fixed_words_too() {
        assert_eq!(
            vocabulary()
                .canonical("/subscriptions/s/resourceGroups/g/providers/microsoft.kubernetes/CONNECTEDCLUSTERS/c/providers/MICROSOFT.KUBERNETESCONFIGURATION/fluxconfigurations/f/Operations/abc")
                .as_deref(),
            Some("/subscriptions/s/resourceGroups/g/providers/Microsoft.Kubernetes/connectedClusters/c/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/f/operations/abc")
        );
        assert_eq!(
            vocabulary()
                .canonical("/PROVIDERS/microsoft.kubernetesconfiguration/OPERATIONS")
                .as_deref(),
            Some("/providers/Microsoft.KubernetesConfiguration/operations")
        );
    }

    #[test]
    fn paths_already_canonical_or_outside_arm_are_left_alone() {
        let words = vocabulary();
        assert_eq!(
            words.canonical("/subscriptions/s/resourceGroups/g/providers/Microsoft.Kubernetes/connectedClusters/c"),
            None
        );
        assert_eq!(words.canonical("/AGENT/v1/desired-state"), None);
        assert_eq!(words.canonical("/"), None);
        assert_eq!(words.canonical(""), None);
        // past a doubled slash ARM's grammar no longer holds: nothing after it is guessed at
        assert_eq!(words.canonical("/subscriptions/s//RESOURCEGROUPS/g").as_deref(), None);
    }

    #[test]
    fn unknown_words_pass_through_for_the_router_to_refuse() {
        assert_eq!(
            vocabulary().canonical("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm"),
            None
        );
    }

    #[test]
    fn the_query_is_kept_as_sent() {
        let request = Request::builder()
            .uri("/subscriptions/s/resourcegroups/g/providers/Microsoft.Kubernetes/connectedClusters?api-version=2024-01-01&$filter=name%20eq%20'A'")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            vocabulary().canonicalize(request).uri().to_string(),
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Kubernetes/connectedClusters?api-version=2024-01-01&$filter=name%20eq%20'A'"
        );
    }

    proptest::proptest! {
        #[test]
        fn canonical_paths_differ_from_the_request_only_in_case(path in "(/[A-Za-z.{}%-]{0,12}){0,10}") {
            if let Some(canonical) = vocabulary().canonical(&path) {
                proptest::prop_assert!(canonical.eq_ignore_ascii_case(&path));
                proptest::prop_assert_ne!(canonical, path);
            }
        }
    }
}
