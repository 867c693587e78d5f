//! The command line: `clap` definitions of every command and its flags. `main` parses it and
//! hands each command to its module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "roomlog", version, about = "Durable real-time chat rooms in one binary")]
pub struct Cli {
    /// TOML configuration file; ROOMLOG_* environment variables override it.
    #[arg(long, global = true, env = "ROOMLOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data folder (overrides `data` in the config).
    #[arg(long, global = true)]
    pub data: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on (overrides `listen` in the config), e.g. 127.0.0.1:7700.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Drop a projection and rebuild it from the log. The server must be stopped.
    Rebuild {
        /// The projection: `history`, `search`, `sessions`, `files`, or `all`.
        name: String,
    },
    /// Check a stopped server's data folder: every record of the log decodes, and the log
    /// holds everything the seq floor and the projections say was acknowledged. Creates
    /// nothing; exits 1 when it finds a problem.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Signed tokens: issue one, or rotate the secret.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Rewrite the log without the events that retention cuts and key deletions superseded,
    /// into a fresh database swapped in atomically; prints the bytes on disk before and after.
    /// The server must be stopped.
    Compact {
        #[arg(long)]
        json: bool,
    },
    /// Print the configuration in force, as TOML.
    Config,
    /// Back up the log (up to its head now) into one archive, from the running server if one
    /// answers, else from the data folder.
    Backup {
        #[command(subcommand)]
        action: Option<BackupAction>,
        /// The archive to write.
        #[arg(long)]
        out: Option<PathBuf>,
        /// An earlier archive: back up only what came after it (incremental).
        #[arg(long)]
        since: Option<PathBuf>,
        /// The server's address (default: from `<data>/roomlog.addr`).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Pace the backup of a running server to at most this many events per second, so
        /// that it leaves the CPU to chat (0: as fast as possible).
        #[arg(long, default_value_t = 40_000)]
        max_events_per_sec: u64,
        /// Leave the token secret out of the archive (a restore then voids every token).
        #[arg(long)]
        without_secret: bool,
    },
    /// Restore archives (a full one, then incrementals on top) into an empty data folder and
    /// rebuild the projections.
    Restore {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Stop after this seq (point-in-time restore).
        #[arg(long)]
        until_seq: Option<u64>,
        /// Stop after this time, RFC 3339 (`2026-11-22T21:00:00Z`).
        #[arg(long)]
        until_time: Option<String>,
    },
    /// Move a stopped single node's data folder (`--from`) into the cluster the configuration's
    /// `[jetstream]` names: its log, every record under its own seq, into the stream (which must
    /// be new), its files' content into the shared bucket, its token secret to every node. The
    /// cluster's nodes then start on empty data folders. The way back: `roomlog backup` on any
    /// node, `roomlog restore` on the single box.
    ClusterImport {
        /// The single node's data folder (its server stopped).
        #[arg(long)]
        from: PathBuf,
        /// Print what was moved as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search past messages from the command line: through the running server if one answers,
    /// else from the data folder. Query syntax: words, "phrases", -exclusions, prefix*.
    Search(SearchArgs),
    /// The janitor of the running server: `plan` (what a run would remove now, per rule, and the
    /// bytes it would free; nothing is deleted), `run` (now), `runs` (the last ones).
    Janitor {
        #[command(subcommand)]
        action: JanitorAction,
        #[arg(long, global = true)]
        addr: Option<std::net::SocketAddr>,
        /// Print the server's JSON answer.
        #[arg(long, global = true)]
        json: bool,
    },
    /// What the running server stores and where: bytes on disk per part, files by prefix and
    /// tier, messages per room, sessions by state, and the disk state (`GET /api/storage`).
    Stats {
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running server to re-hash every stored file: damaged ones are quarantined and
    /// reported, and content no key references (orphans) is listed. Exits 2 if any was damaged.
    Scrub {
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running server how it is. Exits 1 when it cannot be reached, 2 when not ready.
    Status {
        /// The server's address; default: the one it wrote to `<data>/roomlog.addr`, else `listen`.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Print the server's JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum JanitorAction {
    /// What a run would do now, without doing it.
    Plan,
    /// Run now (after a run under way, if any). Exits 2 if the run was `partial` or `failed`
    /// (it still prints the record), 1 if the command itself failed (no server).
    Run,
    /// The last runs, newest first.
    Runs {
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Print a signed token for a user: the rooms it may write (`--rooms`) and only read
    /// (`--read-only`), as patterns where `*` matches anything, comma-separated.
    Issue {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        rooms: String,
        #[arg(long, default_value = "")]
        read_only: String,
        /// File key prefixes it may read and write (upload, copy to, delete), comma-separated.
        #[arg(long, default_value = "")]
        files: String,
        /// File key prefixes it may only read.
        #[arg(long, default_value = "")]
        files_read_only: String,
        /// How long it is valid (humantime: `24h`, `30d`).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Also the admin scope: admin endpoints, and edits and deletions of anyone's messages.
        #[arg(long)]
        admin: bool,
        /// Bind it to a roomlog session: it stops working when the session ends, expires or is
        /// purged.
        #[arg(long)]
        session: Option<String>,
    },
    /// Make a new secret; tokens signed with the old one stay valid for `--grace`. Restart the
    /// server to use it.
    Rotate {
        #[arg(long, default_value = "24h")]
        grace: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupAction {
    /// Check an archive (hashes, every record decodes) without restoring it.
    Verify { file: PathBuf },
}

/// The flags of `roomlog search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    pub query: String,
    /// Only these rooms (comma-separated).
    #[arg(long)]
    pub room: Option<String>,
    #[arg(long)]
    pub author: Option<String>,
    /// Oldest message: `7d` (ago), an RFC 3339 time, or Unix ms.
    #[arg(long)]
    pub since: Option<String>,
    /// Newest message, same forms.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// `relevance` or `time` (newest first).
    #[arg(long, default_value = "relevance")]
    pub sort: String,
    /// Print the JSON answer, as `GET /api/search` gives it.
    #[arg(long)]
    pub json: bool,
    /// The running server's address (default: from `<data>/roomlog.addr`); when none answers,
    /// the search reads the stopped server's data folder.
    #[arg(long)]
    pub addr: Option<std::net::SocketAddr>,
}
