//! Flux configurations: the desired state users write per cluster, its secrets, and its long-running operations;
//! and the Flux v1 configurations Azure retired, which every cluster answers it has none of.

pub mod model;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod source_control;
pub mod validate;
