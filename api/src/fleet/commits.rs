//! Where each commit is: how a `sourceSyncedCommitId` filter reads, and how a commit spread over the clusters of a
//! policy assignment (first seen; when half, 95 % and all of them had reported it; how many it failed on), computed
//! from what the status history recorded. Pure: the store reads, the routes answer.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::lifecycle::rollout_verdict;

/// Longest `sourceSyncedCommitId` filter accepted: a ref name and a SHA-256 hash with room to spare.
pub const MAX_FILTER_LENGTH: usize = 512;
/// Fewest hexadecimal digits a hash prefix needs, as Git's short hashes.
pub const MIN_HASH_PREFIX: usize = 7;

/// A `sourceSyncedCommitId` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitFilter {
    /// The id exactly as agents report it, e.g. `main@sha1:4f2a…` (anything with a `:`, `@` or `/`).
    Exact(String),
    /// A commit hash, or its first 7 or more hexadecimal digits, in any case: matches the hash at the end of an id
    /// whatever its ref (`main@sha1:<hash>`, `v1.2.0@sha1:<hash>`, `sha256:<hash>`).
    Hash(String),
}

impl CommitFilter {
    /// Reads a filter, or says why it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("is empty: give a commit as agents report it (main@sha1:<hash>) or a commit hash".to_owned());
        }
        if text.len() > MAX_FILTER_LENGTH {
            return Err(format!("is longer than {MAX_FILTER_LENGTH} characters"));
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("holds whitespace or control characters, which no commit id has".to_owned());
        }
        if text.contains([':', '@', '/']) {
            return Ok(Self::Exact(text.to_owned()));
        }
        if text.len() >= MIN_HASH_PREFIX && text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Self::Hash(text.to_ascii_lowercase()));
        }
        Err(format!(
            "'{text}' is neither a commit as agents report it (main@sha1:<hash>) nor a commit hash of at least \
             {MIN_HASH_PREFIX} hexadecimal digits"
        ))
    }

    /// Whether a configuration whose agent reported `commit` (none before its first sync) matches.
    pub fn matches(&self, commit: Option<&str>) -> bool {
        let Some(commit) = commit else {
            return false;
        };
        match self {
            Self::Exact(id) => id == commit,
            Self::Hash(prefix) => {
                let hash = hash_of(commit);
                hash.len() >= prefix.len() && hash[..prefix.len()].eq_ignore_ascii_case(prefix)
            }
        }
    }
}

/// The hash at the end of a commit id: after its last `:` (`main@sha1:<hash>`) or, in Flux's older form, its last
/// `/` (`main/<hash>`).
fn hash_of(commit: &str) -> &str {
    commit.rsplit([':', '/']).next().unwrap_or(commit)
}

/// What the history recorded of one cluster at one commit, in one combination of states: the first time.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Sighting {
    pub cluster_id: i64,
    pub provisioning_state: String,
    pub compliance_state: String,
    /// Whether the agent had reported on the configuration's current generation (the states are its verdict).
    pub reported: bool,
    pub first_at: DateTime<Utc>,
}

/// How far a commit spread over an assignment's clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spread {
    pub first_seen: Option<DateTime<Utc>>,
    /// Selected clusters that reported it at least once.
    pub clusters: u64,
    /// Of those, the clusters whose agent reported a failure on it (failed or non-compliant: a rollout's verdict).
    pub failed: u64,
    /// When 50 %, 95 % and 100 % of `selected` clusters had reported it; `None` until they have.
    pub reached: [Option<DateTime<Utc>>; 3],
}

/// The shares of the selected clusters whose time `Spread::reached` gives, in percent.
pub const MILESTONES: [u64; 3] = [50, 95, 100];

