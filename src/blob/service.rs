//! The file store as the app uses it: keys over content, each change an event, and the reaper
//! that deletes content no key references any more.

use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use futures_util::Stream;
use tokio::sync::{watch, Mutex};

pub use crate::config::PrefixMove;

use super::{BlobError, BlobStore, ContentHash, FileKey, Tier};
use crate::error_code::ErrorCode;
use crate::event::{ContentMoved, ContentQuarantined, Event, FileDeleted, FileStored, SessionId};
use crate::log::EventLog;
use crate::projection::files::{FileEntry, Files};
use crate::projection::sessions::Sessions;
use crate::projection::Runner;
use crate::session::SessionState;

/// Why a file operation was refused; each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no file {0}")]
    NotFound(String),
    #[error("no live session {0} to own the file")]
    NoSession(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The log or the files projection failed under the operation; the cause is kept.
    #[error("the file store cannot record this now: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the content of {0} is missing from the store (quarantined by a scrub?); upload it again")]
    ContentMissing(String),
}

impl FileError {
    /// How the edges report this error (its HTTP status is the code's).
    pub fn code(&self) -> ErrorCode {
        match self {
            FileError::NotFound(_) => ErrorCode::NotFound,
            FileError::NoSession(_) => ErrorCode::NoSession,
            FileError::Blob(e) => e.code(),
            FileError::Storage(_) => ErrorCode::StorageUnavailable,
            FileError::ContentMissing(_) => ErrorCode::ContentMissing,
        }
    }
}

fn storage(error: impl std::error::Error + Send + Sync + 'static) -> FileError {
    FileError::Storage(Box::new(error))
}

/// Content on disk that no key references.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Orphan {
    pub hash: ContentHash,
    pub tier: Tier,
    pub bytes: u64,
}

/// What a scrub found.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ScrubReport {
    /// Content files re-hashed, and their bytes.
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Files whose bytes no longer matched their name, now in quarantine.
    pub damaged: Vec<super::Damaged>,
    /// Content no key references (the janitor deletes it).
    pub orphans: Vec<Orphan>,
}

/// Keys and content together; cheap to clone.
#[derive(Debug, Clone)]
pub struct FileService {
    pub store: BlobStore,
    pub files: Files,
    runner: Runner,
    /// The sessions' read side (owners must be live).
    pub sessions: Sessions,
    log: EventLog,
    /// The lifecycle rules in force.
    pub lifecycle: Arc<super::lifecycle::Rules>,
    /// Held while content is committed under a key, and while the reaper deletes content, so
    /// that the reaper never deletes content an upload has just been given.
    commit: Arc<Mutex<()>>,
    /// On a cluster's log: the content every node shares; this node's tiers are then a cache.
    shared: Option<crate::log::jetstream::SharedFiles>,
    /// Content this node deleted from the shared bucket that a key named again before it
    /// could put it back (NATS failed meanwhile): the reaper's next pass puts it back.
    put_back: Arc<std::sync::Mutex<Vec<ContentHash>>>,
}

impl FileService {
    pub fn new(store: BlobStore, files: Files, runner: Runner, sessions: Sessions, log: EventLog) -> Self {
        let shared = log.shared_files();
        Self {
            store,
            files,
            runner,
            sessions,
            log,
            lifecycle: Arc::default(),
            commit: Arc::new(Mutex::new(())),
            shared,
            put_back: Arc::default(),
        }
    }

    /// With these lifecycle rules.
    pub fn with_lifecycle(mut self, rules: super::lifecycle::Rules) -> Self {
        self.lifecycle = Arc::new(rules);
        self
    }

    /// Where a key's content can be read now: its recorded tier first. On a cluster's log,
    /// content this node does not have is fetched from the shared bucket into its hot tier
    /// (checked against its hash on the way).
    pub async fn content_path(&self, entry: &FileEntry) -> Result<(Tier, std::path::PathBuf), FileError> {
        let recorded = self.files.tier(&entry.hash).map_err(storage)?;
        if let Some(found) = self.store.locate(&entry.hash, recorded).await {
            return Ok(found);
        }
        // Boxed: the object store's futures are large, and this one is part of every caller's.
        Box::pin(self.fetch_shared(entry)).await
    }

