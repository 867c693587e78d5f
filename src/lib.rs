//! roomlog: durable real-time chat rooms with search, sessions, file storage and a janitor in
//! one binary, event-sourced over one append-only log.
//!
//! # Layout
//!
//! In pipeline order, from the client down to the disk and back up:
//!
//! - [`http`]: the warp facade — WebSocket connections, the JSON HTTP API, health.
//! - [`wire`]: the WebSocket frames.
//! - [`error_code`]: the registry of error codes with their HTTP status, for HTTP and WebSocket.
//! - [`auth`]: who a connection is and what it may do; the seam for authentication.
//! - [`token`]: signed tokens (blake3 keyed hash under the server secret), issue and rotation.
//! - [`actor`]: ractor actors — a `RoomActor` per active room under a `RoomSupervisor`, a
//!   `SessionActor` per live session under a `SessionSupervisor` that also sweeps due times.
//! - [`message`]: a chat message as kept, and the edits and deletions that amend it.
//! - [`room`]: what a room decides (ring, de-duplication, replay), as plain state.
//! - [`session`]: what a session is and how its state moves, as plain state.
//! - [`presence`]: who is in a room, by user with connection counts; ephemeral, per node.
//! - [`log`]: the append-only event log behind a backend seam (sled, memory; or a NATS
//!   JetStream stream shared by a cluster's nodes), with group
//!   commit, a durable seq floor, and the removal of superseded records.
//! - [`state`]: the projections' own sled store, set aside and rebuilt when damaged.
//! - [`durable`]: file-system steps and sled settings that survive a power cut.
//! - [`space`]: the free-space floors that keep sled and tantivy away from a full disk.
//! - [`layout`]: what lives where in the data folder, and the move from the old layout.
//! - [`data_lock`]: one server per data folder, and who holds it when a second one starts.
//! - [`event`]: the events, their versions and their encoding.
//! - [`ids`]: the checked ids events carry: file keys, content hashes, tiers.
//! - [`projection`]: folds over the log with checkpoints — chat history, message search,
//!   sessions with their deadline index.
//! - [`clock`]: wall-clock time for due times, injectable for tests.
//! - [`blob`]: the content-addressed file store and the file service over it.
//! - [`janitor`]: the planner and runs of clean-up (sessions, lifecycle, orphans, retention,
//!   log files), on a schedule and on demand.
//! - [`disk`]: the disk thresholds (healthy, warning, critical, danger) and their watcher.
//! - [`growth`]: daily samples of the data folder's size, and the days until each threshold.
//! - [`config`]: configuration from defaults, a TOML file and the environment.
//! - [`metrics`]: Prometheus metric names, rendered on `/metrics`.
//! - [`nats_harness`]: nats-server processes on loopback for tests and benchmarks (hidden).
//! - [`recent_errors`]: the last warnings and errors, for `roomlog status`.
//! - [`views`]: the operator's views (`/api/status`, janitor runs), typed for server and CLI.
//! - [`server`]: starts and stops all of the above in order.
//! - [`backup`]: archives of a cut of the log; verification and restore.
//! - [`check`]: `roomlog check`, the report on a stopped server's data folder.
//! - [`fault`]: fault points for crash and failure tests (inert in production).
//!
//! `ARCHITECTURE.md` walks the same pipeline and states the runtime guarantees.

pub mod actor;
pub mod auth;
pub mod backup;
pub mod blob;
pub mod check;
pub mod clock;
pub mod config;
pub mod data_lock;
pub mod disk;
pub mod durable;
pub mod error_code;
pub mod event;
pub mod fault;
pub mod growth;
pub mod http;
pub mod ids;
pub mod janitor;
pub mod layout;
pub mod log;
pub mod message;
pub mod metrics;
#[doc(hidden)]
pub mod nats_harness;
pub mod presence;
pub mod projection;
pub mod recent_errors;
pub mod room;
pub mod server;
pub mod session;
pub mod space;
pub mod state;
pub mod token;
pub mod views;
pub mod wire;

pub use config::Config;
pub use server::{Server, ServerError};
