//! Logging: `PERISCOPE_LOG` (or `RUST_LOG`) filters, `--log-format text|json`.

use tracing_subscriber::{
    filter::LevelFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer,
};

/// Install the global subscriber.
pub fn init(format: &str) {
    let filter = std::env::var("PERISCOPE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter `{filter}`: {e}; using `info`");
        EnvFilter::new("info")
    });
    // The relay's warnings and errors also go to its status page, whatever the log filter.
    let recent = relay::events::RecentErrors.with_filter(LevelFilter::WARN);
    let output = fmt::layer().with_writer(std::io::stderr);
    let output = if format == "json" {
        output.json().boxed()
    } else {
        output.with_target(false).boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(recent)
        .with(output.with_filter(filter))
        .try_init();
}
