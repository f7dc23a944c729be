//! Status reports sent through the real agent API by clusters registered the real way, without running an agent:
//! the tests choose what each configuration reports.

use std::collections::BTreeMap;
use std::time::Duration;

use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::register::{Registration, register};
use fluxplane_agent_protocol::agent::{ApplyOutcome, ConfigurationReport, StatusReport};
use fluxplane_agent_protocol::flux::ComplianceState;

use super::{Api, cluster_path};

/// A cluster with an agent (registered through the real registration) in `s/rg-a`, tagged.
pub async fn agent_cluster(api: &Api, name: &str, env: &str, dir: &std::path::Path) -> ControlPlane {
    let registration = Registration {
        server: api.server.base.clone(),
        user_token: api.token.clone(),
        cluster_id: cluster_path("s", "rg-a", name),
        tags: BTreeMap::from([("env".to_owned(), env.to_owned())]),
        location: Some("westeurope".into()),
        trust: Default::default(),
    };
    let identity = register(&registration, &dir.join(format!("{name}.json")))
        .await
        .unwrap();
    ControlPlane::new(identity).unwrap()
}

/// Reports every configuration the agent holds: `failing` ones Failed and Non-Compliant, the rest Applied and
/// Compliant; `skip` ones not at all.
pub async fn report(agent: &ControlPlane, failing: &[&str], skip: &[&str]) {
    report_states(agent, failing, skip, ComplianceState::Compliant).await
}

/// As `report`, with the configurations that do not fail reporting `compliance` (Applied, but not necessarily
/// Compliant yet).
pub async fn report_states(agent: &ControlPlane, failing: &[&str], skip: &[&str], compliance: ComplianceState) {
    let desired = agent.desired_state(None, Duration::ZERO).await.unwrap();
    let configurations = desired
        .configurations
        .iter()
        .filter(|c| !skip.contains(&c.name.as_str()))
        .map(|c| {
            let fails = failing.contains(&c.name.as_str());
            ConfigurationReport {
                name: c.name.clone(),
                generation: c.generation,
                outcome: if fails {
                    ApplyOutcome::Failed
                } else {
                    ApplyOutcome::Applied
                },
                compliance_state: if fails {
                    ComplianceState::NonCompliant
                } else {
                    compliance
                },
                message: fails.then(|| "the branch is missing".into()),
                statuses: Vec::new(),
                source_synced_commit_id: None,
                source_updated_at: None,
                secrets_version: None,
                repository_public_key: None,
            }
        })
        .collect();
    agent
        .report(&StatusReport {
            agent: Default::default(),
            extensions: Vec::new(),
            configurations,
        })
        .await
        .unwrap();
}
