//! The fleet's circuit breaker: a policy assignment's `circuitBreaker` watches every commit of its Git repository
//! across the subscription, and once one fails on more than a set share of the clusters that applied it, every
//! assignment of the subscription reading that repository halts its rollout (`assignments::rollout::halt`). Pure
//! decisions; the sweeper's reconciliation (`store::fleet`) counts, records each commit's trip once and writes the
//! halts.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Problems;
use crate::lifecycle::rollout_verdict;

/// Most clusters `minClusters` may ask for.
pub const MAX_MIN_CLUSTERS: u32 = 100_000;

/// When a commit of the assignment's Git repository halts every assignment of the subscription reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Trips when a commit failed (Failed or Non-Compliant) on more than this percentage of the clusters that
    /// applied it (0-99; 0: on any failure).
    #[schema(minimum = 0, maximum = 99)]
    pub max_failure_percent: u32,
    /// ... once at least this many clusters applied it (default 3), so that one early failure does not trip it.
    #[serde(default = "three")]
    #[schema(minimum = 1, maximum = 100000)]
    pub min_clusters: u32,
}

fn three() -> u32 {
    3
}

impl CircuitBreaker {
    /// Records the problems of the setting.
    pub fn validate(&self, p: &mut Problems) {
        if self.max_failure_percent > 99 {
            p.add(
                "properties.circuitBreaker.maxFailurePercent",
                "a whole percentage from 0 to 99: a commit cannot fail on more than 100% of its clusters",
            );
        }
        if !(1..=MAX_MIN_CLUSTERS).contains(&self.min_clusters) {
            p.add(
                "properties.circuitBreaker.minClusters",
                format!("a whole number of clusters from 1 to {MAX_MIN_CLUSTERS}"),
            );
        }
    }

    fn trips(&self, tally: &CommitTally) -> bool {
        tally.applied >= u64::from(self.min_clusters)
            && tally.failed * 100 > u64::from(self.max_failure_percent) * tally.applied
    }
}

/// A Git URL as the breaker compares them: the same repository whatever the scheme (`https://`, `ssh://`, `git@`
/// host:path), user, letter case of the host, default port, trailing `/` or `.git`. `host[:port]/path`. Azure
/// DevOps spells one repository two ways (`dev.azure.com/{org}/{project}/_git/{repo}` over HTTPS,
/// `ssh.dev.azure.com:v3/{org}/{project}/{repo}` over SSH): both read as the HTTPS one.
pub fn repository_key(url: &str) -> String {
    let url = url.trim();
    let (rest, scheme) = match url.split_once("://") {
        Some((scheme, rest)) => (rest, Some(scheme.to_ascii_lowercase())),
        None => (url, None),
    };
    // `git@host:org/repo` (scp-like: no scheme, a `:` before any `/`)
    let scp = scheme.is_none()
        && rest
            .find(':')
            .is_some_and(|colon| rest.find('/').is_none_or(|s| colon < s));
    let (authority, path) = if scp {
        rest.split_once(':').unwrap_or((rest, ""))
    } else {
        rest.split_once('/').unwrap_or((rest, ""))
    };
    let host = authority.rsplit('@').next().unwrap_or(authority).to_ascii_lowercase();
    let default_port = match scheme.as_deref() {
        Some("https") => Some("443"),
        Some("http") => Some("80"),
        Some("ssh") => Some("22"),
        _ => None,
    };
    let host = match (host.rsplit_once(':'), default_port) {
        (Some((name, port)), Some(default)) if port == default => name.to_owned(),
        _ => host,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/');
    if host == "ssh.dev.azure.com"
        && let ["v3", org, project, repo] = path.split('/').collect::<Vec<_>>().as_slice()
    {
        return format!("dev.azure.com/{org}/{project}/_git/{repo}");
    }
    format!("{host}/{path}")
}

/// One configuration's last report at the commit it names, as the breaker counts it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CommitReport {
    pub cluster_id: i64,
    pub commit_id: String,
    pub provisioning_state: String,
    pub compliance_state: String,
}

