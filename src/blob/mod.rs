//! The file store: content stored once per blake3 hash, under keys the app chooses.
//!
//! Content lives in `<tier>/<first two hex digits>/<hash>`, where the hot tier is
//! `<data>/blobs/hot` and the cold tier is the folder `files.cold_dir` names. An upload streams
//! into `<data>/blobs/tmp/` while it is hashed, is fsynced, then renamed into place (or dropped,
//! if that content is already stored), so a file under its hash name is always complete and a
//! cut upload leaves nothing behind (leftovers in `tmp/` are removed at start-up). Keys, owners,
//! tiers and reference counts are events and a projection (`projection::files`); content that no
//! key references any more is deleted by the reaper.
//!
//! A move between tiers ([`BlobStore::copy_to_tier`], then an event, then
//! [`BlobStore::drop_from_tier`]) copies into the target tier's `tmp/`, fsyncs, renames into
//! place, re-reads and checks the hash, and only then removes the source. A crash at any step
//! leaves a complete copy under its hash name; [`BlobStore::settle`] removes the extra copy at
//! start-up, keeping the one the projection records.

pub mod lifecycle;
pub mod service;

use std::path::{Path, PathBuf};

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

pub use crate::ids::{ContentHash, FileKey, InvalidFileKey, Tier};

/// What can go wrong storing content; each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the upload is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the content's blake3 is {actual}, not the {expected} the client announced")]
    HashMismatch { expected: String, actual: String },
    #[error("the upload was cut off: {0}")]
    Cut(String),
    #[error("no {} tier is configured (set files.cold_dir)", .0.as_str())]
    NoTier(Tier),
    #[error("file store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobError {
    /// How the edges report this error (its HTTP status is the code's).
    pub fn code(&self) -> crate::error_code::ErrorCode {
        use crate::error_code::ErrorCode;
        match self {
            BlobError::TooLarge { .. } => ErrorCode::UploadTooLarge,
            BlobError::HashMismatch { .. } => ErrorCode::HashMismatch,
            BlobError::Cut(_) => ErrorCode::UploadCut,
            BlobError::NoTier(_) => ErrorCode::NoTier,
            BlobError::Io(_) => ErrorCode::StorageUnavailable,
        }
    }
}

/// Content written: its hash and size, and whether it was new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub hash: ContentHash,
    pub size: u64,
}

/// The content files.
#[derive(Debug, Clone)]
pub struct BlobStore {
    hot: PathBuf,
    cold: Option<PathBuf>,
    tmp: PathBuf,
    quarantine: PathBuf,
}

/// Removes a temporary file unless disarmed: an upload that fails or is dropped half way
/// leaves nothing behind.
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Content whose bytes no longer match its name, moved aside by [`BlobStore::scrub`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damaged {
    pub hash: ContentHash,
    pub tier: Tier,
    /// The blake3 of the bytes found.
    pub found: String,
    /// Where the file was moved.
    pub quarantined_to: PathBuf,
}

use crate::durable::sync_dir;

/// Passes writes through to a file and a hasher alike.
struct HashingWriter<'a>(&'a mut blake3::Hasher, &'a mut std::fs::File);

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.1.write(buf)?;
        self.0.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

/// The blake3 of a file's bytes, read in full.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn clear_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let _ = std::fs::remove_file(entry?.path());
    }
    Ok(())
}

impl BlobStore {
    /// Opens the store under `root` (`<data>/blobs`) with an optional cold tier, removing
    /// uploads and tier copies a crash cut off.
    pub fn open(root: &Path, cold: Option<&Path>) -> std::io::Result<Self> {
        let store = Self {
            hot: root.join("hot"),
            cold: cold.map(Path::to_path_buf),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
        };
        crate::durable::create_dir_all(&store.hot)?;
        crate::durable::create_dir_all(&store.quarantine)?;
        clear_dir(&store.tmp)?;
        if let Some(cold) = &store.cold {
            clear_dir(&cold.join("tmp"))?;
        }
        Ok(store)
    }

    /// The store's paths under `root`, touching nothing on disk: for a reader beside the
    /// running server (a backup), which must not clear the server's `tmp/`.
    pub fn at(root: &Path, cold: Option<&Path>) -> Self {
        Self {
            hot: root.join("hot"),
            cold: cold.map(Path::to_path_buf),
            tmp: root.join("tmp"),
            quarantine: root.join("quarantine"),
        }
    }

