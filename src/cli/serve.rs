//! `roomlog serve`: runs the server until SIGTERM or Ctrl-C, or until a core task fails.

use anyhow::{bail, Context};
use roomlog::{Config, Server};

use super::offline::migrate;

/// `roomlog serve`: takes the data folder, compacts it if configured to, binds, and serves until a
/// signal (a clean shutdown) or a core task's failure (an error, so that a supervisor restarts it).
pub async fn serve(mut config: Config, listen: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    if let Some(listen) = listen {
        config.listen = listen;
    }
    roomlog::layout::refuse_sled_database(&config.data)?;
    roomlog::durable::create_dir_all(&config.data)
        .with_context(|| format!("creating data folder {}", config.data.display()))?;
    // Checked before binding and compacting: a second server on a folder in use says which
    // one holds it, not that the port is taken or the database locked. `Server::start` takes
    // the lock for good.
    let checked = roomlog::data_lock::DataLock::acquire(&config.data, &config.addr_file())?;
    // `Server::start` moves an old layout itself (and says so in /api/status); compaction
    // before it needs the new layout first.
    if config.log.compact_at_start {
        migrate(&config)?;
    }
    if config.log.compact_at_start && config.log_dir().exists() {
        let done = roomlog::log::compact::compact(&config.log_dir(), config.log.cache_bytes_max)
            .context("compacting the log at start-up (log.compact_at_start)")?;
        tracing::info!(
            records_before = done.records_before,
            records_after = done.records_after,
            bytes_before = done.bytes_before,
            bytes_after = done.bytes_after,
            "log compacted at start-up"
        );
    }
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    drop(checked);
    let server = Server::start(config, listener).await?;
    println!("roomlog listening on {}", server.addr());
    let failure = tokio::select! {
        () = shutdown_signal() => None,
        why = server.failed() => Some(why),
    };
    match failure {
        None => {
            tracing::info!("shutting down");
            server.shutdown().await;
            Ok(())
        }
        Some(why) => {
            // Not a zombie that answers every request with an error: stop, and let the
            // supervisor (systemd's Restart=on-failure) start a fresh process.
            tracing::error!(error = %why, "a core task failed: stopping so that roomlog is restarted");
            server.shutdown().await;
            bail!("stopped because a core task failed: {why}")
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