    /// Copies content another node stored from the shared bucket to this node. A read of the
    /// bucket that breaks off or brings other bytes is tried again, then reported as the
    /// storage's failure (503): the client's request was fine, so it is not told it sent a cut
    /// or mismatched upload (a loaded CI machine once answered a download with 400 that way).
    async fn fetch_shared(&self, entry: &FileEntry) -> Result<(Tier, std::path::PathBuf), FileError> {
        const ATTEMPTS: u32 = 3;
        let missing = || FileError::ContentMissing(entry.key.to_string());
        let Some(shared) = &self.shared else { return Err(missing()) };
        let mut attempt = 1;
        loop {
            let Some(object) = shared.get(entry.hash.as_str()).await.map_err(storage)? else { return Err(missing()) };
            let body = tokio_util::io::ReaderStream::new(object);
            let written = match crate::fault::fail("files:shared-read") {
                Err(injected) => Err(BlobError::Cut(injected.to_string())),
                Ok(()) => self.store.write(body, u64::MAX, Some(entry.hash.as_str())).await,
            };
            match written {
                Ok(_) => break,
                Err(error @ (BlobError::Cut(_) | BlobError::HashMismatch { .. })) => {
                    tracing::warn!(hash = %entry.hash, attempt, error = %error, "reading the shared copy failed");
                    if attempt == ATTEMPTS {
                        return Err(storage(std::io::Error::other(format!(
                            "the shared copy of {} could not be read whole in {ATTEMPTS} attempts: {error}",
                            entry.hash
                        ))));
                    }
                    attempt += 1;
                }
                Err(other) => return Err(other.into()),
            }
        }
        self.store.locate(&entry.hash, Tier::Hot).await.ok_or_else(missing)
    }

    /// Moves content to another tier: copy and check (no lock held), then, with uploads'
    /// commits held off, record the move and remove the source. Content no key references any
    /// more by then is not moved. Returns whether it moved.
    pub async fn move_content(&self, hash: &ContentHash, to: Tier, reason: String) -> Result<bool, FileError> {
        self.caught_up().await;
        let from = self.files.tier(hash).map_err(storage)?;
        if from == to || self.files.references(hash).map_err(storage)? == 0 {
            return Ok(false);
        }
        let size = self.store.copy_to_tier(hash, to).await?;
        let _held = self.commit.lock().await;
        self.caught_up().await;
        if self.files.references(hash).map_err(storage)? == 0 {
            self.store.drop_from_tier(hash, to).await.map_err(BlobError::Io)?;
            return Ok(false);
        }
        let event = Event::ContentMoved(ContentMoved { hash: hash.clone(), size, from, to, reason });
        let envelope = match self.log.append(event).await {
            Ok(envelope) => envelope,
            Err(e) => {
                let _ = self.store.drop_from_tier(hash, to).await;
                return Err(storage(e));
            }
        };
        self.runner.wait_applied(envelope.seq).await;
        crate::fault::pause("tier-move:recorded").await;
        self.store.drop_from_tier(hash, from).await.map_err(BlobError::Io)?;
        metrics::counter!(crate::metrics::FILE_TIER_MOVES_TOTAL, "to" => to.as_str()).increment(1);
        Ok(true)
    }

    /// Removes the extra copy a crash during a tier move left behind (run at start-up).
    pub fn settle(&self) -> std::io::Result<Vec<(ContentHash, Tier)>> {
        self.store.settle(|hash| self.files.tier(hash).map_err(|e| std::io::Error::other(e.to_string())))
    }

    /// Re-hashes every content file; damaged ones are quarantined and recorded as events.
    pub async fn scrub(&self) -> Result<ScrubReport, FileError> {
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let (files, bytes, damaged) =
            tokio::task::spawn_blocking(move || store.scrub()).await.map_err(storage)?.map_err(BlobError::Io)?;
        for d in &damaged {
            let event = Event::ContentQuarantined(ContentQuarantined {
                hash: d.hash.clone(),
                tier: d.tier,
                found: d.found.clone(),
                quarantined_to: d.quarantined_to.display().to_string(),
            });
            self.log.append(event).await.map_err(storage)?;
        }
        let orphans = self.orphans(Duration::ZERO).await?;
        Ok(ScrubReport { files, bytes, seconds: started.elapsed().as_secs_f64(), damaged, orphans })
    }

