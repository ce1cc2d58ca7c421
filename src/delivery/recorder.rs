//! Records events from every source through one lock: the delivery state decides what is new (and
//! names each change), the store commits it, then the state counts it and the history's metrics are
//! recomputed. Polling and webhooks therefore never count one change twice.

use std::sync::Arc;

use super::{Delivery, Event, Source};
use crate::store::{EventStore, StoreError};
use crate::telemetry::Telemetry;

/// Told the history after every change (the publisher recomputes its families).
pub type OnHistory = Box<dyn Fn(&Delivery) + Send + Sync>;

/// What one recording did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub recorded: usize,
    pub duplicates: usize,
}

pub struct Recorder {
    store: EventStore,
    delivery: tokio::sync::Mutex<Delivery>,
    telemetry: Arc<Telemetry>,
    on_history: OnHistory,
}

impl Recorder {
    pub fn new(
        store: EventStore,
        delivery: Delivery,
        telemetry: Arc<Telemetry>,
        on_history: OnHistory,
    ) -> Recorder {
        on_history(&delivery);
        Recorder {
            store,
            delivery: tokio::sync::Mutex::new(delivery),
            telemetry,
            on_history,
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
        let added = match self.store.append(&events, now_ms).await {
            Ok(added) => added,
            Err(e) => {
                self.telemetry.events_not_stored(source, events.len(), &e);
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
        self.telemetry
            .events_recorded(source, outcome.recorded, outcome.duplicates);
        if outcome.recorded > 0 {
            (self.on_history)(&delivery);
        }
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
