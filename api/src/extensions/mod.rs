//! Cluster extensions (`Microsoft.KubernetesConfiguration/extensions`), of which fluxplane serves one type,
//! `microsoft.flux`: the resource Azure's tools look for (and install) before they write Flux configurations. Its
//! settings reach the cluster's agent in the desired state, and its operations end when the agent reports it
//! installed or removed.

pub mod model;
pub mod routes;
pub mod service;
