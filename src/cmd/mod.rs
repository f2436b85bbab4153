//! The subcommands.

pub mod agent;
pub mod agent_status;
pub mod ban;
pub mod check;
pub mod demo;
pub mod relay;
pub mod share;
pub mod token;
pub mod user;

use crate::cli::{Cli, Command};

/// Run the chosen subcommand.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Relay(args) => relay::run(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Token(cmd) => token::run(cmd),
        Command::User(cmd) => user::run(cmd),
        Command::Share(args) => share::run(args),
        Command::Ban(cmd) => ban::run(cmd),
        Command::AdminToken(r) => {
            let config = relay::config_of_ref(&r)?;
            let token = ::relay::admin::load_or_create_token(&config)?;
            eprintln!(
                "admin API on http://{a}/ (status page: http://{a}/#TOKEN)",
                a = config.listen.admin
            );
            println!("{token}");
            Ok(())
        }
        Command::Check { config } => check::run(&config),
    }
}
