//! `dyad`: the one binary. `dyad serve` runs a chat server; more commands
//! (clients, load generator) join it as they land.

mod admin;
mod bench;
mod serve;

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
    Serve(serve::ServeArgs),
    /// Load-test a server: open-loop message rate, latency percentiles, loss;
    /// or `dyad bench idle` for connection scale.
    Bench(Box<bench::BenchArgs>),
    /// Operator commands on the store.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Bench(args) => runtime.block_on(bench::run(*args)),
        Command::Admin(command) => runtime.block_on(admin::run(command)),
    }
}
