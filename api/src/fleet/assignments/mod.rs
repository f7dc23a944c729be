//! `Fluxplane.Fleet/policyAssignments`: a Flux configuration, rendered from a template, that every cluster the
//! assignment selects gets and keeps. The store applies an assignment in the same transaction as every change to
//! it, to its cluster group or to a cluster's tags (`store::fleet`); `service` holds its write rules, `routes` serves it;
//! `commits` answers where each commit its configurations reported spread, and when; `halts` how a circuit breaker
//! halts it.

pub mod commits;
pub mod halts;
pub mod model;
pub mod routes;
pub mod service;
