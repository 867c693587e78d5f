//! The files projection: key → stored content, reference counts per content hash, keys by
//! owner session, and content that no key references any more (for the reaper). One sled tree,
//! written atomically with the checkpoint.
//!
//! | key | value |
//! |---|---|
//! | `c` | checkpoint (u64 BE) |
//! | `k` key | a [`FileEntry`] |
//! | `r` hash | keys referencing the content (u64 BE) |
//! | `o` session `/` key | nothing: the session owns the key |
//! | `u` hash | nothing: no key references the content; the reaper deletes it |
//! | `t` hash | the content's tier when it is not hot (`cold`) |
//!
//! A purged session takes its keys with it: `SessionPurged` removes every key it owns, through
//! the same path as `FileDeleted`.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::tree::{self, u64_of};
use super::{Projection, ProjectionError};
use crate::event::{Envelope, Event, SessionId};
use crate::ids::{ContentHash, FileKey, Tier};

const TREE: &str = "proj.files";

/// A key as the store serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub key: FileKey,
    pub hash: ContentHash,
    pub size: u64,
    pub content_type: String,
    pub owner: Option<SessionId>,
    pub stored_at_unix_ms: u64,
}

/// Read access; cheap to clone.
#[derive(Debug, Clone)]
pub struct Files {
    tree: sled::Tree,
}

impl Files {
    /// Every entry except the checkpoint, for comparing a rebuilt projection with the live one.
    pub fn dump(&self) -> Result<Vec<super::Entry>, ProjectionError> {
        tree::dump(&self.tree)
    }
}

/// The writing side.
#[derive(Debug)]
pub struct FilesProjection {
    tree: sled::Tree,
}

pub fn open(db: &crate::state::StateDb) -> Result<(Files, FilesProjection), ProjectionError> {
    let tree = db.open_tree(TREE)?;
    Ok((Files { tree: tree.clone() }, FilesProjection { tree }))
}

fn prefixed(prefix: u8, text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + text.len());
    key.push(prefix);
    key.extend_from_slice(text.as_bytes());
    key
}

fn owner_key(owner: &SessionId, key: &FileKey) -> Vec<u8> {
    prefixed(b'o', &format!("{}/{}", owner.as_str(), key.as_str()))
}

fn decode(bytes: &[u8]) -> Result<FileEntry, ProjectionError> {
    rmp_serde::from_slice(bytes).map_err(|e| ProjectionError::Task(format!("file entry does not decode: {e}")))
}

impl Files {
    pub fn get(&self, key: &FileKey) -> Result<Option<FileEntry>, ProjectionError> {
        self.tree.get(prefixed(b'k', key.as_str()))?.map(|v| decode(&v)).transpose()
    }

    pub fn checkpoint(&self) -> Result<u64, ProjectionError> {
        tree::checkpoint(&self.tree)
    }

    /// Keys referencing the content.
    pub fn references(&self, hash: &ContentHash) -> Result<u64, ProjectionError> {
        Ok(self.tree.get(prefixed(b'r', hash.as_str()))?.map_or(0, |v| u64_of(&v)))
    }

    /// Up to `limit` keys starting with `prefix`, after `after`, in key order.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<FileEntry>, ProjectionError> {
        let start = match after {
            Some(after) if after >= prefix => {
                let mut key = prefixed(b'k', after);
                key.push(0);
                key
            }
            _ => prefixed(b'k', prefix),
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (key, value) = item?;
            if !key.starts_with(&prefixed(b'k', prefix)) {
                break;
            }
            out.push(decode(&value)?);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// The keys a session owns, in key order.
    pub fn owned(&self, owner: &SessionId) -> Result<Vec<FileKey>, ProjectionError> {
        let prefix = prefixed(b'o', &format!("{}/", owner.as_str()));
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (key, _) = item?;
            if let Ok(file) = FileKey::parse(&String::from_utf8_lossy(&key[prefix.len()..])) {
                out.push(file);
            }
        }
        Ok(out)
    }

