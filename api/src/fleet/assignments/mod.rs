//! `Fluxplane.Fleet/policyAssignments`: a Flux configuration, rendered from a template, that every cluster the
//! assignment selects gets and keeps. The store applies an assignment in the same transaction as every change to
//! it, to its cluster group or to a cluster's tags (`store::fleet`); `service` holds its write rules, `routes` serves it;
//! `commits` answers where each commit its configurations reported spread, and when; `rollout` how a new
//! generation reaches the clusters batch by batch, and how it halts, pauses or rolls back; `pace` keeps a moving
//! rollout moving between sweeps.

pub mod commits;
pub mod model;
pub mod pace;
pub mod rollout;
pub mod routes;
pub mod service;
