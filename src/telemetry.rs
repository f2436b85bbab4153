//! Logging: `PERISCOPE_LOG` (or `RUST_LOG`) filters, `--log-format text|json`.

use tracing_subscriber::{fmt, EnvFilter};

/// Install the global subscriber.
pub fn init(format: &str) {
    let filter = std::env::var("PERISCOPE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter `{filter}`: {e}; using `info`");
        EnvFilter::new("info")
    });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.with_target(false).try_init()
    };
}
