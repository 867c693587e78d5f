//! The `roomlog` command: parses the command line and config, sets up tracing, and hands each
//! command to its module under `cli/`, which calls the library.

mod cli;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cli::args::{BackupAction, Cli, Command};
use roomlog::Config;

/// mimalloc instead of glibc's malloc: a rebuild of the history spent a quarter of its time in
/// glibc's allocator, much of it waiting on its arena locks (a batch is decoded on one thread and
/// freed on another); README, "History rebuild".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them on the memory it
/// takes from the kernel, and then the first touch of each 2 MiB, of fresh memory or of memory
/// it gave back, makes the kernel zero the whole 2 MiB: sled takes a fresh write buffer of a
/// segment's size (8 MiB, 16 MiB then) for every segment, so a rebuild of the history spent a fifth of its time in the kernel's
/// `clear_page_erms`. Without them (README, "Huge pages"): the rebuild is faster, the server's
/// memory smaller, its chat p99 no worse.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off; running with them");
    }
}

/// The command's exit code: 0 when it did what was asked; each command documents its others
/// (an error it returns exits 1 with the error and its causes on stderr).
#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    config.logging.json |= cli.log_json;
    // The server logs to stdout; every other command's stdout is its answer (a token, JSON), so
    // its log lines go to stderr.
    let to_stderr = !matches!(cli.command, Command::Serve { .. });
    let _log_files = cli::logging::init_tracing(&config.logging, to_stderr)?;
    without_huge_pages();
    if let Some(data) = cli.data {
        config.data = data;
    }
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Serve { listen } => done(cli::serve::serve(config, listen).await),
        Command::Rebuild { name } => done(cli::offline::rebuild(&config, &name)),
        Command::Token { action } => done(cli::token::run(&config, action).await),
        Command::Compact { json } => done(cli::offline::compact(&config, json)),
        Command::Check { json } => cli::offline::check(&config, json),
        Command::Config => done(cli::config::print(&config)),
        Command::Backup { action: Some(BackupAction::Verify { file }), .. } => done(cli::backup::verify(&file)),
        Command::Backup { action: None, out, since, addr, max_events_per_sec, without_secret } => {
            let out = out.context("give --out FILE for the archive")?;
            done(cli::backup::backup(config, out, since, addr, max_events_per_sec, without_secret).await)
        }
        Command::Restore { files, until_seq, until_time } => {
            done(cli::backup::restore(&config, &files, until_seq, until_time))
        }
        Command::ClusterImport { from, json } => done(cli::offline::cluster_import(&config, &from, json).await),
        Command::Search(args) => done(cli::search::run(&config, args).await),
        Command::Janitor { action, addr, json } => cli::janitor::run(&config, action, addr, json).await,
        Command::Stats { addr, json } => cli::storage::stats(&config, addr, json).await,
        Command::Scrub { addr, json } => cli::storage::scrub(&config, addr, json).await,
        Command::Status { addr, json } => Ok(cli::status::status(&config, addr, json).await),
    }
}
