//! `roomlog token issue` and `token rotate`: signed tokens, from the secret in the data folder.

use anyhow::{bail, Context};
use roomlog::Config;

use super::args::TokenAction;

/// `roomlog token issue|rotate`.
pub async fn run(config: &Config, action: TokenAction) -> anyhow::Result<()> {
    let files = roomlog::token::SecretFiles { dir: config.secret_dir() };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let duration = |text: &str, flag: &str| {
        humantime::parse_duration(text).with_context(|| format!("{flag} {text:?} is not a duration (24h, 30d)"))
    };
    match action {
        TokenAction::Issue { user, rooms, read_only, files: file_prefixes, files_read_only, ttl, admin, session } => {
            let session = session
                .map(|id| roomlog::event::SessionId::parse(&id).map_err(|e| anyhow::anyhow!("--session: {e}")))
                .transpose()?;
            if user.is_empty() || user.len() > roomlog::auth::USER_LEN_MAX || user.chars().any(char::is_control) {
                bail!("--user: 1 to {} bytes, no control characters", roomlog::auth::USER_LEN_MAX);
            }
            let grant = |list: &str, write: bool| -> Vec<roomlog::token::RoomGrant> {
                list.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|pattern| roomlog::token::RoomGrant { pattern: pattern.to_owned(), write })
                    .collect()
            };
            let mut grants = grant(&rooms, true);
            grants.extend(grant(&read_only, false));
            let file_grants: Vec<roomlog::token::FileGrant> = [(&file_prefixes, true), (&files_read_only, false)]
                .into_iter()
                .flat_map(|(list, write)| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(move |prefix| roomlog::token::FileGrant { prefix: prefix.to_owned(), write })
                })
                .collect();
            let exp = (now_ms / 1000).saturating_add(duration(&ttl, "--ttl")?.as_secs());
            let secrets = files.load_or_create().context("loading the token secret")?;
            println!(
                "{}",
                secrets.issue(&roomlog::token::Claims { user, rooms: grants, admin, exp, session, files: file_grants })
            );
        }
        TokenAction::Rotate { grace } => {
            let until = now_ms.saturating_add(roomlog::clock::millis(duration(&grace, "--grace")?));
            files.rotate(until).context("rotating the token secret")?;
            let (stored, valid_on) = if config.log.backend == roomlog::log::LogBackend::Jetstream {
                // Every node of the cluster adopts it at its next start (`Server::start`).
                let shared = files.shared_form().context("reading the new token secret")?;
                roomlog::log::jetstream::publish_secret(&config.jetstream, shared)
                    .await
                    .context("sharing the new token secret with the cluster (the local one is rotated already)")?;
                (" and in the cluster's bucket", " on every node (restart each node to sign with the new one)")
            } else {
                ("", " (restart the server to sign with the new one)")
            };
            println!(
                "new secret in {}{stored}; tokens signed with the old one stay valid for {grace}{valid_on}",
                files.dir.display()
            );
        }
    }
    Ok(())
}
