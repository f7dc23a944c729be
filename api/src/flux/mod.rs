//! Flux configurations: the desired state users write per cluster, its secrets, and its long-running operations.

pub mod model;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod validate;