    /// [`BlobStore::locate`] for blocking code, hot tier first.
    pub fn find(&self, hash: &ContentHash) -> Option<(Tier, PathBuf)> {
        [Tier::Hot, Tier::Cold]
            .into_iter()
            .filter_map(|tier| self.path_in(tier, hash).map(|path| (tier, path)))
            .find(|(_, path)| path.is_file())
    }

    /// Writes content read from `input` into `tier` (blocking: a restore): through the tier's
    /// `tmp/`, hashed on the way and refused unless it is `hash`, fsynced, renamed into place.
    /// Returns the bytes written.
    pub fn install(
        &self,
        tier: Tier,
        hash: &ContentHash,
        input: &mut (impl std::io::Read + ?Sized),
    ) -> Result<u64, BlobError> {
        let (root, target) = match (self.tier_dir(tier), self.path_in(tier, hash)) {
            (Some(root), Some(target)) => (root.to_path_buf(), target),
            _ => return Err(BlobError::NoTier(tier)),
        };
        let tmp_dir = if tier == Tier::Hot { self.tmp.clone() } else { root.join("tmp") };
        std::fs::create_dir_all(&tmp_dir)?;
        let tmp = tmp_dir.join(format!("{:032x}", uuid::Uuid::new_v4().as_u128()));
        let result = (|| {
            let mut output = std::fs::File::create(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let size = std::io::copy(input, &mut HashingWriter(&mut hasher, &mut output))?;
            output.sync_all()?;
            let actual = hasher.finalize().to_hex().to_string();
            if actual != hash.as_str() {
                return Err(BlobError::HashMismatch { expected: hash.to_string(), actual });
            }
            let dir = target.parent().ok_or(BlobError::NoTier(tier))?;
            crate::durable::create_dir_all(dir)?;
            std::fs::rename(&tmp, &target)?;
            sync_dir(dir)?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Whether a cold tier is configured.
    pub fn has_cold(&self) -> bool {
        self.cold.is_some()
    }

    fn tier_dir(&self, tier: Tier) -> Option<&Path> {
        match tier {
            Tier::Hot => Some(&self.hot),
            Tier::Cold => self.cold.as_deref(),
        }
    }

    /// The folders of the tiers in use (for disk figures).
    pub fn tier_dirs(&self) -> Vec<(Tier, PathBuf)> {
        [Tier::Hot, Tier::Cold].into_iter().filter_map(|t| self.tier_dir(t).map(|d| (t, d.to_path_buf()))).collect()
    }

    /// Where content of `hash` lives in the hot tier (where uploads land).
    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        self.hot.join(&hash.as_str()[..2]).join(hash.as_str())
    }

    /// Where content of `hash` lives in `tier`, if that tier exists.
    pub fn path_in(&self, tier: Tier, hash: &ContentHash) -> Option<PathBuf> {
        self.tier_dir(tier).map(|dir| dir.join(&hash.as_str()[..2]).join(hash.as_str()))
    }

    /// The tier and path where content of `hash` is, looking in `first` before the other
    /// tier (a move may be under way: either copy is complete under its name).
    pub async fn locate(&self, hash: &ContentHash, first: Tier) -> Option<(Tier, PathBuf)> {
        let second = if first == Tier::Hot { Tier::Cold } else { Tier::Hot };
        for tier in [first, second] {
            if let Some(path) = self.path_in(tier, hash) {
                if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                    return Some((tier, path));
                }
            }
        }
        None
    }

    /// Streams `body` into the store: at most `limit` bytes, hashed on the way, fsynced, then
    /// renamed into place. With `expected`, content whose hash differs is refused.
    pub async fn write<S, B, E>(&self, mut body: S, limit: u64, expected: Option<&str>) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: Buf,
        E: std::fmt::Display,
    {
        let tmp = self.tmp.join(format!("{:032x}", uuid::Uuid::new_v4().as_u128()));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|e| BlobError::Cut(e.to_string()))?;
            while chunk.has_remaining() {
                let part = chunk.chunk();
                size += part.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(part);
                file.write_all(part).await?;
                let n = part.len();
                chunk.advance(n);
            }
        }
        file.sync_all().await?;
        drop(file);
        let hash = ContentHash::of(&hasher.finalize());
        if let Some(expected) = expected.filter(|e| !e.eq_ignore_ascii_case(hash.as_str())) {
            return Err(BlobError::HashMismatch { expected: expected.to_owned(), actual: hash.to_string() });
        }
        let path = self.path(&hash);
        if tokio::fs::try_exists(&path).await? {
            return Ok(Stored { hash, size }); // stored once per hash: the guard drops the copy
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.hot.clone());
        let placed = tmp.clone();
        // The rename is durable once the folder is, and a new fan-out folder once its parent is.
        tokio::task::spawn_blocking(move || {
            crate::durable::create_dir_all(&dir)?;
            std::fs::rename(&placed, &path)?;
            sync_dir(&dir)
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        guard.0 = None;
        Ok(Stored { hash, size })
    }

    /// Deletes content from every tier; gone already is fine.
    pub async fn remove(&self, hash: &ContentHash) -> std::io::Result<()> {
        for tier in [Tier::Hot, Tier::Cold] {
            self.drop_from_tier(hash, tier).await?;
        }
        Ok(())
    }

    /// The first half of a move between tiers: copies the content into `to`'s `tmp/`, checks
    /// its hash while copying, fsyncs, renames it into place, then reads it back and checks the
    /// hash again. Content already complete in `to` is left as it is. The source stays.
    pub async fn copy_to_tier(&self, hash: &ContentHash, to: Tier) -> Result<u64, BlobError> {
        let target = self.path_in(to, hash).ok_or(BlobError::NoTier(to))?;
        let from = if to == Tier::Hot { Tier::Cold } else { Tier::Hot };
        let source = self.path_in(from, hash).ok_or(BlobError::NoTier(from))?;
        // Staged where start-up clears leftovers: `<data>/blobs/tmp` for the hot tier (as
        // uploads and `install`), the cold tier's own `tmp/` (a rename must stay on one
        // filesystem). A copy cut off by a crash never stays behind.
        let (target_dir, tmp_dir) = match (target.parent(), self.tier_dir(to)) {
            (Some(fan), Some(_)) if to == Tier::Hot => (fan.to_path_buf(), self.tmp.clone()),
            (Some(fan), Some(root)) => (fan.to_path_buf(), root.join("tmp")),
            _ => return Err(BlobError::NoTier(to)),
        };
        if tokio::fs::try_exists(&target).await? {
            let check = target.clone();
            let found =
                tokio::task::spawn_blocking(move || hash_file(&check)).await.map_err(std::io::Error::other)??;
            if found == hash.as_str() {
                return Ok(tokio::fs::metadata(&target).await?.len());
            }
            tokio::fs::remove_file(&target).await?; // a damaged earlier copy: start again
        }
        // A tier's `tmp/` may be missing: a cold folder created or recreated while running.
        tokio::fs::create_dir_all(&tmp_dir).await?;
        let tmp = tmp_dir.join(format!("{:032x}", uuid::Uuid::new_v4().as_u128()));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut input = tokio::fs::File::open(&source).await?;
        let mut output = tokio::fs::File::create(&tmp).await?;
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut input, &mut buffer).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            output.write_all(&buffer[..n]).await?;
            size += n as u64;
            if size == n as u64 {
                output.flush().await?;
                crate::fault::pause("tier-move:copying").await;
            }
        }
        output.sync_all().await?;
        drop(output);
        let actual = hasher.finalize().to_hex().to_string();
        if actual != hash.as_str() {
            return Err(BlobError::HashMismatch { expected: hash.to_string(), actual });
        }
        let (dir, placed, check) = (target_dir.clone(), tmp.clone(), target.clone());
        let reread = tokio::task::spawn_blocking(move || {
            crate::durable::create_dir_all(&dir)?;
            std::fs::rename(&placed, &check)?;
            sync_dir(&dir)?;
            hash_file(&check)
        })
        .await
        .map_err(std::io::Error::other)??;
        guard.0 = None;
        if reread != hash.as_str() {
            let _ = tokio::fs::remove_file(&target).await;
            return Err(BlobError::HashMismatch { expected: hash.to_string(), actual: reread });
        }
        crate::fault::pause("tier-move:copied").await;
        Ok(size)
    }

