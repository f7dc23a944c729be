//! Server memory with idle long-polls: `agents` simulated agents (in the simulator's process) register and
//! long-poll until the server holds a poll for every one; the resident set of this process, which runs the server,
//! is read before the fleet connects and with every poll held. The figure is the whole process's: the server plus
//! the idle load generator and whatever earlier scenarios left allocated, so it bounds the server's from above.
//! Memory has no HTTP or database equivalent: no ceiling.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::fleet::Fleet;
use crate::propagation::Apply;
use crate::{Figure, Target};

const TARGET_MIB: f64 = 256.0;

/// This process's resident set (`VmRSS`), in MiB.
pub(crate) fn resident_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("/proc/self/status without VmRSS")?;
    Ok(kib / 1024.0)
}

pub async fn memory(
    target: &Target,
    agents: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let before = resident_mib()?;
    let started = Instant::now();
    let mut fleet = Fleet::spawn(target, agents, &[], Apply::default()).await?;
    let notifier = &target.server.state.notifier;
    fleet
        .settled(|| notifier.waiting_clusters(), agents, Duration::from_secs(600))
        .await?;
    let held = notifier.waiting_clusters();
    let with_polls = resident_mib()?;
    eprintln!("  {held} polls held after {:.1} s", started.elapsed().as_secs_f64());
    fleet.stop().await?;
    figures.push(Figure {
        backend,
        scenario: format!("server memory, {held} idle long-polls"),
        value: with_polls,
        unit: "MiB RSS",
        target: Some(format!("< {TARGET_MIB:.0} MiB")),
        met: Some(with_polls < TARGET_MIB),
        detail: format!(
            "VmRSS of the process running the server: {before:.1} MiB before the fleet connected, {:.1} KiB more per \
             poll held; no ceiling (memory has no HTTP or database equivalent)",
            (with_polls - before) * 1024.0 / held.max(1) as f64
        ),
        http_ceiling: None,
        db_ceiling: None,
    });
    Ok(())
}
