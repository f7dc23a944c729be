//! The results: a table on standard output, and with `--json` a file holding the figures, their targets and
//! ceilings, the options of the run and the facts of the machine it ran on (figures from different machines are
//! only comparable through their ceilings).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::Figure;
use crate::ceiling::Ceiling;

/// A ceiling as the table shows it: its value, and how much of it the figure reaches.
fn ceiling(name: &str, ceiling: &Option<Ceiling>) -> String {
    match ceiling {
        Some(c) => format!("{name} {:.1} ({:.0}%)", c.value, c.fraction * 100.0),
        None => format!("{name} -"),
    }
}

pub(crate) fn table(figures: &[Figure]) {
    println!(
        "{:<9} {:<62} {:>10} {:<9} {:<30} {:<36} detail",
        "backend", "scenario", "value", "unit", "target", "ceilings (figure's share)"
    );
    for f in figures {
        let target = match (&f.target, f.met) {
            (Some(t), Some(true)) => format!("{t} met"),
            (Some(t), Some(false)) => format!("{t} MISSED"),
            _ => "-".to_owned(),
        };
        let ceilings = format!("{}, {}", ceiling("HTTP", &f.http_ceiling), ceiling("DB", &f.db_ceiling));
        println!(
            "{:<9} {:<62} {:>10.1} {:<9} {:<30} {:<36} {}",
            f.backend, f.scenario, f.value, f.unit, target, ceilings, f.detail
        );
    }
}

/// The first line of `/proc/cpuinfo` or `/proc/meminfo` starting with `key`, its value trimmed.
fn proc_field(file: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find(|line| line.starts_with(key))?
        .split_once(':')
        .map(|(_, value)| value.trim().to_owned())
}

/// The version PostgreSQL reports, if the server the benchmark uses answers.
async fn postgres_version() -> Option<String> {
    let url = std::env::var("FLUXPLANE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let connected = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url)).await;
    let mut connection = connected.ok()?.ok()?;
    sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut connection)
        .await
        .ok()
}

/// The version of the SQLite library the server is linked with.
async fn sqlite_version() -> Option<String> {
    let mut connection = sqlx::SqliteConnection::connect("sqlite::memory:").await.ok()?;
    sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&mut connection)
        .await
        .ok()
}

fn git_commit() -> Option<String> {
    let output = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

async fn machine(quick: bool) -> Value {
    let memory_kib =
        proc_field("/proc/meminfo", "MemTotal").and_then(|total| total.strip_suffix("kB")?.trim().parse::<u64>().ok());
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": proc_field("/proc/cpuinfo", "model name"),
        "memory_total_mib": memory_kib.map(|kib| kib / 1024),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|k| k.trim().to_owned()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "postgres_version": postgres_version().await,
        "sqlite_version": sqlite_version().await,
        "git_commit": git_commit(),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "quick": quick,
    })
}

/// Where the results go, with what is known of the run before it starts: the machine (its commit read once, so
/// that a commit made during a long run does not relabel it) and the options.
pub(crate) struct Results {
    path: std::path::PathBuf,
    machine: Value,
    options: Value,
}

impl Results {
    pub(crate) async fn new(path: &Path, quick: bool, options: Value) -> Self {
        Self {
            path: path.to_owned(),
            machine: machine(quick).await,
            options,
        }
    }

    /// Writes the results so far: the machine, the options, the figures, the scale scenario's table (its rows as
    /// `{"backend", "row"}`, none if it did not run) and whether every scenario asked for has run. Written after
    /// each scenario, so that a run stopped by a late failure keeps what it measured before it.
    pub(crate) fn write(&self, figures: &[Figure], scaling: &[Value], complete: bool) -> anyhow::Result<()> {
        let results = json!({
            "machine": self.machine,
            "options": self.options,
            "complete": complete,
            "figures": figures,
            "scaling": scaling,
        });
        let partial = self.path.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_string_pretty(&results)?)?;
        // renamed into place: an interrupted write never leaves a truncated file where the last good one was
        std::fs::rename(&partial, &self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(scenario: &str) -> Figure {
        Figure {
            backend: "sqlite",
            scenario: scenario.to_owned(),
            value: 1.0,
            unit: "ms",
            target: None,
            met: None,
            detail: String::new(),
            http_ceiling: None,
            db_ceiling: None,
        }
    }

    #[tokio::test]
    async fn results_are_rewritten_whole_after_each_scenario_and_say_whether_the_run_completed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        let results = Results::new(&path, true, json!({"backend": "sqlite"})).await;
        let read = || serde_json::from_slice::<Value>(&std::fs::read(&path).unwrap()).unwrap();

        results.write(&[figure("first")], &[], false).unwrap();
        let partial = read();
        assert_eq!(partial["complete"], false, "a run with scenarios still to come");
        assert_eq!(partial["figures"][0]["scenario"], "first");

        results.write(&[figure("first"), figure("second")], &[], true).unwrap();
        let whole = read();
        assert_eq!(whole["complete"], true);
        assert_eq!(whole["figures"].as_array().unwrap().len(), 2);
        assert_eq!(whole["options"]["backend"], "sqlite");
        assert_eq!(whole["machine"]["quick"], true);
        assert!(
            !path.with_extension("json.partial").exists(),
            "the file is written beside the results, then renamed over them"
        );
    }
}
