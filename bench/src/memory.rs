//! Server memory with idle long-polls: `agents` simulated agents (in the simulator's process) register and
//! long-poll until the server holds a poll for every one; the resident set of this process, which runs the server,
//! is read before the fleet connects and with every poll held. The figure is the whole process's: the server plus
//! the idle load generator and whatever earlier scenarios left allocated, so it bounds the server's from above.
//! Memory has no HTTP or database equivalent: no ceiling. Beside the resident set, the figure says what the program
//! holds allocated (jemalloc's own count), which a code change moves, and what the allocator keeps resident for it,
//! which also moves with the machine and the allocator's timing: the same commit has measured 21 to 37 KiB of
//! resident set per poll on different machines of one kind.

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

/// What the allocator says, in MiB: bytes the program holds allocated, and bytes the allocator keeps resident
/// (those, its own metadata, and freed pages it has not yet returned to the system).
pub(crate) struct Heap {
    pub allocated: f64,
    pub resident: f64,
}

pub(crate) fn heap() -> anyhow::Result<Heap> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // the statistics are a snapshot taken when the epoch advances
    epoch::advance().map_err(|err| anyhow::anyhow!("jemalloc's epoch: {err}"))?;
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    Ok(Heap {
        allocated: mib(stats::allocated::read().map_err(|err| anyhow::anyhow!("jemalloc's allocated: {err}"))?),
        resident: mib(stats::resident::read().map_err(|err| anyhow::anyhow!("jemalloc's resident: {err}"))?),
    })
}

/// Longer than jemalloc's dirty-page decay (10 s), over which it returns the pages freed memory leaves behind.
pub(crate) const ALLOCATOR_DECAY: Duration = Duration::from_secs(15);

/// Reads the memory of the server holding `agents` idle long-polls. The figure is read once the allocator has
/// returned what the fleet's arrival freed (`decay`, none in a quick run): the arrival is a storm of registrations
/// and first polls whose freed pages jemalloc keeps for up to 10 s, memory the idle server does not hold. The
/// reading as the polls settled is in the detail.
pub async fn memory(
    target: &Target,
    agents: usize,
    decay: Duration,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let (before, heap_before) = (resident_mib()?, heap()?);
    let started = Instant::now();
    let mut fleet = Fleet::spawn(target, agents, &[], Apply::default()).await?;
    let notifier = &target.server.state.notifier;
    fleet
        .settled(|| notifier.waiting_clusters(), agents, Duration::from_secs(600))
        .await?;
    let arrived = resident_mib()?;
    eprintln!(
        "  {} polls held after {:.1} s: {arrived:.1} MiB RSS",
        notifier.waiting_clusters(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(decay).await;
    let held = notifier.waiting_clusters();
    let (idle, heap_idle) = (resident_mib()?, heap()?);
    fleet.stop().await?;
    let per_poll = |before: f64, after: f64| (after - before) * 1024.0 / held.max(1) as f64;
    figures.push(Figure {
        backend,
        scenario: format!("server memory, {held} idle long-polls"),
        value: idle,
        unit: "MiB RSS",
        target: Some(format!("< {TARGET_MIB:.0} MiB")),
        met: Some(idle < TARGET_MIB),
        detail: format!(
            "VmRSS of the process running the server {:.0} s after the polls settled: {before:.1} MiB before the \
             fleet connected, {:.1} KiB more per poll held ({arrived:.1} MiB as they settled); of it, allocated by \
             the program {:.1} KiB per poll ({:.1} MiB in all), resident in jemalloc {:.1} KiB per poll; no ceiling \
             (memory has no HTTP or database equivalent)",
            decay.as_secs_f64(),
            per_poll(before, idle),
            per_poll(heap_before.allocated, heap_idle.allocated),
            heap_idle.allocated,
            per_poll(heap_before.resident, heap_idle.resident),
        ),
        http_ceiling: None,
        db_ceiling: None,
    });
    Ok(())
}
