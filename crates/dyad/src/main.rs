//! `dyad`: the one binary. `dyad serve` runs a chat server; `dyad bench` and
//! `dyad admin` measure and operate it; `dyad register|login|chat|send|
//! history|…` are the terminal client.

mod admin;
mod bench;
mod serve;
mod term;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Many small short-lived allocations per message (frames, JSON): mimalloc
/// spends less time on them than the system allocator (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// dyad: a 1-on-1 real-time chat server.
///
/// Two people send each other text messages over WebSocket and see them
/// arrive in real time. Every message is stored before it is acknowledged.
#[derive(Debug, Parser)]
#[command(name = "dyad", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a chat server (embedded SQLite by default; nothing else to install).
    Serve(Box<serve::ServeArgs>),
    /// Load-test a server: open-loop message rate, latency percentiles, loss;
    /// or `dyad bench idle` for connection scale.
    Bench(Box<bench::BenchArgs>),
    /// Operator commands on the store.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    #[command(flatten)]
    Term(term::TermCommand),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes, for people and scripts alike.
            eprintln!("dyad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(*args)),
        Command::Bench(args) => runtime.block_on(bench::run(*args)),
        Command::Admin(command) => runtime.block_on(admin::run(command)),
        Command::Term(command) => runtime.block_on(term::run(command)),
    }
}
