//! `hutch`: the command line. Glue only: images live in `hutch-store`, sandboxes in
//! `hutch-runtime`; this crate parses arguments, wires them together and prints.

mod agent_binary;
mod build;
mod client;
mod forward;
mod image;
mod pool;
mod pull;
mod run;
mod sbx;
mod serve;
mod template;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hutch",
    version,
    about = "Run untrusted code in gVisor sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new sandbox and exit with its exit code.
    ///
    /// Runs through a running `hutch serve` when $HUTCH_SERVER names one, or when the
    /// server over this same state directory ($HUTCH_HOME) published itself there and proves
    /// it with the secret it wrote; the sandbox is then the server's, created and deleted through its
    /// API. Otherwise, or with --local, the embedded runtime creates the sandbox in this
    /// process (root required). HUTCH_LOG=debug says which path was taken.
    Run(run::RunArgs),
    /// Manage images in the local store.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage templates: named images sandboxes start from, base or diff over a parent.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Show the runtime backend and its capabilities.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Serve the lifecycle API (:8900) and the sandbox proxy (:9443) with embedded state.
    ///
    /// Sandboxes outlive the server: stopping it leaves them running, and the next start
    /// adopts them.
    Serve(serve::ServeArgs),
    /// Sandboxes on a running `hutch serve` ($HUTCH_SERVER, default http://127.0.0.1:8900;
    /// key from $HUTCH_API_KEY; namespace from $HUTCH_NAMESPACE, default `default`).
    #[command(subcommand)]
    Sbx(sbx::SbxCommand),
    /// Warm pools on a running `hutch serve`: sandboxes booted ahead, claimed at once.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Manage the server's API keys.
    #[command(subcommand)]
    Key(serve::KeyCommand),
    /// Print the path of the agent binary (extracting it first); for tests and tools.
    #[command(hide = true)]
    AgentPath,
}

/// The state directory: `$HUTCH_HOME`, else `/var/lib/hutch`.
pub fn home() -> PathBuf {
    std::env::var_os("HUTCH_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/hutch"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs its work; one-shot commands only warn.
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUTCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutch: cannot start: {e}");
            return ExitCode::from(125);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Image(cmd) => image::dispatch(cmd).await,
            Command::Template(cmd) => template::dispatch(cmd).await,
            Command::Info { json } => run::info(json).map(|()| 0),
            Command::Serve(args) => serve::serve(args).await,
            Command::Key(cmd) => serve::key(cmd),
            Command::Sbx(cmd) => sbx::dispatch(cmd).await,
            Command::Pool(cmd) => pool::dispatch(cmd).await,
            Command::AgentPath => agent_binary::ensure(&home()).map(|p| {
                println!("{}", p.display());
                0
            }),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hutch: {e:#}");
            ExitCode::from(125)
        }
    }
}
