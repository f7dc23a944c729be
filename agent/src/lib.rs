//! The per-cluster agent: turns the desired state the control plane hands out into objects in its cluster.
//!
//! `objects` derives the Flux objects a configuration implies, `secrets` the secret set its sealed secrets bring;
//! the poll loop and the cluster targets build on them.

pub mod client;
pub mod deploy_key;
mod files;
pub mod git;
pub mod identity;
pub mod kustomize;
pub mod objects;
pub mod register;
pub mod run;
pub mod secrets;
pub mod targets;
pub mod tenancy;
#[cfg(test)]
mod testing;
pub mod tls;