    /// Content files on disk that no key references, last written more than `min_age` ago
    /// (younger ones may be uploads not yet committed), and that the reaper is not about to
    /// delete anyway (those went with a key's deletion, which names its reason).
    pub async fn orphans(&self, min_age: Duration) -> Result<Vec<Orphan>, FileError> {
        self.caught_up().await;
        let store = self.store.clone();
        let contents =
            tokio::task::spawn_blocking(move || store.contents()).await.map_err(storage)?.map_err(BlobError::Io)?;
        let mut out = Vec::new();
        for (hash, tier, bytes) in contents {
            if self.files.references(&hash).map_err(storage)? > 0 || self.files.reaping(&hash).map_err(storage)? {
                continue;
            }
            let path = self.store.path_in(tier, &hash).unwrap_or_default();
            let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|age| age >= min_age) {
                out.push(Orphan { hash, tier, bytes });
            }
        }
        Ok(out)
    }

    /// Deletes an orphan, unless a key references it by the time the commit lock is held.
    pub async fn delete_orphan(&self, orphan: &Orphan) -> Result<bool, FileError> {
        let _held = self.commit.lock().await;
        self.caught_up().await;
        if self.files.references(&orphan.hash).map_err(storage)? > 0 {
            return Ok(false);
        }
        self.store.drop_from_tier(&orphan.hash, orphan.tier).await.map_err(BlobError::Io)?;
        Ok(true)
    }

    /// Renames a paid session's keys by `moves` (`temp_` → `permanent/`): a copy then a delete
    /// naming the reason, no bytes moved. Keys already moved are not there any more, so running
    /// it again (after a crash half way) finishes the work. Returns the new keys.
    pub async fn move_paid(&self, owner: &SessionId, moves: &[PrefixMove]) -> Result<Vec<FileKey>, FileError> {
        self.caught_up().await;
        let mut moved = Vec::new();
        for (from, to) in self.paid_renames(owner, moves)? {
            self.rename_paid(owner, &from, to.clone()).await?;
            moved.push(to);
        }
        Ok(moved)
    }

    /// Waits until the files projection has every acknowledged change.
    pub async fn caught_up(&self) {
        self.runner.wait_applied(self.log.head()).await;
    }

    /// A key's entry, after every acknowledged change.
    pub async fn get(&self, key: &FileKey) -> Result<Option<FileEntry>, FileError> {
        self.caught_up().await;
        self.files.get(key).map_err(storage)
    }

    /// Streams an upload under `key` (replacing what the key named).
    pub async fn put<S, B, E>(
        &self,
        key: FileKey,
        body: S,
        limit: u64,
        expected_hash: Option<&str>,
        content_type: String,
        owner: Option<SessionId>,
    ) -> Result<FileEntry, FileError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: Buf,
        E: std::fmt::Display,
    {
        if let Some(owner) = &owner {
            self.live_session(owner).await?;
        }
        let stored = self.store.write(body, limit, expected_hash).await?;
        if let Some(shared) = &self.shared {
            // Every node can read it before any is told it exists.
            let path = self.store.path(&stored.hash);
            Box::pin(shared.put(stored.hash.as_str(), &path)).await.map_err(storage)?;
        }
        metrics::counter!(crate::metrics::FILE_UPLOADS_TOTAL).increment(1);
        metrics::counter!(crate::metrics::FILE_UPLOAD_BYTES_TOTAL).increment(stored.size);
        let event = Event::FileStored(FileStored {
            key: key.clone(),
            hash: stored.hash,
            size: stored.size,
            content_type,
            owner,
        });
        let entry = self.commit(key, event).await?;
        self.confirm_shared(&entry).await?;
        Ok(entry)
    }

    /// Points `to` at the content of `from`: no bytes move.
    pub async fn copy(&self, from: &FileKey, to: FileKey, owner: Option<SessionId>) -> Result<FileEntry, FileError> {
        if let Some(owner) = &owner {
            self.live_session(owner).await?;
        }
        let source = self.get(from).await?.ok_or_else(|| FileError::NotFound(from.to_string()))?;
        let event = Event::FileStored(FileStored {
            key: to.clone(),
            hash: source.hash,
            size: source.size,
            content_type: source.content_type,
            owner,
        });
        let entry = self.commit(to, event).await?;
        self.confirm_shared(&entry).await?;
        Ok(entry)
    }

    /// On a cluster's log, once a key is committed on content: makes sure the shared bucket
    /// still holds the content, putting it back from this node's copy if another node's
    /// reaper deleted it meanwhile (see [`FileService::release_shared`]). With no copy here to
    /// put back, the key could not be served: it is deleted again, naming why, and the caller
    /// is told to upload.
    async fn confirm_shared(&self, entry: &FileEntry) -> Result<(), FileError> {
        let Some(shared) = &self.shared else { return Ok(()) };
        if shared.holds(entry.hash.as_str()).await.map_err(storage)? {
            return Ok(());
        }
        if let Some((_, path)) = self.store.locate(&entry.hash, Tier::Hot).await {
            return Box::pin(shared.put(entry.hash.as_str(), &path)).await.map_err(storage);
        }
        let reason = "its content was deleted by another node's reaper while the key was written";
        self.delete(&entry.key, reason).await?;
        Err(FileError::Storage("the content was removed meanwhile; upload again".into()))
    }

    /// The renames `moves` asks of a paid session's keys: (key, new key). A key the mapping
    /// would make invalid is left as it is.
    pub fn paid_renames(&self, owner: &SessionId, moves: &[PrefixMove]) -> Result<Vec<(FileKey, FileKey)>, FileError> {
        let mut out = Vec::new();
        for key in self.files.owned(owner).map_err(storage)? {
            let Some(rule) = moves.iter().find(|m| key.as_str().starts_with(&m.from)) else { continue };
            if let Ok(to) = FileKey::parse(&format!("{}{}", rule.to, &key.as_str()[rule.from.len()..])) {
                out.push((key, to));
            }
        }
        Ok(out)
    }

    /// One rename of [`Self::paid_renames`], with its reason.
    pub async fn rename_paid(&self, owner: &SessionId, from: &FileKey, to: FileKey) -> Result<FileEntry, FileError> {
        let reason = format!("session {owner} paid: moved to {to} (files.on_pay)");
        self.rename(from, to, Some(owner.clone()), &reason).await
    }

    /// Renames a key: a copy, then the old key's deletion naming `reason`. No bytes move.
    pub async fn rename(
        &self,
        from: &FileKey,
        to: FileKey,
        owner: Option<SessionId>,
        reason: &str,
    ) -> Result<FileEntry, FileError> {
        let entry = self.copy(from, to, owner).await?;
        self.delete(from, reason).await?;
        Ok(entry)
    }

    /// Deletes a key; its content goes once no key references it.
    pub async fn delete(&self, key: &FileKey, reason: &str) -> Result<FileEntry, FileError> {
        self.delete_fenced(key, reason, None).await
    }

    /// [`FileService::delete`] under a lease holder's fence (see `EventLog::submit_fenced`):
    /// refused, with the log's `Conflict` as the source, once another node recorded a run.
    pub async fn delete_fenced(
        &self,
        key: &FileKey,
        reason: &str,
        fence: Option<&crate::log::Fence>,
    ) -> Result<FileEntry, FileError> {
        let entry = self.get(key).await?.ok_or_else(|| FileError::NotFound(key.to_string()))?;
        let event =
            Event::FileDeleted(FileDeleted { key: key.clone(), hash: entry.hash.clone(), reason: reason.into() });
        self.log.append_fenced(event, fence).await.map_err(storage)?;
        Ok(entry)
    }

    async fn live_session(&self, id: &SessionId) -> Result<(), FileError> {
        self.caught_up().await;
        match self.sessions.get(id) {
            Ok(Some(s)) if s.state != SessionState::Purged => Ok(()),
            Ok(_) => Err(FileError::NoSession(id.to_string())),
            Err(e) => Err(storage(e)),
        }
    }

    async fn commit(&self, key: FileKey, event: Event) -> Result<FileEntry, FileError> {
        let _held = self.commit.lock().await;
        if let Event::FileStored(stored) = &event {
            // The content may have been reaped between the write and now: it is complete in
            // the store, or the upload must be retried.
            if self.store.locate(&stored.hash, Tier::Hot).await.is_none() {
                return Err(FileError::Storage("the content was removed meanwhile; upload again".into()));
            }
        }
        let envelope = self.log.append(event).await.map_err(storage)?;
        self.runner.wait_applied(envelope.seq).await;
        self.files.get(&key).map_err(storage)?.ok_or(FileError::NotFound(key.to_string()))
    }

    /// Deletes content no key references, every second until `stopping`.
    pub async fn reap(self, mut stopping: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            if let Err(error) = self.reap_once().await {
                tracing::warn!(error = %error, "file reaper failed; retrying");
            }
        }
    }

    /// One pass of the reaper; returns the content deleted.
    pub async fn reap_once(&self) -> Result<Vec<ContentHash>, FileError> {
        self.caught_up().await;
        self.put_back_owed().await?;
        let candidates = self.files.unreferenced(1000).map_err(storage)?;
        let mut reaped = Vec::new();
        for hash in candidates {
            let _held = self.commit.lock().await;
            self.caught_up().await;
            if self.files.references(&hash).map_err(storage)? > 0 {
                continue; // referenced again
            }
            if !self.release_shared(&hash).await? {
                continue; // a key on another node names it again: put back, kept
            }
            self.store.remove(&hash).await.map_err(storage)?;
            self.files.reaped(&hash).map_err(storage)?;
            tracing::debug!(%hash, "unreferenced content deleted");
            reaped.push(hash);
        }
        Ok(reaped)
    }

    /// On a cluster's log, deletes content no key references from the shared bucket, if this
    /// node has a copy to put back (a node without one leaves the bucket to a node with one,
    /// such as the uploader). Then it takes in everything the cluster committed meanwhile: if a
    /// key names the content again (an upload or a copy through another node, whose own check
    /// came before the deletion), it puts the content back and answers false.
    async fn release_shared(&self, hash: &ContentHash) -> Result<bool, FileError> {
        let Some(shared) = &self.shared else { return Ok(true) };
        let Some((_, path)) = self.store.locate(hash, Tier::Hot).await else { return Ok(true) };
        crate::fault::hold("reaper:deleting").await;
        shared.delete(hash.as_str()).await.map_err(storage)?;
        let still_unreferenced = async {
            let seq = self.log.newest_everywhere().await.map_err(storage)?;
            self.runner.wait_applied(seq).await;
            Ok::<_, FileError>(self.files.references(hash).map_err(storage)? == 0)
        };
        let released = |outcome: &'static str| {
            metrics::counter!(crate::metrics::FILE_SHARED_RELEASES_TOTAL, "outcome" => outcome).increment(1);
        };
        match still_unreferenced.await {
            Ok(true) => {
                released("deleted");
                return Ok(true);
            }
            Ok(false) => tracing::info!(%hash, "content deleted from the shared bucket is named again: put back"),
            Err(error) => {
                tracing::warn!(%hash, error = %error, "could not check the cluster after deleting shared content: put back")
            }
        }
        if let Err(error) = Box::pin(shared.put(hash.as_str(), &path)).await {
            self.put_back.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(hash.clone());
            return Err(storage(error));
        }
        released("put_back");
        Ok(false)
    }

    /// Puts back what [`FileService::release_shared`] could not, while a key names it.
    async fn put_back_owed(&self) -> Result<(), FileError> {
        let owed = std::mem::take(&mut *self.put_back.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for hash in owed {
            if self.files.references(&hash).map_err(storage)? == 0 {
                continue; // the reaper's next pass deals with it
            }
            if let (Some(shared), Some((_, path))) = (&self.shared, self.store.locate(&hash, Tier::Hot).await) {
                if let Err(error) = Box::pin(shared.put(hash.as_str(), &path)).await {
                    self.put_back.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(hash);
                    return Err(storage(error));
                }
            }
        }
        Ok(())
    }
}
