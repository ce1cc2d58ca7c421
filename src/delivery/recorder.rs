//! Records events from every source through one lock: the delivery state decides what is new (and
//! names each change), the store commits it, then the state counts it and the history's metrics are
//! recomputed. Polling and webhooks therefore never count one change twice.

use std::sync::Arc;

use super::{Delivery, Event, Source};
use crate::metrics::publish::Publisher;
use crate::store::{EventStore, StoreError};

/// What one recording did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub recorded: usize,
    pub duplicates: usize,
}

pub struct Recorder {
    store: EventStore,
    delivery: tokio::sync::Mutex<Delivery>,
    publisher: Arc<Publisher>,
}

impl Recorder {
    pub fn new(store: EventStore, delivery: Delivery, publisher: Arc<Publisher>) -> Recorder {
        publisher.set_history(&delivery);
        Recorder {
            store,
            delivery: tokio::sync::Mutex::new(delivery),
            publisher,
        }
    }

    /// Builds events from the current state with `make`, commits the new ones, then counts them.
    /// On a store error nothing is counted: the sender (or the next poll) tries again.
    pub async fn record(
        &self,
        source: Source,
        now_ms: i64,
        make: impl FnOnce(&Delivery) -> Vec<Event>,
    ) -> Result<Outcome, StoreError> {
        let mut delivery = self.delivery.lock().await;
        let events = make(&delivery);
        if events.is_empty() {
            return Ok(Outcome::default());
        }
        let counter = &self.publisher.exporter.events;
        let added = match self.store.append(&events, now_ms).await {
            Ok(added) => added,
            Err(e) => {
                counter
                    .with_label_values(&[source.as_str(), "error"])
                    .inc_by(events.len() as u64);
                self.publisher.mark_stale();
                tracing::error!(source = source.as_str(), error = %e, events = events.len(), "cannot store delivery events");
                return Err(e);
            }
        };
        for e in &added {
            tracing::info!(kind = e.kind.as_str(), source = e.source.as_str(), subject = e.subject.as_str(), model = %e.model, target = %e.target, version = ?e.version, "delivery event recorded");
            delivery.apply(e);
        }
        let outcome = Outcome {
            recorded: added.len(),
            duplicates: events.len() - added.len(),
        };
        counter
            .with_label_values(&[source.as_str(), "recorded"])
            .inc_by(outcome.recorded as u64);
        counter
            .with_label_values(&[source.as_str(), "duplicate"])
            .inc_by(outcome.duplicates as u64);
        if outcome.recorded > 0 {
            self.publisher.set_history(&delivery);
        }
        self.publisher.mark_stale();
        Ok(outcome)
    }

    /// The folded history; recording waits while it is held.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Delivery> {
        self.delivery.lock().await
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }
}
