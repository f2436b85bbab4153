//! `periscope demo`: relay + agent + built-in test camera on loopback.

use crate::{
    cli::DemoArgs,
    demo::{self, DemoOptions},
};

/// Start the demo, print the box, run until SIGINT/SIGTERM.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let shutdown = crate::signal::shutdown_token()?;
    let demo = demo::start(
        DemoOptions {
            https_port: args.port,
            ..DemoOptions::default()
        },
        shutdown,
    )
    .await?;
    println!("\n{}", demo.banner());
    demo.wait().await;
    eprintln!("periscope demo stopped");
    Ok(())
}
