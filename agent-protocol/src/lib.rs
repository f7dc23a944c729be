//! The wire contract between fluxplane agents and the control plane.
//!
//! This crate holds serde types, so that an agent (or a third-party client) can speak the protocol without pulling
//! in the server, a database driver or an HTTP stack. The OpenAPI schemas are derived behind the `openapi` feature,
//! the sealing of secrets (HPKE) behind `sealing`, and the semver constraints of `repositoryRef.semver` as Flux
//! reads them behind `semver` (the server validates with them and the agent resolves tags with them, so both read a
//! constraint alike). Evolution is additive: new fields are optional, so an older peer keeps working.

pub mod agent;
pub mod flux;
#[cfg(feature = "sealing")]
pub mod sealing;
#[cfg(feature = "semver")]
pub mod semver;
