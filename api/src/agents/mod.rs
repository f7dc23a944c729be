//! The agent API (`/agent/v1`): agents authenticate with tokens they sign themselves, long-poll their cluster's
//! desired state and report status back. The wire types are in `fluxplane-agent-protocol`.

pub mod auth;
pub mod ingest;
pub mod lookups;
pub mod routes;
