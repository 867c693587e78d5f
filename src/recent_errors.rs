//! The server's recent warnings and errors, kept in memory for `roomlog status` and
//! `/api/status`, so that an operator need not grep a log file.
//!
//! A `tracing` layer records every WARN and ERROR event into a ring of [`RING_MAX`] entries.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Entries kept; older ones are dropped.
pub const RING_MAX: usize = 100;

static RING: Mutex<VecDeque<RecentError>> = Mutex::new(VecDeque::new());

/// One warning or error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecentError {
    pub at_unix_ms: u64,
    pub level: String,
    pub target: String,
    /// The message followed by the event's fields, `key=value`.
    pub message: String,
}

/// The entries, oldest first.
pub fn snapshot() -> Vec<RecentError> {
    RING.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
}

/// The layer to add to the subscriber.
#[derive(Debug, Default)]
pub struct RecentErrorsLayer;

impl<S: Subscriber> Layer<S> for RecentErrorsLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let entry = RecentError {
            at_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            level: level.to_string().to_lowercase(),
            target: event.metadata().target().to_owned(),
            message: text.message + &text.fields,
        };
        let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == RING_MAX {
            ring.pop_front();
        }
        ring.push_back(entry);
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn warnings_and_errors_are_kept_with_their_fields_and_info_is_not() {
        let subscriber = tracing_subscriber::registry().with(RecentErrorsLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(room = "lobby", "room actor failed, restarting");
            tracing::error!(error = %"disk full", "log group commit failed");
        });
        let kept = snapshot();
        let texts: Vec<_> = kept.iter().map(|e| (e.level.as_str(), e.message.as_str())).collect();
        assert!(texts.contains(&("warn", "room actor failed, restarting room=lobby")), "{texts:?}");
        assert!(texts.contains(&("error", "log group commit failed error=disk full")), "{texts:?}");
        assert!(!texts.iter().any(|(_, m)| m.contains("not kept")));
    }
}