    /// Content that no key references: the reaper's work.
    pub fn unreferenced(&self, limit: usize) -> Result<Vec<ContentHash>, ProjectionError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"u").take(limit) {
            let (key, _) = item?;
            if let Some(hash) = std::str::from_utf8(&key[1..]).ok().and_then(ContentHash::parse) {
                out.push(hash);
            }
        }
        Ok(out)
    }

    /// Whether the content waits for the reaper (a key naming it was deleted).
    pub fn reaping(&self, hash: &ContentHash) -> Result<bool, ProjectionError> {
        Ok(self.tree.contains_key(prefixed(b'u', hash.as_str()))?)
    }

    /// The reaper deleted the content: forget it (unless a key references it again).
    pub fn reaped(&self, hash: &ContentHash) -> Result<(), ProjectionError> {
        let mut write = sled::Batch::default();
        write.remove(prefixed(b'u', hash.as_str()));
        write.remove(prefixed(b't', hash.as_str()));
        self.tree.apply_batch(write)?;
        Ok(())
    }

    /// The tier the log records for the content: hot unless it was moved.
    pub fn tier(&self, hash: &ContentHash) -> Result<Tier, ProjectionError> {
        Ok(match self.tree.get(prefixed(b't', hash.as_str()))? {
            Some(v) if v.as_ref() == b"cold" => Tier::Cold,
            _ => Tier::Hot,
        })
    }
}

/// Changes of one batch, read once and written together.
#[derive(Default)]
struct Pending {
    entries: HashMap<FileKey, Option<FileEntry>>,
    refs: HashMap<ContentHash, u64>,
    owned: HashMap<Vec<u8>, bool>,
    tiers: HashMap<ContentHash, Tier>,
}

impl Projection for FilesProjection {
    fn name(&self) -> &'static str {
        crate::projection::Kind::Files.name()
    }

    fn checkpoint(&self) -> Result<u64, ProjectionError> {
        self.reader().checkpoint()
    }

    fn apply(&mut self, batch: &[Envelope]) -> Result<(), ProjectionError> {
        let mut p = Pending::default();
        for envelope in batch {
            match &envelope.event {
                Event::FileStored(e) => {
                    self.unset(&mut p, &e.key)?;
                    let entry = FileEntry {
                        key: e.key.clone(),
                        hash: e.hash.clone(),
                        size: e.size,
                        content_type: e.content_type.clone(),
                        owner: e.owner.clone(),
                        stored_at_unix_ms: envelope.at_unix_ms,
                    };
                    *self.refs(&mut p, &e.hash)? += 1;
                    if let Some(owner) = &e.owner {
                        p.owned.insert(owner_key(owner, &e.key), true);
                    }
                    p.entries.insert(e.key.clone(), Some(entry));
                }
                Event::FileDeleted(e) => self.unset(&mut p, &e.key)?,
                Event::ContentMoved(e) => {
                    p.tiers.insert(e.hash.clone(), e.to);
                }
                Event::SessionPurged(e) => self.purge_owned(&mut p, &e.id)?,
                Event::SessionsPurged(e) => {
                    for session in &e.sessions {
                        self.purge_owned(&mut p, &session.id)?;
                    }
                }
                _ => {}
            }
        }
        if p.entries.is_empty() && p.refs.is_empty() && p.owned.is_empty() && p.tiers.is_empty() {
            return tree::advance(&self.tree, batch.last().map(|e| e.seq));
        }
        let mut write = sled::Batch::default();
        for (key, entry) in &p.entries {
            match entry {
                Some(entry) => {
                    write.insert(prefixed(b'k', key.as_str()), rmp_serde::to_vec(entry).expect("plain struct"))
                }
                None => write.remove(prefixed(b'k', key.as_str())),
            }
        }
        for (hash, refs) in &p.refs {
            if *refs == 0 {
                write.remove(prefixed(b'r', hash.as_str()));
                write.insert(prefixed(b'u', hash.as_str()), &[]);
            } else {
                write.insert(prefixed(b'r', hash.as_str()), &refs.to_be_bytes());
                write.remove(prefixed(b'u', hash.as_str()));
            }
        }
        for (key, present) in p.owned {
            if present {
                write.insert(key, &[]);
            } else {
                write.remove(key);
            }
        }
        for (hash, tier) in p.tiers {
            match tier {
                Tier::Hot => write.remove(prefixed(b't', hash.as_str())),
                Tier::Cold => write.insert(prefixed(b't', hash.as_str()), Tier::Cold.as_str().as_bytes()),
            }
        }
        tree::commit(&self.tree, write, batch)
    }

    fn reset(&mut self) -> Result<(), ProjectionError> {
        tree::reset(&self.tree)
    }
}

