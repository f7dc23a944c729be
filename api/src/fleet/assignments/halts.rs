//! How a tripped circuit breaker (`fleet::breaker`) halts a policy assignment: through its rollout's state, as a
//! rollout's own failures do (`model::gate_rollout` holds back what a halted rollout has not reached).

use chrono::{DateTime, Utc};

use super::model::{RolloutPhase, RolloutState};

/// The rollout state that halts an assignment at `generation` for a trip, or `None` when it is halted already. A
/// rollout in progress halts where it is (the batches it reached keep the generation, the others keep what they
/// had); an assignment at rest halts with every batch reached (`batches`: how many its rollout has, 0 without one),
/// so that its status says why and a corrected template is what goes on, as after any halt.
pub fn halt(
    current: Option<&RolloutState>,
    generation: i64,
    batches: usize,
    message: String,
    now: DateTime<Utc>,
) -> Option<RolloutState> {
    match current.filter(|s| s.generation == generation) {
        Some(s) if s.state == RolloutPhase::Halted => None,
        Some(s) if s.state == RolloutPhase::Progressing => Some(RolloutState {
            state: RolloutPhase::Halted,
            message: Some(message),
            ..s.clone()
        }),
        other => Some(RolloutState {
            generation,
            state: RolloutPhase::Halted,
            batch: batches,
            batch_started_at: now,
            failures: other.map_or(0, |s| s.failures),
            message: Some(message),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: i64, phase: RolloutPhase, batch: usize) -> RolloutState {
        RolloutState {
            generation,
            state: phase,
            batch,
            batch_started_at: Utc::now(),
            failures: 1,
            message: None,
        }
    }

    #[test]
    fn a_rollout_in_progress_halts_where_it_is_and_one_at_rest_with_every_batch_reached() {
        let now = Utc::now();
        let moving = state(3, RolloutPhase::Progressing, 1);
        let halted = halt(Some(&moving), 3, 5, "why".into(), now).unwrap();
        assert_eq!(
            (halted.state, halted.batch, halted.failures),
            (RolloutPhase::Halted, 1, 1)
        );
        assert_eq!(halted.message.as_deref(), Some("why"));

        let done = state(3, RolloutPhase::Completed, 5);
        let halted = halt(Some(&done), 3, 5, "why".into(), now).unwrap();
        assert_eq!((halted.state, halted.batch), (RolloutPhase::Halted, 5));

        let older = state(2, RolloutPhase::Progressing, 0);
        let halted = halt(Some(&older), 3, 4, "why".into(), now).unwrap();
        assert_eq!((halted.generation, halted.batch, halted.failures), (3, 4, 0));
        assert_eq!(halt(None, 3, 0, "why".into(), now).unwrap().batch, 0);

        let already = state(3, RolloutPhase::Halted, 2);
        assert_eq!(halt(Some(&already), 3, 5, "why".into(), now), None, "halted once");
    }
}
