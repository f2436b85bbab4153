//! `periscope ban list|clear`

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use relay::access::bans::BanFile;

use crate::cli::BanCommand;

/// Run a ban subcommand.
pub fn run(cmd: BanCommand) -> anyhow::Result<()> {
    match cmd {
        BanCommand::List { relay } => {
            let config = super::relay::config_of_ref(&relay)?;
            let file = BanFile::load(&config.data_dir)?;
            let now = relay::token::unix_now(SystemTime::now());
            let active: Vec<_> = file
                .bans
                .iter()
                .filter(|b| b.until == 0 || b.until > now)
                .collect();
            if active.is_empty() {
                eprintln!("no banned addresses");
            }
            for b in active {
                let until = if b.until == 0 {
                    "forever".to_string()
                } else {
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(b.until))
                        .to_string()
                };
                println!("{}\tuntil {until}\tlast user tried: {:?}", b.ip, b.user);
            }
        }
        BanCommand::Clear { relay, ip, all } => {
            let config = super::relay::config_of_ref(&relay)?;
            let mut file = BanFile::load(&config.data_dir)?;
            let before = file.bans.len();
            file.bans.retain(|b| !all && Some(b.ip) != ip);
            let n = before - file.bans.len();
            file.save(&config.data_dir)?;
            eprintln!("lifted {n} ban(s); a running relay follows within a second");
        }
    }
    Ok(())
}
