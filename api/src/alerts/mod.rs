//! Alerts out (issue 20): `Fluxplane.Fleet/alertReceivers` (a signed webhook, Slack, Microsoft Teams) and
//! `alertRules` (which events, narrowed how, how bad, how often per subject), and the durable outbox that delivers
//! them. Events are queued in the transaction that records them (migrations 0019/0017, `store::alerts`), matched
//! against the rules and turned into one message per receiver in one transaction, and sent at least once with
//! backoff, within each receiver's rate limit, by whichever replica leases them (`outbox`).

pub mod message;
pub mod model;
pub mod outbox;
pub mod receivers;
pub mod receivers_service;
pub mod rules;
pub mod rules_service;