    /// The last half of a move (and the reaper's deletion): removes the copy in `tier`, durably;
    /// gone already is fine.
    pub async fn drop_from_tier(&self, hash: &ContentHash, tier: Tier) -> std::io::Result<()> {
        let Some(path) = self.path_in(tier, hash) else { return Ok(()) };
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(()) => match path.parent() {
                Some(dir) => {
                    let dir = dir.to_path_buf();
                    tokio::task::spawn_blocking(move || sync_dir(&dir)).await.map_err(std::io::Error::other)?
                }
                None => Ok(()),
            },
        }
    }

    /// After a crash during a move, content can be complete in both tiers: keeps the copy in
    /// the tier `recorded` names (if its bytes are good) and removes the other. Returns the
    /// copies removed.
    pub fn settle(
        &self,
        recorded: impl Fn(&ContentHash) -> std::io::Result<Tier>,
    ) -> std::io::Result<Vec<(ContentHash, Tier)>> {
        let mut removed = Vec::new();
        let Some(cold) = &self.cold else { return Ok(removed) };
        for (hash, _) in list_tier(cold)? {
            let (hot, cold) = (self.path(&hash), cold.join(&hash.as_str()[..2]).join(hash.as_str()));
            if !hot.exists() {
                continue;
            }
            let (keep, extra, extra_tier) = match recorded(&hash)? {
                Tier::Hot => (hot, cold, Tier::Cold),
                Tier::Cold => (cold, hot, Tier::Hot),
            };
            if hash_file(&keep)? != hash.as_str() {
                tracing::warn!(%hash, kept = %keep.display(), "both tiers hold this content and the recorded copy is damaged; keeping both for scrub");
                continue;
            }
            std::fs::remove_file(&extra)?;
            if let Some(dir) = extra.parent() {
                sync_dir(dir)?;
            }
            tracing::info!(%hash, removed = %extra.display(), "a tier move cut off by a crash is settled");
            removed.push((hash, extra_tier));
        }
        Ok(removed)
    }

    /// Every content file: hash, tier and size on disk.
    pub fn contents(&self) -> std::io::Result<Vec<(ContentHash, Tier, u64)>> {
        let mut out = Vec::new();
        for (tier, dir) in self.tier_dirs() {
            out.extend(list_tier(&dir)?.into_iter().map(|(hash, size)| (hash, tier, size)));
        }
        out.sort();
        Ok(out)
    }

    /// Re-hashes every content file (on the calling thread: run it on a blocking one) and
    /// moves any whose bytes no longer match its name into `<data>/blobs/quarantine/`.
    pub fn scrub(&self) -> std::io::Result<(u64, u64, Vec<Damaged>)> {
        let (mut files, mut bytes, mut damaged) = (0u64, 0u64, Vec::new());
        for (hash, tier, size) in self.contents()? {
            let Some(path) = self.path_in(tier, &hash) else { continue };
            let found = match hash_file(&path) {
                Ok(found) => found,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => return Err(e),
            };
            files += 1;
            bytes += size;
            if found != hash.as_str() {
                let to = self.quarantine.join(format!("{hash}.{}", tier.as_str()));
                std::fs::rename(&path, &to)
                    .or_else(|_| std::fs::copy(&path, &to).and_then(|_| std::fs::remove_file(&path)))?;
                tracing::error!(%hash, tier = tier.as_str(), %found, to = %to.display(), "content damaged: quarantined");
                damaged.push(Damaged { hash, tier, found, quarantined_to: to });
            }
        }
        Ok((files, bytes, damaged))
    }
}