/// The spread of a commit over the `selected` clusters (the assignment's now), from its sightings: each cluster
/// counts from its first sighting; clusters no longer selected do not count.
pub fn spread(sightings: &[Sighting], selected: &HashSet<i64>) -> Spread {
    let mut firsts: HashMap<i64, (DateTime<Utc>, bool)> = HashMap::new();
    for s in sightings.iter().filter(|s| selected.contains(&s.cluster_id)) {
        let failed = s.reported && rollout_verdict(&s.provisioning_state, &s.compliance_state).0;
        let entry = firsts.entry(s.cluster_id).or_insert((s.first_at, false));
        entry.0 = entry.0.min(s.first_at);
        entry.1 |= failed;
    }
    let mut times: Vec<DateTime<Utc>> = firsts.values().map(|(at, _)| *at).collect();
    times.sort_unstable();
    let reached = MILESTONES.map(|percent| {
        // the smallest number of clusters that is at least `percent` of the selection
        let needed = (selected.len() as u64 * percent).div_ceil(100).max(1);
        times.get(needed as usize - 1).copied().filter(|_| !selected.is_empty())
    });
    Spread {
        first_seen: times.first().copied(),
        clusters: times.len() as u64,
        failed: firsts.values().filter(|(_, failed)| *failed).count() as u64,
        reached,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "main@sha1:4f2a9c1e8d7b6a5f4e3d2c1b0a9f8e7d6c5b4a39";

    #[test]
    fn a_filter_is_a_whole_commit_id_or_a_hash_prefix() {
        assert_eq!(CommitFilter::parse(ID), Ok(CommitFilter::Exact(ID.to_owned())));
        assert_eq!(
            CommitFilter::parse("4F2A9C1"),
            Ok(CommitFilter::Hash("4f2a9c1".to_owned()))
        );
        for bad in [
            "",
            "4f2a9c",
            "main",
            "4f2a 9c1e",
            "zzzzzzzz",
            &"a".repeat(MAX_FILTER_LENGTH + 1),
        ] {
            assert!(CommitFilter::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_hash_prefix_matches_the_hash_whatever_the_ref_and_an_id_matches_only_itself() {
        let prefix = CommitFilter::parse("4f2a9c1e").unwrap();
        assert!(prefix.matches(Some(ID)));
        assert!(prefix.matches(Some("v1.2.0@sha1:4f2a9c1e8d7b")));
        assert!(prefix.matches(Some("main/4f2a9c1e8d7b")), "Flux's older form");
        assert!(
            !prefix.matches(Some("main@sha1:04f2a9c1e8d7b")),
            "a prefix, not a substring"
        );
        assert!(!prefix.matches(None), "not synced yet");
        let exact = CommitFilter::parse(ID).unwrap();
        assert!(exact.matches(Some(ID)));
        assert!(!exact.matches(Some(&ID.replace("main", "release"))));
    }

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    fn seen(cluster_id: i64, second: i64, compliance: &str) -> Sighting {
        Sighting {
            cluster_id,
            provisioning_state: "Succeeded".to_owned(),
            compliance_state: compliance.to_owned(),
            reported: true,
            first_at: at(second),
        }
    }

    #[test]
    fn a_spread_counts_each_selected_cluster_from_its_first_sighting() {
        let selected: HashSet<i64> = (1..=4).collect();
        let sightings = [
            seen(1, 10, "Compliant"),
            seen(1, 5, "Pending"),
            seen(2, 20, "Non-Compliant"),
            seen(3, 30, "Compliant"),
            // cluster 9 left the selection: it does not count
            seen(9, 1, "Non-Compliant"),
        ];
        let spread = spread(&sightings, &selected);
        assert_eq!(spread.first_seen, Some(at(5)));
        assert_eq!((spread.clusters, spread.failed), (3, 1));
        // 2 of 4 is half; 95 % and 100 % need all four
        assert_eq!(spread.reached, [Some(at(20)), None, None]);
    }

    #[test]
    fn a_commit_every_cluster_reported_reached_every_milestone_at_the_last_one() {
        let selected: HashSet<i64> = (1..=20).collect();
        let sightings: Vec<Sighting> = (1..=20).map(|c| seen(c, c * 10, "Compliant")).collect();
        let spread = spread(&sightings, &selected);
        // 10 of 20 is 50 %, 19 of 20 is 95 %
        assert_eq!(spread.reached, [Some(at(100)), Some(at(190)), Some(at(200))]);
    }

    #[test]
    fn a_state_reported_on_an_older_generation_is_no_failure_of_the_commit() {
        let selected: HashSet<i64> = [1].into();
        let mut stale = seen(1, 1, "Non-Compliant");
        stale.reported = false;
        assert_eq!(spread(&[stale], &selected).failed, 0);
        let mut failed = seen(1, 1, "Unknown");
        failed.provisioning_state = "Failed".to_owned();
        assert_eq!(spread(&[failed], &selected).failed, 1);
    }

    #[test]
    fn nothing_selected_reaches_nothing() {
        let spread = spread(&[seen(1, 1, "Compliant")], &HashSet::new());
        assert_eq!(spread.reached, [None, None, None]);
        assert_eq!(spread.clusters, 0);
    }
}
