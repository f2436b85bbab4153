//! Relay errors.

use std::{io, path::PathBuf};

/// Errors starting or running the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Invalid configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    File {
        /// Which file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A key or certificate could not be used.
    #[error("{0}")]
    Key(String),
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// Address.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] proto::transport::quic::ConfigError),
}

impl RelayError {
    pub(crate) fn file(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> RelayError {
        let path = path.into();
        move |error| RelayError::File { path, error }
    }
}
