//! The per-cluster agent: turns the desired state the control plane hands out into objects in its cluster.
//!
//! `objects` derives the Flux objects a configuration implies; the poll loop and the cluster targets build on it.

pub mod client;
pub mod git;
pub mod identity;
pub mod objects;
pub mod register;
pub mod run;
pub mod targets;