impl FilesProjection {
    fn reader(&self) -> Files {
        Files { tree: self.tree.clone() }
    }

    fn refs<'a>(&self, p: &'a mut Pending, hash: &ContentHash) -> Result<&'a mut u64, ProjectionError> {
        if !p.refs.contains_key(hash) {
            let stored = self.reader().references(hash)?;
            p.refs.insert(hash.clone(), stored);
        }
        Ok(p.refs.get_mut(hash).expect("inserted just above"))
    }

    /// Removes every key `session` owns: its keys as stored, updated by what this batch
    /// already stored or released.
    fn purge_owned(&self, p: &mut Pending, session: &SessionId) -> Result<(), ProjectionError> {
        let prefix = prefixed(b'o', &format!("{}/", session.as_str()));
        let mut owned: BTreeSet<Vec<u8>> = BTreeSet::new();
        for item in self.tree.scan_prefix(&prefix) {
            owned.insert(item?.0.to_vec());
        }
        for (key, &present) in p.owned.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            if present {
                owned.insert(key.clone());
            } else {
                owned.remove(key);
            }
        }
        for key in owned {
            if let Ok(file) = FileKey::parse(&String::from_utf8_lossy(&key[prefix.len()..])) {
                self.unset(p, &file)?;
            }
        }
        Ok(())
    }

    /// Removes a key, if present, releasing its content and its owner's claim.
    fn unset(&self, p: &mut Pending, key: &FileKey) -> Result<(), ProjectionError> {
        let current = match p.entries.get(key) {
            Some(entry) => entry.clone(),
            None => self.reader().get(key)?,
        };
        let Some(current) = current else { return Ok(()) };
        let refs = self.refs(p, &current.hash)?;
        *refs = refs.saturating_sub(1);
        if let Some(owner) = &current.owner {
            p.owned.insert(owner_key(owner, key), false);
        }
        p.entries.insert(key.clone(), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FileDeleted, FileStored, SessionDue};
    use crate::log::EventLog;
    use crate::projection::catch_up;
    use crate::projection::testing::{append, memory_log, state};

    fn key(name: &str) -> FileKey {
        FileKey::parse(name).expect("a valid key")
    }

    fn hash(content: &str) -> ContentHash {
        ContentHash::of(&blake3::hash(content.as_bytes()))
    }

    fn owner() -> SessionId {
        SessionId::parse(&"a".repeat(32)).expect("a valid session id")
    }

    fn stored(name: &str, content: &str, owner: Option<SessionId>) -> Event {
        Event::FileStored(FileStored {
            key: key(name),
            hash: hash(content),
            size: content.len() as u64,
            content_type: "text/plain".into(),
            owner,
        })
    }

    fn deleted(name: &str, content: &str) -> Event {
        Event::FileDeleted(FileDeleted { key: key(name), hash: hash(content), reason: "deleted by the app".into() })
    }

    fn projection() -> (Files, FilesProjection, crate::state::StateDb) {
        let db = state();
        let (read, write) = open(&db).expect("open files");
        (read, write, db)
    }

    fn apply(log: &EventLog, projection: &mut FilesProjection) {
        catch_up(log, projection, |_| {}).expect("catch up");
    }

    #[tokio::test]
    async fn given_a_stored_key_then_it_reads_back_with_its_content_referenced_and_not_reaped() {
        let log = memory_log();
        let (files, mut projection, _db) = projection();
        let at = append(&log, stored("photos/cat.txt", "meow", Some(owner()))).await.at_unix_ms;
        apply(&log, &mut projection);

        let entry = files.get(&key("photos/cat.txt")).expect("get").expect("the key is stored");
        assert_eq!((entry.hash, entry.size, entry.stored_at_unix_ms), (hash("meow"), 4, at));
        assert_eq!(files.references(&hash("meow")).expect("references"), 1);
        assert_eq!(files.owned(&owner()).expect("owned"), vec![key("photos/cat.txt")]);
        assert_eq!(files.list("photos/", None, 10).expect("list").len(), 1);
        assert!(files.unreferenced(10).expect("unreferenced").is_empty());
    }

    #[tokio::test]
    async fn given_two_keys_on_one_content_when_both_are_deleted_then_the_reaper_lists_it_only_after_the_last() {
        let log = memory_log();
        let (files, mut projection, _db) = projection();
        append(&log, stored("a.txt", "same", None)).await;
        append(&log, stored("b.txt", "same", None)).await;
        append(&log, deleted("a.txt", "same")).await;
        apply(&log, &mut projection);
        assert_eq!(files.get(&key("a.txt")).expect("get"), None);
        assert_eq!(files.references(&hash("same")).expect("references"), 1);
        assert!(files.unreferenced(10).expect("unreferenced").is_empty(), "b.txt still names the content");

        append(&log, deleted("b.txt", "same")).await;
        apply(&log, &mut projection);

        assert_eq!(files.unreferenced(10).expect("unreferenced"), vec![hash("same")]);
        assert!(files.reaping(&hash("same")).expect("reaping"));
        files.reaped(&hash("same")).expect("the reaper deleted it");
        assert!(files.unreferenced(10).expect("unreferenced").is_empty(), "forgotten once reaped");
    }

    #[tokio::test]
    async fn given_content_waiting_for_the_reaper_when_a_key_names_it_again_then_it_is_no_longer_listed() {
        let log = memory_log();
        let (files, mut projection, _db) = projection();
        append(&log, stored("a.txt", "again", None)).await;
        append(&log, deleted("a.txt", "again")).await;
        apply(&log, &mut projection);
        assert_eq!(files.unreferenced(10).expect("unreferenced"), vec![hash("again")]);

        append(&log, stored("b.txt", "again", None)).await;
        apply(&log, &mut projection);

        assert!(files.unreferenced(10).expect("unreferenced").is_empty(), "the reaper must not delete b.txt's content");
        assert_eq!(files.references(&hash("again")).expect("references"), 1);
    }

    #[tokio::test]
    async fn given_a_purged_session_then_its_keys_go_with_it_and_their_content_waits_for_the_reaper() {
        let log = memory_log();
        let (files, mut projection, _db) = projection();
        append(&log, stored("owned.txt", "mine", Some(owner()))).await;
        append(&log, stored("shared.txt", "public", None)).await;
        let purge = SessionDue {
            id: owner(),
            due_at_unix_ms: 1,
            applied_at_unix_ms: 1,
            reason: "unpaid at its purge age".into(),
            rule: "sessions.purge_after=7days".into(),
        };
        append(&log, Event::SessionPurged(purge)).await;
        apply(&log, &mut projection);

        assert_eq!(files.get(&key("owned.txt")).expect("get"), None);
        assert!(files.owned(&owner()).expect("owned").is_empty());
        assert_eq!(files.unreferenced(10).expect("unreferenced"), vec![hash("mine")]);
        assert!(files.get(&key("shared.txt")).expect("get").is_some(), "a key nobody owns stays");
    }
}
