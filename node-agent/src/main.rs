//! `cni-rs-node`: the node agent of the cni-rs suite. See README "On a kubeadm cluster"
//! and the `node-agent` section of the configuration reference.

use std::process::ExitCode;

use clap::Parser;

use cni_rs_node::config::{Cli, Command};
use cni_rs_node::{agent, cleanup, error, info, install, uninstall};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the agent waits on the API server and the kernel; nothing it does
    // needs a second core, and a single thread keeps its memory small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => agent::run(cli.flags).await,
            Command::Cleanup => cleanup::run(cli.flags).await,
            Command::Install(args) => install::run_install(&args),
            Command::Uninstall(args) => uninstall::run(cli.flags, args).await,
            Command::Pause => pause().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for SIGTERM (or SIGINT): a container that only has to stay up.
async fn pause() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    info!("pause: waiting for SIGTERM");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
