//! Agent errors.

use std::{io, path::PathBuf};

/// Errors that stop the agent from starting. Once running, the agent never exits on a
/// network error: it reconnects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read.
    #[error("{}: {error}", path.display())]
    File {
        /// Which file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A tunnel target could not be resolved at start.
    #[error("tunnel `{tunnel}`: cannot resolve target {target}: {detail}")]
    Resolve {
        /// Tunnel name.
        tunnel: String,
        /// Its target.
        target: String,
        /// Why.
        detail: String,
    },
    /// TLS setup failed.
    #[error("TLS setup: {0}")]
    Tls(String),
}
