//! Command-line interface (clap derive). Names here are part of the interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Periscope: your recorder at a public https hostname, no router configuration.
#[derive(Debug, Parser)]
#[command(name = "periscope", version, about)]
pub struct Cli {
    /// Log format: text or json. Filter with PERISCOPE_LOG (e.g. `debug`, `info,periscope_relay=debug`).
    #[arg(long, global = true, default_value = "text", env = "PERISCOPE_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (on the VPS).
    Relay(RelayArgs),
    /// Run the agent (next to the recorder).
    Agent(AgentArgs),
    /// Relay + agent + a built-in test camera on loopback, in one process: prints the URL to
    /// open; Ctrl-C stops it.
    Demo(DemoArgs),
    /// Issue or revoke agent tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the relay's admin API token (created on first use) and where the API listens.
    AdminToken(RelayRef),
    /// Manage visitor accounts (the users file; argon2id hashes). A running relay picks up
    /// changes within a second.
    #[command(subcommand)]
    User(UserCommand),
    /// Print a time-limited share link for one hostname (`share revoke ID` ends one).
    Share(ShareArgs),
    /// List or lift bans of addresses that failed to log in too often.
    #[command(subcommand)]
    Ban(BanCommand),
    /// Validate a relay.toml or agent.toml and print the effective settings.
    Check {
        /// The file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `periscope relay`
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// relay.toml
    #[arg(long, short, env = "PERISCOPE_CONFIG", required_unless_present = "dev")]
    pub config: Option<PathBuf>,
    /// Development mode: loopback only, self-signed certificate, data in ./periscope-dev-data;
    /// prints a ready-to-paste agent command.
    #[arg(long)]
    pub dev: bool,
    /// Override `data_dir`.
    #[arg(long, env = "PERISCOPE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Override `listen.quic`.
    #[arg(long, env = "PERISCOPE_LISTEN_QUIC")]
    pub quic: Option<std::net::SocketAddr>,
}

/// `periscope demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// HTTPS port on 127.0.0.1 (default: 8443 if free, else any free port).
    #[arg(long, env = "PERISCOPE_DEMO_PORT")]
    pub port: Option<u16>,
}

/// `periscope agent`
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    /// `periscope agent status`: what the running agent is doing.
    #[command(subcommand)]
    pub action: Option<AgentAction>,
    /// Where the running agent keeps its status (default: $XDG_RUNTIME_DIR/periscope-agent.json,
    /// else /tmp/periscope-agent-UID.json).
    #[arg(long, env = "PERISCOPE_STATUS_FILE", global = true)]
    pub status_file: Option<PathBuf>,
    /// agent.toml (flags below override its values).
    #[arg(long, short, env = "PERISCOPE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Relay address, HOST:PORT.
    #[arg(long, env = "PERISCOPE_RELAY")]
    pub relay: Option<String>,
    /// Agent token.
    #[arg(long, env = "PERISCOPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the agent token.
    #[arg(long, env = "PERISCOPE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Pin the relay certificate: sha256:HEX as printed by the relay.
    #[arg(long, env = "PERISCOPE_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Trust this CA file (PEM) for the relay's certificate.
    #[arg(long, env = "PERISCOPE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the relay's certificate.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Transport to the relay: auto (QUIC, falling back to TLS over TCP when UDP is blocked),
    /// quic or tcp.
    #[arg(long, env = "PERISCOPE_TRANSPORT", value_parser = ["auto", "quic", "tcp"])]
    pub transport: Option<String>,
    /// The relay's https listener HOST:PORT for the TCP fallback (default: the relay address).
    #[arg(long, env = "PERISCOPE_RELAY_HTTPS")]
    pub relay_https: Option<String>,
    /// QUIC keep-alive interval (e.g. 2s): how fast a silently restarted relay is noticed.
    #[arg(long, env = "PERISCOPE_KEEP_ALIVE", value_parser = humantime::parse_duration)]
    pub keep_alive: Option<std::time::Duration>,
    /// QUIC congestion controller for what the agent sends: cubic or bbr.
    #[arg(long, env = "PERISCOPE_CONGESTION", value_parser = ["cubic", "bbr"])]
    pub congestion: Option<String>,
    /// TCP tunnel NAME=HOST:PORT:REMOTEPORT, e.g. ssh=127.0.0.1:22:2222 (repeatable).
    #[arg(long = "tcp", value_name = "NAME=ADDR:REMOTEPORT")]
    pub tcp: Vec<String>,
    /// HTTP tunnel NAME=HOST:PORT (repeatable).
    #[arg(long = "http", value_name = "NAME=ADDR")]
    pub http: Vec<String>,
    /// UDP tunnel NAME=HOST:PORT:REMOTEPORT (repeatable).
    #[arg(long = "udp", value_name = "NAME=ADDR:REMOTEPORT")]
    pub udp: Vec<String>,
}

