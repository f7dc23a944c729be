//! The fluxplane control plane: an ARM-compatible REST API for clusters and Flux configurations over PostgreSQL or
//! an embedded SQLite store.
//!
//! `server::app` builds the HTTP application from a `ServeConfig` and a `Store`; `server::serve` runs it on a
//! listener the caller binds. The binary (`fluxplane`) is a thin shell around these.

pub mod agents;
pub mod alerts;
pub mod arm;
pub mod auth;
pub mod availability;
pub mod clusters;
pub mod config;
pub mod connections;
pub mod dashboards;
pub mod error;
pub mod extensions;
pub mod fleet;
pub mod flux;
pub mod health;
pub mod keys;
pub mod lifecycle;
pub mod managed_identity;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod openapi;
pub mod server;
pub mod state;
pub mod store;
pub mod sweep;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod turns;
pub mod vault;
