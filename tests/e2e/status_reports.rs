//! End-to-end: status reports sent by many agents at once are applied together (`agents::ingest`), and each is still
//! answered as it would be alone: `Recorded`, `Stale` for a generation that has moved on, `Unknown` for a
//! configuration that does not exist, acknowledged secrets deleted, and a configuration reported twice in one
//! request taking the later report.

use std::sync::Arc;
use std::time::Duration;

use crate::common::agents::*;
use crate::common::*;
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent_protocol::agent::{
    ApplyOutcome, ConfigurationReport, ReportDisposition, StatusAccepted, StatusReport,
};
use fluxplane_agent_protocol::flux::ComplianceState;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;

/// Agents reporting at once: more than one batch's worth of requests arrive while the first is written.
const AGENTS: usize = 24;

fn status(name: &str, generation: i64, compliance: ComplianceState) -> ConfigurationReport {
    ConfigurationReport {
        name: name.to_owned(),
        generation,
        outcome: if compliance == ComplianceState::Compliant {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Failed
        },
        compliance_state: compliance,
        message: (compliance != ComplianceState::Compliant).then(|| "the branch is missing".into()),
        statuses: Vec::new(),
        source_synced_commit_id: Some("main@sha1:0123456789abcdef0123456789abcdef01234567".into()),
        source_updated_at: None,
        secrets_version: None,
        repository_public_key: None,
        restored: Vec::new(),
    }
}

on_both_backends!(
    reports_sent_at_once_are_each_answered_as_if_sent_alone,
    concurrent_reports_case
);
async fn concurrent_reports_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let name = format!("c{i}");
        let identity = registered(&api, &name, dir.path()).await;
        let cluster = cluster_path("s", "rg", &name);
        for configuration in ["current", "moved"] {
            let created = api.put_config(&cluster, configuration, git_config_body()).await;
            assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        }
        // `moved` is at generation 2 before its agent reports generation 1
        let mut changed = git_config_body();
        changed["properties"]["kustomizations"]["apps"]["path"] = json!("./apps/v2");
        assert_eq!(api.put_config(&cluster, "moved", changed).await.status, StatusCode::OK);
        let mut secret = git_config_body();
        secret["properties"]["configurationProtectedSettings"] = json!({"httpsKey": "c2VjcmV0"});
        assert_eq!(
            api.put_config(&cluster, "secret", secret).await.status,
            StatusCode::CREATED
        );
        agents.push(ControlPlane::new(identity).unwrap());
    }
    let mut offered_secrets = Vec::with_capacity(AGENTS);
    for agent in &agents {
        let desired = agent.desired_state(None, Duration::ZERO).await.unwrap();
        let secret = desired.configurations.iter().find(|c| c.name == "secret").unwrap();
        assert_eq!(
            secret.sealed_secrets.len(),
            1,
            "the secret is offered until acknowledged"
        );
        offered_secrets.push(secret.secrets_version);
    }

    let start = Arc::new(Barrier::new(AGENTS));
    let sending: Vec<_> = agents
        .into_iter()
        .zip(offered_secrets)
        .map(|(agent, secrets_version)| {
            let start = start.clone();
            tokio::spawn(async move {
                let mut acknowledging = status("secret", 1, ComplianceState::Compliant);
                acknowledging.secrets_version = secrets_version;
                let report = StatusReport {
                    agent: Default::default(),
                    extensions: Vec::new(),
                    configurations: vec![
                        status("current", 1, ComplianceState::NonCompliant),
                        status("moved", 1, ComplianceState::Compliant),
                        status("ghost", 1, ComplianceState::Compliant),
                        acknowledging,
                        // the same configuration again in the same request: the later report is its status
                        status("current", 1, ComplianceState::Compliant),
                    ],
                };
                start.wait().await;
                let answer: StatusAccepted = agent.report(&report).await.unwrap();
                (agent, answer)
            })
        })
        .collect();
    let mut agents = Vec::with_capacity(AGENTS);
    for sent in sending {
        let (agent, answer) = sent.await.unwrap();
        let results: Vec<_> = answer.results.iter().map(|r| (r.name.as_str(), r.result)).collect();
        assert_eq!(
            results,
            [
                ("current", ReportDisposition::Recorded),
                ("moved", ReportDisposition::Stale),
                ("ghost", ReportDisposition::Unknown),
                ("secret", ReportDisposition::Recorded),
                ("current", ReportDisposition::Recorded),
            ],
            "{}",
            agent.cluster_id()
        );
        agents.push(agent);
    }

    for (i, agent) in agents.iter().enumerate() {
        let cluster = cluster_path("s", "rg", &format!("c{i}"));
        let current = api
            .get(&with_version(&config_path(&cluster, "current"), FLUX_API))
            .await;
        assert_eq!(
            current.body["properties"]["complianceState"], "Compliant",
            "the later report"
        );
        assert_eq!(current.body["properties"]["provisioningState"], "Succeeded");
        let moved = api.get(&with_version(&config_path(&cluster, "moved"), FLUX_API)).await;
        assert_ne!(
            moved.body["properties"]["provisioningState"], "Succeeded",
            "a stale report changes nothing"
        );
        let desired = agent.desired_state(None, Duration::ZERO).await.unwrap();
        let secret = desired.configurations.iter().find(|c| c.name == "secret").unwrap();
        assert!(secret.sealed_secrets.is_empty(), "the acknowledged secret is deleted");
        let cluster_state = api.get(&with_version(&cluster, CLUSTER_API)).await;
        assert_eq!(cluster_state.body["properties"]["connectivityStatus"], "Connected");
    }
}
