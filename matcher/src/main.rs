//! `biomatch`: the command-line entry point. Thin: parse arguments, set up logging, dispatch.

use clap::{Parser, Subcommand};

#[cfg(feature = "synthetic")]
mod synthetic;

#[derive(Debug, Parser)]
#[command(name = "biomatch", version, about = "Biometric matching for a national identity system")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fill a store with a seeded synthetic population (one face template per identity).
    #[cfg(feature = "synthetic")]
    EnrollSynthetic(synthetic::EnrollArgs),
    /// Evaluate 1:N identification on a synthetic population; prints one JSON object last.
    #[cfg(feature = "synthetic")]
    EvalSynthetic(synthetic::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BIOMATCH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        #[cfg(feature = "synthetic")]
        Command::EnrollSynthetic(args) => synthetic::enroll(&args),
        #[cfg(feature = "synthetic")]
        Command::EvalSynthetic(args) => synthetic::eval(&args),
    }
}
