//! The embedded bus: an in-process tokio channel behind [`Publisher`] and [`Subscriber`].
//!
//! `etcdmon up` runs collector and alerter in one process, so there is no network to
//! lose a candidate on and no second process to crash independently: a candidate handed
//! to the channel is delivered exactly once, in order, and acks are no-ops. What the
//! channel does not give is persistence, which the embedded mode does not promise (after
//! a restart the rules re-evaluate and publish the current state again).
//!
//! The channel holds at most `capacity` candidates. [`MemoryPublisher::publish`] waits
//! while it is full, which is back-pressure on the [`crate::OutboxTask`] only: the
//! collector itself sends through the outbox, which never blocks and has its own byte
//! bound.

use crate::{AlertCandidate, BusError, Delivery, Publisher, Subscriber};

/// Creates a connected publisher and subscriber holding at most `capacity` (at least 1)
/// candidates in flight.
pub fn channel(capacity: usize) -> (MemoryPublisher, MemorySubscriber) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (MemoryPublisher { tx }, MemorySubscriber { rx })
}

/// The sending half of [`channel`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryPublisher {
    tx: tokio::sync::mpsc::Sender<AlertCandidate>,
}

/// The receiving half of [`channel`].
#[derive(Debug)]
pub struct MemorySubscriber {
    rx: tokio::sync::mpsc::Receiver<AlertCandidate>,
}

#[async_trait::async_trait]
impl Publisher for MemoryPublisher {
    /// Hands the candidate to the subscriber, waiting while the channel is full;
    /// [`BusError::Closed`] once the subscriber is dropped.
    async fn publish(&self, candidate: &AlertCandidate) -> Result<(), BusError> {
        self.tx
            .send(candidate.clone())
            .await
            .map_err(|_| BusError::Closed)
    }
}

#[async_trait::async_trait]
impl Subscriber for MemorySubscriber {
    /// The next candidate; [`BusError::Closed`] once every publisher is dropped and the
    /// channel is drained.
    async fn next(&mut self) -> Result<Delivery, BusError> {
        self.rx
            .recv()
            .await
            .map(Delivery::unacked)
            .ok_or(BusError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdmon_alert::AlertState;

    fn candidate(transition: u64) -> AlertCandidate {
        AlertCandidate {
            fingerprint: "fp".into(),
            state: AlertState::Firing,
            labels: [("cluster".to_owned(), "c1".to_owned())].into(),
            annotations: [("summary".to_owned(), "s".to_owned())].into(),
            value: 2.0,
            active_since_ms: 10,
            transition,
            evaluated_ms: 20,
        }
    }

    #[tokio::test]
    async fn round_trip_in_order_then_closed() {
        let (publisher, mut subscriber) = channel(4);
        for t in 1..=3 {
            publisher.publish(&candidate(t)).await.unwrap();
        }
        for t in 1..=3 {
            let delivery = subscriber.next().await.unwrap();
            assert_eq!(delivery.candidate, candidate(t));
            assert_eq!(delivery.redelivered(), 0);
            delivery.ack().await.unwrap();
        }
        drop(publisher);
        assert_eq!(subscriber.next().await.unwrap_err(), BusError::Closed);
    }

    #[tokio::test]
    async fn publish_to_a_dropped_subscriber_is_closed() {
        let (publisher, subscriber) = channel(1);
        drop(subscriber);
        let err = publisher.publish(&candidate(1)).await.unwrap_err();
        assert_eq!(err, BusError::Closed);
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn full_channel_waits_for_the_subscriber() {
        let (publisher, mut subscriber) = channel(1);
        publisher.publish(&candidate(1)).await.unwrap();
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            publisher.publish(&candidate(2)),
        )
        .await;
        assert!(blocked.is_err(), "publish into a full channel returned");
        assert_eq!(subscriber.next().await.unwrap().candidate.transition, 1);
        publisher.publish(&candidate(2)).await.unwrap();
        assert_eq!(subscriber.next().await.unwrap().candidate.transition, 2);
    }
}
