//! The relay's recent warnings and errors, for the status page: a `tracing` layer keeps the
//! newest [`KEEP`] WARN/ERROR events of this crate in memory, where `GET /api/errors` reads
//! them. The binary installs [`RecentErrors`] next to its log output; nothing is kept
//! without it. Log lines never carry secrets (tokens are masked types), so neither does this.

use std::{collections::VecDeque, fmt::Write as _, sync::Mutex, time::SystemTime};

use serde::Serialize;
use tracing::{
    field::{Field, Visit},
    Event, Level, Subscriber,
};
use tracing_subscriber::{layer::Context, Layer};

/// Events kept.
pub const KEEP: usize = 100;
/// Longest message kept, in bytes.
const MAX_MESSAGE: usize = 512;

/// One warning or error as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentEvent {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// `WARN` or `ERROR`.
    pub level: &'static str,
    /// The module that logged it.
    pub target: String,
    /// The message and its fields.
    pub message: String,
}

static RECENT: Mutex<VecDeque<RecentEvent>> = Mutex::new(VecDeque::new());

/// The layer that records this crate's warnings and errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecentErrors;

impl<S: Subscriber> Layer<S> for RecentErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // Level order: ERROR < WARN < INFO < …
        if *meta.level() > Level::WARN || !meta.target().starts_with("periscope_relay") {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.message;
        message.push_str(&text.fields);
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let e = RecentEvent {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            level: if *meta.level() == Level::ERROR {
                "ERROR"
            } else {
                "WARN"
            },
            target: meta.target().to_string(),
            message,
        };
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEEP {
            recent.pop_front();
        }
        recent.push_back(e);
    }
}

/// The recorded events, newest first.
pub fn recent() -> Vec<RecentEvent> {
    let recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    recent.iter().rev().cloned().collect()
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_the_newest_warnings_of_this_crate_only() {
        let subscriber = tracing_subscriber::registry().with(RecentErrors);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "periscope_relay::test", agent = "cam", n = 3, "first {}", 1);
            assert_eq!(recent()[0].message, "first 1 agent=cam n=3");
            tracing::info!(target: "periscope_relay::test", "not kept");
            tracing::error!(target: "other_crate", "not ours");
            for i in 0..KEEP {
                tracing::error!(target: "periscope_relay::test", "event {i}");
            }
            tracing::warn!(target: "periscope_relay::test", "{}", "é".repeat(MAX_MESSAGE));
        });
        let got = recent();
        assert_eq!(got.len(), KEEP);
        assert!(got[0].message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert_eq!(got[1].message, format!("event {}", KEEP - 1));
        assert_eq!(got[1].level, "ERROR");
        assert!(got.iter().all(|e| !e.message.contains("not")));
        // The oldest fell out of the window.
        assert!(!got.iter().any(|e| e.message.starts_with("first")));
    }
}