/// The content files of one tier folder: hash and size.
fn list_tier(dir: &Path) -> std::io::Result<Vec<(ContentHash, u64)>> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(dir)? {
        let fan = fan?;
        if !fan.file_type()?.is_dir() || fan.file_name().len() != 2 {
            continue;
        }
        for entry in std::fs::read_dir(fan.path())? {
            let entry = entry?;
            if let Some(hash) = entry.file_name().to_str().and_then(ContentHash::parse) {
                out.push((hash, entry.metadata()?.len()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_hash_that_is_not_one_does_not_decode() {
        for bad in ["a", "/etc/passwd", "../../x", &"A".repeat(64)] {
            assert!(serde_json::from_value::<ContentHash>(serde_json::json!(bad)).is_err(), "{bad}");
        }
        let good = "0".repeat(64);
        assert_eq!(serde_json::from_value::<ContentHash>(serde_json::json!(good)).expect("good").as_str(), good);
    }

    #[test]
    fn keys_cannot_leave_the_store() {
        for good in ["temp_photos/x.jpg", "permanent/photos/a-b_c.1.mp3", "tts/1"] {
            assert!(FileKey::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "../etc/passwd", "a/../b", "/abs", "a//b", "a/", "./a", "a b", "a\\\\b", "é", &"x".repeat(513)]
        {
            assert!(FileKey::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
