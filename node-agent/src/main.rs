//! `cni-rs-node`: the node agent of the cni-rs suite. See README "On a kubeadm cluster"
//! and the `node-agent` section of the configuration reference.

use std::process::ExitCode;

use clap::Parser;

use cni_rs_node::config::{Cli, Command};
use cni_rs_node::{agent, cleanup, error};

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