/// How many clusters applied a commit and how many it failed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitTally {
    pub commit: String,
    pub applied: u64,
    pub failed: u64,
}

/// The clusters per commit, from the reports of the configurations that read the repository: a cluster applied a
/// commit when one of them reports it, and it failed there when one of them failed on it.
pub fn tally(reports: &[CommitReport]) -> Vec<CommitTally> {
    let mut by_commit: BTreeMap<&str, (HashSet<i64>, HashSet<i64>)> = BTreeMap::new();
    for r in reports {
        let (applied, failed) = by_commit.entry(&r.commit_id).or_default();
        applied.insert(r.cluster_id);
        if rollout_verdict(&r.provisioning_state, &r.compliance_state).0 {
            failed.insert(r.cluster_id);
        }
    }
    by_commit
        .into_iter()
        .map(|(commit, (applied, failed))| CommitTally {
            commit: commit.to_owned(),
            applied: applied.len() as u64,
            failed: failed.len() as u64,
        })
        .collect()
}

/// A commit that trips the breaker of a repository, and the setting it went past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub commit: String,
    pub applied: u64,
    pub failed: u64,
    /// The assignment whose setting it went past, and that setting.
    pub by: String,
    pub setting: CircuitBreaker,
}

impl Trip {
    /// What the halted rollouts say.
    pub fn message(&self, repository: &str) -> String {
        format!(
            "halted by the circuit breaker of {repository}: commit {} failed on {} of the {} clusters that applied it \
             ({}%), more than the {}% that assignment '{}' allows; apply a corrected template to go on",
            self.commit,
            self.failed,
            self.applied,
            self.failed * 100 / self.applied.max(1),
            self.setting.max_failure_percent,
            self.by
        )
    }
}

/// The commits that trip the breaker of a repository, worst first (largest share failed, then most failed): each
/// with the first setting (by assignment name) it goes past. `breakers` are the settings of the assignments that
/// read the repository, by assignment name.
pub fn tripped(breakers: &[(String, CircuitBreaker)], tallies: &[CommitTally]) -> Vec<Trip> {
    let mut breakers: Vec<&(String, CircuitBreaker)> = breakers.iter().collect();
    breakers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut trips: Vec<Trip> = tallies
        .iter()
        .filter_map(|tally| {
            let (by, setting) = breakers.iter().find(|(_, b)| b.trips(tally))?;
            Some(Trip {
                commit: tally.commit.clone(),
                applied: tally.applied,
                failed: tally.failed,
                by: by.clone(),
                setting: setting.clone(),
            })
        })
        .collect();
    // a / b > c / d  <=>  a * d > c * b
    trips.sort_by(|x, y| {
        (y.failed * x.applied)
            .cmp(&(x.failed * y.applied))
            .then(y.failed.cmp(&x.failed))
            .then(x.commit.cmp(&y.commit))
    });
    trips
}

/// The assignments that read one repository of one subscription: who halts, and whose settings watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub subscription_key: String,
    pub repository: String,
    /// The assignments reading it (by store id) that write configurations: every one halts on a trip.
    pub assignments: Vec<i64>,
    /// The settings of those with a `circuitBreaker`, by assignment name.
    pub breakers: Vec<(String, CircuitBreaker)>,
}

/// One assignment as the breaker sees it.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    pub id: i64,
    pub subscription_key: &'a str,
    pub name: &'a str,
    /// The Git URLs its configurations read: its rendered configuration's, or, when its template reads the
    /// cluster, those its configurations hold.
    pub urls: Vec<String>,
    pub breaker: Option<&'a CircuitBreaker>,
    /// Whether it writes configurations (not `DoNotEnforce`).
    pub enforced: bool,
}

