//! `periscope check --config FILE`

use std::path::Path;

use crate::config_file::{load_any, AnyConfig};

/// Validate a config and print its effective settings (secrets masked).
pub fn run(path: &Path) -> anyhow::Result<()> {
    let text = match load_any(path)? {
        AnyConfig::Relay(c) => {
            eprintln!("{}: valid relay configuration", path.display());
            for a in c.access.iter().filter(|a| a.public) {
                eprintln!(
                    "warning: [[access]] {} is public: anyone on the internet can reach it without a login",
                    a.host
                );
            }
            toml::to_string_pretty(&c)?
        }
        AnyConfig::Agent(mut c) => {
            eprintln!("{}: valid agent configuration", path.display());
            if c.token.is_some() {
                c.token = Some(proto::Secret::new("********"));
            }
            toml::to_string_pretty(&c)?
        }
    };
    println!("{text}");
    Ok(())
}
