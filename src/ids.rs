//! The ids the events carry: file keys, content hashes, storage tiers. Plain checked values,
//! below the events and everything that uses them (the file store, the projections, the log's
//! compaction rule), so that none of those has to import another for them.

use serde::{Deserialize, Serialize};

/// Where content lives: the data folder (hot) or the folder an operator names (cold).
/// S3 storage classes map to tiers in `blob::lifecycle::tier_of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Hot,
    Cold,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Cold => "cold",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "hot" => Some(Tier::Hot),
            "cold" => Some(Tier::Cold),
            _ => None,
        }
    }
}

/// A content hash: 64 lower-case hex digits of blake3. Checked when read back too (a record
/// of a crafted backup archive once named `/etc/passwd` as content, which a path join served).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentHash(String);

impl TryFrom<String> for ContentHash {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or_else(|| format!("{value:?} is not a content hash (64 lower-case hex digits)"))
    }
}

impl From<ContentHash> for String {
    fn from(value: ContentHash) -> Self {
        value.0
    }
}

impl ContentHash {
    /// The name of content whose blake3 is `hash`.
    pub fn of(hash: &blake3::Hash) -> Self {
        Self(hash.to_hex().to_string())
    }

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
