//! The wire contract between fluxplane agents and the control plane.
//!
//! This crate holds serde types, so that an agent (or a third-party client) can speak the protocol without pulling
//! in the server, a database driver or an HTTP stack. The OpenAPI schemas are derived behind the `openapi` feature,
//! the sealing of secrets (HPKE) behind `sealing`. Evolution is additive: new fields are optional, so an older peer
//! keeps working.

pub mod agent;
pub mod flux;
#[cfg(feature = "sealing")]
pub mod sealing;
