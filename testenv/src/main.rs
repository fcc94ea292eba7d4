//! `adc-testenv up --dir DIR`: runs a local control plane in the foreground until SIGTERM or
//! SIGINT, for hack/local-cluster.sh and the demo. Writes DIR/kubeconfig and prints
//! `ready KUBECONFIG=DIR/kubeconfig` once kube-apiserver answers /readyz.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "A local etcd + kube-apiserver built from Go modules")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the control plane and keep it running until SIGTERM or SIGINT.
    Up {
        /// State directory: PKI, etcd data, logs, kubeconfig.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the directory holding the envtest binaries (etcd, kube-apiserver, kubectl, helm).
    BinDir,
}

/// Blocks until SIGTERM or SIGINT arrives.
fn wait_for_termination() -> std::io::Result<()> {
    // SAFETY: plain libc signal-mask calls on a set owned by this frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut signal = 0;
        if libc::sigwait(&set, &mut signal) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { dir } => {
            let plane = adc_testenv::ControlPlane::start_in(&dir)?;
            println!("ready KUBECONFIG={}", plane.kubeconfig().display());
            wait_for_termination()?;
            drop(plane);
            Ok(())
        }
        Command::BinDir => {
            println!("{}", adc_testenv::Binaries::locate()?.dir.display());
            Ok(())
        }
    }
}
