//! The file store: content stored once per blake3 hash, under keys the app chooses.
//!
//! Content lives in `<data>/blobs/hot/<first two hex digits>/<hash>`. An upload streams into
//! `<data>/blobs/tmp/` while it is hashed, is fsynced, then renamed into place (or dropped, if
//! that content is already stored), so a file under its hash name is always complete and a cut
//! upload leaves nothing behind (leftovers in `tmp/` are removed at start-up). Keys, owners and
//! reference counts are events and a projection (`projection::files`); content that no key
//! references any more is deleted by the reaper.

pub mod lifecycle;
pub mod service;

use std::path::{Path, PathBuf};

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// A content hash: 64 lower-case hex digits of blake3.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentHash(String);

impl ContentHash {
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file key, checked: 1 to 512 bytes of `/`-separated segments of `[A-Za-z0-9._-]`, no
/// segment empty, `.` or `..` — so a key can never name a path outside the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileKey(String);

/// A key that breaks the rules of [`FileKey::parse`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid file key {0:?}: use 1 to 512 bytes of /-separated segments of A-Z a-z 0-9 . _ - (no empty, . or .. segment)")]
pub struct InvalidFileKey(String);

impl FileKey {
    pub const LEN_MAX: usize = 512;

    pub fn parse(text: &str) -> Result<Self, InvalidFileKey> {
        let segments_ok = text.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
        if text.is_empty() || text.len() > Self::LEN_MAX || !segments_ok {
            return Err(InvalidFileKey(text.chars().take(80).collect()));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FileKey {
    type Error = InvalidFileKey;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<FileKey> for String {
    fn from(value: FileKey) -> Self {
        value.0
    }
}

impl std::fmt::Display for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What can go wrong storing content; each has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the upload is over the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the content's blake3 is {actual}, not the {expected} the client announced")]
    HashMismatch { expected: String, actual: String },
    #[error("the upload was cut off: {0}")]
    Cut(String),
    #[error("file store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobError {
    pub fn code(&self) -> &'static str {
        match self {
            BlobError::TooLarge { .. } => "upload_too_large",
            BlobError::HashMismatch { .. } => "hash_mismatch",
            BlobError::Cut(_) => "upload_cut",
            BlobError::Io(_) => "storage_unavailable",
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
    tmp: PathBuf,
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

impl BlobStore {
    /// Opens the store under `root` (`<data>/blobs`), removing uploads a crash cut off.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let store = Self { hot: root.join("hot"), tmp: root.join("tmp") };
        std::fs::create_dir_all(&store.hot)?;
        std::fs::create_dir_all(&store.tmp)?;
        for entry in std::fs::read_dir(&store.tmp)? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(store)
    }

    /// Where content of `hash` lives.
    pub fn path(&self, hash: &ContentHash) -> PathBuf {
        self.hot.join(&hash.as_str()[..2]).join(hash.as_str())
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
        let actual = hasher.finalize().to_hex().to_string();
        if let Some(expected) = expected.filter(|e| !e.eq_ignore_ascii_case(&actual)) {
            return Err(BlobError::HashMismatch { expected: expected.to_owned(), actual });
        }
        let hash = ContentHash(actual);
        let path = self.path(&hash);
        if tokio::fs::try_exists(&path).await? {
            return Ok(Stored { hash, size }); // stored once per hash: the guard drops the copy
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.hot.clone());
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(&tmp, &path).await?;
        guard.0 = None;
        // The rename is durable once the folder is.
        tokio::task::spawn_blocking(move || std::fs::File::open(dir).and_then(|d| d.sync_all()))
            .await
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))??;
        Ok(Stored { hash, size })
    }

    /// Deletes content; gone already is fine.
    pub async fn remove(&self, hash: &ContentHash) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(hash)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every content file: hash and size on disk.
    pub fn contents(&self) -> std::io::Result<Vec<(ContentHash, u64)>> {
        let mut out = Vec::new();
        for fan in std::fs::read_dir(&self.hot)? {
            let fan = fan?;
            if !fan.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(fan.path())? {
                let entry = entry?;
                if let Some(hash) = entry.file_name().to_str().and_then(ContentHash::parse) {
                    out.push((hash, entry.metadata()?.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
