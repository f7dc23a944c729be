//! Wake-ups for long-polling agents.
//!
//! Every writer of a cluster's desired state calls `notify` with the cluster's key; every waiting poll holds a
//! receiver for its cluster's key, taken before it reads the revision, so a write between the read and the wait
//! still wakes it. On PostgreSQL the store also forwards the `fluxplane_desired` notifications of other replicas
//! here. A wake-up that is lost costs nothing but latency: the poll answers the full desired state when its wait
//! runs out.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

#[derive(Debug)]
pub struct Notifier {
    channels: Mutex<HashMap<String, watch::Sender<u64>>>,
    closing: watch::Sender<bool>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            closing: watch::channel(false).0,
        }
    }
}

impl Notifier {
    /// A receiver that changes whenever the cluster's desired state may have changed.
    pub fn subscribe(&self, cluster_key: &str) -> watch::Receiver<u64> {
        let mut channels = self.channels.lock().expect("the notifier lock is never poisoned");
        channels
            .entry(cluster_key.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the polls waiting on the cluster.
    pub fn notify(&self, cluster_key: &str) {
        let mut channels = self.channels.lock().expect("the notifier lock is never poisoned");
        if let Some(sender) = channels.get(cluster_key) {
            if sender.receiver_count() == 0 {
                channels.remove(cluster_key);
            } else {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes every waiting poll: after a gap in which notifications may have been missed.
    pub fn notify_all(&self) {
        let mut channels = self.channels.lock().expect("the notifier lock is never poisoned");
        channels.retain(|_, sender| sender.receiver_count() > 0);
        for sender in channels.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Ends every wait at once, now and for polls that start later: the server is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes when `close` has been called.
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|closed| *closed).await;
    }

    /// How many clusters have polls waiting (for tests and metrics).
    pub fn waiting_clusters(&self) -> usize {
        let channels = self.channels.lock().expect("the notifier lock is never poisoned");
        channels.values().filter(|s| s.receiver_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_notification_wakes_only_its_cluster() {
        let notifier = Notifier::default();
        let mut a = notifier.subscribe("s/rg/a");
        let mut b = notifier.subscribe("s/rg/b");
        notifier.notify("s/rg/a");
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.changed())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_notification_before_the_wait_is_not_lost() {
        let notifier = Notifier::default();
        let mut a = notifier.subscribe("k");
        notifier.notify("k");
        // the poll only now starts waiting
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn channels_without_waiters_are_dropped_and_close_ends_every_wait() {
        let notifier = Notifier::default();
        drop(notifier.subscribe("k"));
        notifier.notify("k");
        assert_eq!(notifier.channels.lock().unwrap().len(), 0);
        notifier.close();
        tokio::time::timeout(Duration::from_secs(1), notifier.closed())
            .await
            .unwrap();
    }
}
