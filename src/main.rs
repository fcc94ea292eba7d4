//! The `adc-operator` command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Turns ADC virtual services and VPC routes into Compute Engine resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the operator's version.
    Version,
}

fn main() {
    match Cli::parse().command {
        Command::Version => println!("adc-operator {}", adc_operator::VERSION),
    }
}
