//! The end-to-end tests: each module drives a real server (on port 0, with a fresh database of each backend) or the
//! real binary over real HTTP. They are modules of one test binary, so that a change links one executable rather
//! than one per file. Run one module with `cargo test --test e2e clusters::`.

mod common;

mod agents;
mod alerts;
mod api_versions;
mod arm_paths;
mod auth;
mod binary;
mod cluster_groups;
mod clusters;
mod commits;
mod compliance_summary;
mod dashboards;
mod deploy_keys;
mod errors;
mod expiry;
mod extensions;
mod flux_configurations;
mod git_receivers;
mod hostile;
mod http2;
mod managed_identity;
mod policy_assignments;
mod resource_manager;
mod secrets;
mod status_reports;
mod tls;
mod ui;
