//! The `periscope` command line: argument parsing ([`cli`]), config files with precise errors
//! ([`config_file`]), logging ([`telemetry`]) and the subcommands ([`cmd`]); plus `periscope
//! demo` ([`demo`]) and its built-in test camera ([`camera`]). All the real work is
//! in the `periscope-relay` and `periscope-agent` crates; this is a thin library so that
//! `tests/` can reuse the same code paths.

pub mod camera;
pub mod cli;
pub mod cmd;
pub mod config_file;
pub mod demo;
pub mod reload;
pub mod signal;
pub mod telemetry;