/// The repositories that at least one assignment's breaker watches, with every assignment reading each.
pub fn watches(readers: &[Reader<'_>]) -> Vec<Watch> {
    let mut by_repository: BTreeMap<(String, String), Watch> = BTreeMap::new();
    for r in readers {
        let repositories: std::collections::BTreeSet<String> = r.urls.iter().map(|u| repository_key(u)).collect();
        for repository in repositories {
            let watch = by_repository
                .entry((r.subscription_key.to_owned(), repository.clone()))
                .or_insert_with(|| Watch {
                    subscription_key: r.subscription_key.to_owned(),
                    repository,
                    assignments: Vec::new(),
                    breakers: Vec::new(),
                });
            if r.enforced {
                watch.assignments.push(r.id);
            }
            if let Some(b) = r.breaker {
                watch.breakers.push((r.name.to_owned(), b.clone()));
            }
        }
    }
    by_repository.into_values().filter(|w| !w.breakers.is_empty()).collect()
}

/// The Git URL of an assignment's rendered configuration, if it renders one configuration for every cluster and
/// that reads Git.
pub fn rendered_url(rendered: &impl Serialize) -> Option<String> {
    let rendered = serde_json::to_value(rendered).ok()?;
    Some(rendered.get("gitRepository")?.get("url")?.as_str()?.to_owned())
}

/// The assignments of the watch that `trips` halt and with what message: every one of them, for the worst trip.
pub fn halts(watch: &Watch, trips: &[Trip]) -> HashMap<i64, String> {
    let Some(worst) = trips.first() else {
        return HashMap::new();
    };
    let message = worst.message(&watch.repository);
    watch.assignments.iter().map(|id| (*id, message.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_repository_has_one_key_whatever_its_url_spells() {
        let key = "github.com/org/fleet";
        for url in [
            "https://github.com/org/fleet",
            "https://GitHub.com/org/fleet.git",
            "https://github.com:443/org/fleet/",
            "http://user@github.com/org/fleet.git/",
            "ssh://git@github.com/org/fleet.git",
            "ssh://git@github.com:22/org/fleet",
            "git@github.com:org/fleet.git",
            " https://github.com/org/fleet?ref=x ",
        ] {
            assert_eq!(repository_key(url), key, "{url}");
        }
        assert_ne!(
            repository_key("https://github.com/org/Fleet"),
            key,
            "paths keep their case"
        );
        assert_ne!(repository_key("https://github.com:8443/org/fleet"), key, "another port");
        assert_ne!(repository_key("https://gitlab.com/org/fleet"), key);
    }

    #[test]
    fn an_azure_devops_repository_reads_the_same_over_ssh_and_https() {
        let key = "dev.azure.com/org/project/_git/fleet";
        for url in [
            "https://dev.azure.com/org/project/_git/fleet",
            "https://org@dev.azure.com/org/project/_git/fleet",
            "git@ssh.dev.azure.com:v3/org/project/fleet",
            "ssh://git@ssh.dev.azure.com/v3/org/project/fleet",
        ] {
            assert_eq!(repository_key(url), key, "{url}");
        }
        assert_eq!(
            repository_key("git@ssh.dev.azure.com:v3/org/fleet"),
            "ssh.dev.azure.com/v3/org/fleet"
        );
    }

    fn setting(percent: u32, min: u32) -> CircuitBreaker {
        CircuitBreaker {
            max_failure_percent: percent,
            min_clusters: min,
        }
    }

    fn report(cluster_id: i64, commit: &str, failing: bool) -> CommitReport {
        CommitReport {
            cluster_id,
            commit_id: commit.to_owned(),
            provisioning_state: if failing { "Failed" } else { "Succeeded" }.to_owned(),
            compliance_state: if failing { "Non-Compliant" } else { "Compliant" }.to_owned(),
        }
    }

    #[test]
    fn clusters_are_counted_once_per_commit_and_fail_when_any_configuration_fails() {
        let tallies = tally(&[
            report(1, "c2", true),
            report(1, "c2", false),
            report(2, "c2", false),
            report(3, "c1", false),
        ]);
        assert_eq!(
            tallies,
            [
                CommitTally {
                    commit: "c1".into(),
                    applied: 1,
                    failed: 0
                },
                CommitTally {
                    commit: "c2".into(),
                    applied: 2,
                    failed: 1
                }
            ]
        );
    }

    #[test]
    fn a_commit_trips_past_the_share_once_enough_clusters_applied_it() {
        let tally = |applied, failed| CommitTally {
            commit: "c".into(),
            applied,
            failed,
        };
        let breakers = [("a".to_owned(), setting(50, 4))];
        assert!(
            tripped(&breakers, &[tally(3, 3)]).is_empty(),
            "too few clusters applied it"
        );
        assert!(
            tripped(&breakers, &[tally(4, 2)]).is_empty(),
            "50% is not more than 50%"
        );
        let trips = tripped(&breakers, &[tally(4, 3)]);
        assert_eq!((trips.len(), trips[0].by.as_str()), (1, "a"));
        let message = trips[0].message("github.com/org/fleet");
        for part in ["commit c", "3 of the 4", "(75%)", "50%", "'a'", "github.com/org/fleet"] {
            assert!(message.contains(part), "{message} lacks {part}");
        }
        let strict = [("z".to_owned(), setting(0, 1)), ("a".to_owned(), setting(90, 1))];
        assert_eq!(
            tripped(&strict, &[tally(10, 1)])[0].by,
            "z",
            "any setting gone past trips it"
        );
    }

    #[test]
    fn the_worst_commit_comes_first() {
        let breakers = [("a".to_owned(), setting(10, 1))];
        let tallies = [
            CommitTally {
                commit: "half".into(),
                applied: 10,
                failed: 5,
            },
            CommitTally {
                commit: "all".into(),
                applied: 2,
                failed: 2,
            },
        ];
        let trips = tripped(&breakers, &tallies);
        assert_eq!(
            trips.iter().map(|t| t.commit.as_str()).collect::<Vec<_>>(),
            ["all", "half"]
        );
    }

    #[test]
    fn only_repositories_a_breaker_watches_are_counted_and_every_enforced_reader_halts() {
        let b = setting(20, 3);
        let reader = |id, name, urls: &[&str], breaker, enforced| Reader {
            id,
            subscription_key: "s",
            name,
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            breaker,
            enforced,
        };
        let readers = [
            reader(1, "a", &["https://h/org/r"], Some(&b), true),
            // a template that reads its cluster: the URLs its configurations hold
            reader(
                2,
                "b",
                &["git@h:org/r.git", "https://h/org/r/", "https://h/org/eu"],
                None,
                true,
            ),
            reader(3, "audit", &["https://h/org/r"], None, false),
            reader(4, "other", &["https://h/org/other"], None, true),
            reader(5, "bucket", &[], None, true),
        ];
        let watches = watches(&readers);
        assert_eq!(watches.len(), 1, "{watches:?}");
        assert_eq!(watches[0].repository, "h/org/r");
        assert_eq!(watches[0].assignments, [1, 2]);
        assert_eq!(watches[0].breakers, [("a".to_owned(), b.clone())]);
        let trips = tripped(
            &watches[0].breakers,
            &[CommitTally {
                commit: "c".into(),
                applied: 3,
                failed: 3,
            }],
        );
        let halts = halts(&watches[0], &trips);
        assert_eq!(halts.len(), 2);
        assert!(halts[&2].contains("commit c"));
    }

    #[test]
    fn a_setting_out_of_range_is_refused_where_it_is() {
        let mut p = Problems::default();
        setting(100, 0).validate(&mut p);
        let err = p.into_result("policy assignment", None).unwrap_err();
        let targets: Vec<_> = err.detail().details.iter().filter_map(|d| d.target.clone()).collect();
        assert_eq!(
            targets,
            [
                "properties.circuitBreaker.maxFailurePercent",
                "properties.circuitBreaker.minClusters"
            ]
        );
        let mut p = Problems::default();
        setting(0, 1).validate(&mut p);
        assert!(p.into_result("x", None).is_ok());
    }

    #[test]
    fn an_assignment_rendering_one_configuration_reads_its_url() {
        let rendered = serde_json::json!({"gitRepository": {"url": "https://h/org/r"}, "kustomizations": {}});
        assert_eq!(rendered_url(&rendered).as_deref(), Some("https://h/org/r"));
        assert_eq!(rendered_url(&serde_json::json!({"bucket": {"url": "https://h"}})), None);
    }
}
