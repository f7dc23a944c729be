//! The rate limits of the Git receivers' webhook on one replica (`hook`): deliveries to all receivers together,
//! checked before a receiver is looked up, so that a flood of made-up hook ids costs the database nothing past the
//! limit; and deliveries per receiver, so that one noisy (or attacked) webhook does not use up the others' share.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

/// Deliveries per second to all receivers together, per replica, before any is looked up (and its burst).
const ALL_PER_SECOND: u32 = 200;
const ALL_BURST: u32 = 400;
/// Deliveries per second to one receiver, per replica (and its burst: a host pushing many branches at once).
const RECEIVER_PER_SECOND: u32 = 10;
const RECEIVER_BURST: u32 = 30;

/// The webhook's rate limits on this replica.
pub struct HookLimits {
    all: DefaultDirectRateLimiter,
    /// By receiver id: as many keys as receivers that were called, never more.
    per_receiver: DefaultKeyedRateLimiter<i64>,
}

impl Default for HookLimits {
    fn default() -> Self {
        let quota = |per_second: u32, burst: u32| {
            Quota::per_second(NonZeroU32::new(per_second).expect("a positive rate"))
                .allow_burst(NonZeroU32::new(burst).expect("a positive burst"))
        };
        Self {
            all: DefaultDirectRateLimiter::direct(quota(ALL_PER_SECOND, ALL_BURST)),
            per_receiver: DefaultKeyedRateLimiter::keyed(quota(RECEIVER_PER_SECOND, RECEIVER_BURST)),
        }
    }
}

impl HookLimits {
    /// Whether one more delivery, to any receiver, fits in the limit now.
    pub fn all(&self) -> bool {
        self.all.check().is_ok()
    }

    /// Whether one more delivery to the receiver (its id) fits in its limit now.
    pub fn receiver(&self, id: i64) -> bool {
        self.per_receiver.check_key(&id).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_gets_its_burst_and_then_waits_while_others_are_served() {
        let limits = HookLimits::default();
        let served = (0..RECEIVER_BURST + 5).filter(|_| limits.receiver(1)).count();
        assert_eq!(served, RECEIVER_BURST as usize);
        assert!(limits.receiver(2), "another receiver has its own share");
        let all = (0..ALL_BURST + 5).filter(|_| limits.all()).count();
        assert_eq!(all, ALL_BURST as usize);
    }
}
