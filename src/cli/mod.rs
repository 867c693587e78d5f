//! The operator's commands, one file per command group. `main` parses the command line
//! ([`args`]), sets up tracing ([`logging`]) and calls the command's function here; the work
//! itself is library code.
//!
//! - [`serve`]: run the server until a signal or a core task's failure.
//! - [`offline`]: commands on a stopped server's data folder: `rebuild`, `check`, `compact`.
//! - [`config`]: `roomlog config`, the configuration in force as TOML.
//! - [`backup`]: `backup` (from the running server or the data folder), `backup verify`,
//!   `restore`.
//! - [`search`]: `roomlog search`, straight from the index.
//! - [`token`]: `token issue`, `token rotate`.
//! - [`remote`]: the HTTP client the commands below use to ask the running server.
//! - [`status`], [`storage`], [`janitor`]: what the running server says about itself, its
//!   storage (`stats`, `scrub`) and its janitor.

pub mod args;
pub mod backup;
pub mod config;
pub mod janitor;
pub mod logging;
pub mod offline;
pub mod remote;
pub mod search;
pub mod serve;
pub mod status;
pub mod storage;
pub mod token;

/// Bytes as MiB, as the operator's commands print them.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