/// `periscope agent …` actions.
#[derive(Debug, Clone, Subcommand)]
pub enum AgentAction {
    /// Show the running agent's state, transport, last error and public URLs (exit 0 when
    /// connected, 1 otherwise).
    Status,
}

/// `periscope token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new agent token.
    Issue {
        #[command(flatten)]
        relay: RelayRef,
        /// Agent name (lowercase letters, digits, dashes).
        #[arg(long)]
        agent: String,
        /// Hostname the agent may publish; `*.DOMAIN` patterns allowed (repeatable).
        /// Default: `AGENT.DOMAIN`.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// TCP port or range the agent may open, e.g. 2222 or 8000-8100 (repeatable).
        #[arg(long = "tcp-port")]
        tcp_ports: Vec<String>,
        /// UDP port or range the agent may open (repeatable).
        #[arg(long = "udp-port")]
        udp_ports: Vec<String>,
        /// Lifetime, e.g. 90d, 12h.
        #[arg(long, default_value = "90d")]
        ttl: String,
    },
    /// Revoke a token by its id (jti); a connected agent using it is disconnected.
    Revoke {
        #[command(flatten)]
        relay: RelayRef,
        /// The token id.
        jti: String,
    },
}

/// Which relay a token command acts on.
#[derive(Debug, Args)]
pub struct RelayRef {
    /// relay.toml
    #[arg(long, short, env = "PERISCOPE_CONFIG", required_unless_present = "dev")]
    pub config: Option<PathBuf>,
    /// The `periscope relay --dev` relay.
    #[arg(long)]
    pub dev: bool,
}

/// `periscope user …`. Passwords are read from the terminal (echo off) or from stdin, never
/// from the command line.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        #[command(flatten)]
        relay: RelayRef,
        /// Login name (letters, digits, `._@-`).
        name: String,
        /// Hostname (or `*.domain`) this user may open (repeatable; default: all).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Remove a user; their sessions end.
    Remove {
        #[command(flatten)]
        relay: RelayRef,
        /// Login name.
        name: String,
    },
    /// List users.
    List {
        #[command(flatten)]
        relay: RelayRef,
    },
    /// Change a user's password.
    Passwd {
        #[command(flatten)]
        relay: RelayRef,
        /// Login name.
        name: String,
    },
    /// Disable a user (their sessions end) without deleting them.
    Disable {
        #[command(flatten)]
        relay: RelayRef,
        /// Login name.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        #[command(flatten)]
        relay: RelayRef,
        /// Login name.
        name: String,
    },
}

/// `periscope share --host H --ttl 24h`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ShareArgs {
    /// `revoke`.
    #[command(subcommand)]
    pub command: Option<ShareCommand>,
    #[command(flatten)]
    pub relay: Option<RelayRef>,
    /// The hostname the link opens (and only that one).
    #[arg(long)]
    pub host: Option<String>,
    /// Lifetime of the link, e.g. 24h, 7d.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Who the link is for (shown in the relay's log).
    #[arg(long, default_value = "")]
    pub user_label: String,
}

/// `periscope share revoke`
#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Revoke a share link by its id; sessions opened with it end within seconds.
    Revoke {
        #[command(flatten)]
        relay: RelayRef,
        /// The link id printed by `periscope share`.
        id: String,
    },
}

/// `periscope ban …`
#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// List banned addresses.
    List {
        #[command(flatten)]
        relay: RelayRef,
    },
    /// Lift the ban of an address (or all with --all).
    Clear {
        #[command(flatten)]
        relay: RelayRef,
        /// The address.
        #[arg(required_unless_present = "all")]
        ip: Option<std::net::IpAddr>,
        /// Lift every ban.
        #[arg(long)]
        all: bool,
    },
}
