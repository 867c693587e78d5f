//! Backups: one archive of a consistent cut of the log, verifiable without restoring it, and
//! restores into an empty folder, up to a seq or a time.
//!
//! The log is the truth (DESIGN.md): an archive holds every record up to the cut, as stored,
//! and a restore rebuilds the projections from them. Archive layout (tar):
//!
//! | entry | content |
//! |---|---|
//! | `manifest.json` | [`Manifest`]: kind, cut, base, and the size and blake3 of every other part |
//! | `manifest.json.blake3` | blake3 of `manifest.json`, hex |
//! | `log/NNNNNN.rec` | records: (u32 BE length, stored envelope bytes) repeated, seq ascending |
//! | `config.toml` | the configuration in force when the backup was taken |
//! | `content/<tier>/<hash>` | the file store's content that keys stored in the archive's records name at the cut, as found in its tier |
//!
//! An incremental archive holds the records after its base's cut and names the base by its
//! cut and its manifest's hash, so a restore can check the chain.
//!
//! Content is immutable under its hash, so a backup reads it beside the running server. Each
//! archive carries the content named by the keys its own records store (an incremental one, the
//! content uploaded since its base); content deleted between the cut and the moment the backup
//! reads it, or whose bytes no longer match their hash, is listed in `content_skipped`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blob::{BlobError, BlobStore, ContentHash, FileKey, Tier};
use crate::event::{decode, DecodeError, Event, StreamId};
use crate::log::LogError;

/// Archive format written by this build.
pub const FORMAT: &str = "roomlog-backup/1";
/// Records per `log/` part.
pub const PART_EVENTS_MAX: usize = 65_536;

/// What an archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub roomlog_version: String,
    pub created_unix_ms: u64,
    /// The archive this one continues, for an incremental backup.
    pub base: Option<Base>,
    /// Records with seq > `after_seq` and ≤ `through_seq` are in the archive.
    pub after_seq: u64,
    /// The cut: the log head when the backup started.
    pub through_seq: u64,
    pub events: u64,
    pub parts: Vec<Part>,
    /// Content the records name that the archive does not hold, and why.
    #[serde(default)]
    pub content_skipped: Vec<SkippedContent>,
}

/// Content a backup could not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedContent {
    pub hash: String,
    pub why: String,
}

/// The content keys name, followed through the records: what a backup must carry and what a
/// restore must install.
#[derive(Debug, Default)]
pub struct ContentRefs {
    keys: std::collections::HashMap<FileKey, ContentHash>,
}

impl ContentRefs {
    /// Follows one record.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::FileStored(stored) => {
                self.keys.insert(stored.key.clone(), stored.hash.clone());
            }
            Event::FileDeleted(deleted) => {
                self.keys.remove(&deleted.key);
            }
            _ => {}
        }
    }

    /// The content named by some key, each once, in hash order.
    pub fn hashes(&self) -> std::collections::BTreeSet<ContentHash> {
        self.keys.values().cloned().collect()
    }
}

/// The archive an incremental backup continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub through_seq: u64,
    pub manifest_blake3: String,
}

/// One entry of the archive, with its size and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// Why a backup, a verification or a restore failed; `main` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Refused(String),
    #[error("reading the server's log: {0}")]
    Source(String),
    #[error("restoring content {hash}: {source}")]
    Content { hash: String, source: BlobError },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Writes an archive to `out` (through a temporary file, renamed when complete and synced).
/// `next_records` yields the records after `after_seq` up to the cut, in order, in chunks,
/// and an empty chunk at the end; the content their keys name at the cut is read from `store`.
/// What an archive carries besides the log and the content: the configuration the server runs
/// with, and the token secret files (none with `--without-secret`).
#[derive(Debug, Clone, Copy)]
pub struct Carried<'a> {
    pub config_toml: &'a str,
    pub secrets: &'a [(String, Vec<u8>)],
}

pub fn write_archive(
    out: &Path,
    after_seq: u64,
    through_seq: u64,
    base: Option<Base>,
    carried: Carried<'_>,
    store: &BlobStore,
    mut next_records: impl FnMut(u64) -> Result<Vec<(u64, Vec<u8>)>, BackupError>,
) -> Result<Manifest, BackupError> {
    let tmp = out.with_extension("partial");
    let file = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let mut parts = Vec::new();
    let mut events = 0u64;
    let mut next = after_seq;
    let mut part = Vec::new();
    let mut part_events = 0;
    let mut refs = ContentRefs::default();
    let flush_part = |tar: &mut tar::Builder<BufWriter<File>>, part: &mut Vec<u8>, parts: &mut Vec<Part>| {
        let path = format!("log/{:06}.rec", parts.len() + 1);
        append(tar, &path, part)?;
        parts.push(Part { path, bytes: part.len() as u64, blake3: blake3::hash(part).to_hex().to_string() });
        part.clear();
        Ok::<_, BackupError>(())
    };
    loop {
        let chunk = next_records(next)?;
        let Some(&(last, _)) = chunk.last() else { break };
        for (seq, record) in chunk.into_iter().take_while(|(seq, _)| *seq <= through_seq) {
            if seq <= next {
                return Err(BackupError::Source(format!("record {seq} out of order after {next}")));
            }
            next = seq;
            refs.apply(&decode(seq, &record)?.event);
            let len =
                u32::try_from(record.len()).map_err(|_| BackupError::Corrupt(format!("record {seq} is too large")))?;
            part.extend_from_slice(&len.to_be_bytes());
            part.extend_from_slice(&record);
            part_events += 1;
            events += 1;
            if part_events == PART_EVENTS_MAX {
                flush_part(&mut tar, &mut part, &mut parts)?;
                part_events = 0;
            }
        }
        if last >= through_seq {
            break;
        }
    }
    if part_events > 0 {
        flush_part(&mut tar, &mut part, &mut parts)?;
    }
    let mut content_skipped = Vec::new();
    for hash in refs.hashes() {
        let skip = |why: &str| SkippedContent { hash: hash.to_string(), why: why.into() };
        let Some((tier, source)) = store.find(&hash) else {
            content_skipped.push(skip("not in the file store (deleted after the cut, or quarantined)"));
            continue;
        };
        let path = format!("content/{}/{hash}", tier.as_str());
        let file = match File::open(&source) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                content_skipped.push(skip("deleted while the backup ran"));
                continue;
            }
            Err(e) => return Err(BackupError::Io { what: format!("opening {}", source.display()), source: e }),
        };
        let bytes = file.metadata().map_err(io(format!("reading {}", source.display())))?.len();
        let mut reader = HashingReader { inner: file, hasher: blake3::Hasher::new() };
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, &path, &mut reader).map_err(io(format!("adding {path}")))?;
        let blake3 = reader.hasher.finalize().to_hex().to_string();
        if blake3 != hash.as_str() {
            content_skipped.push(skip("its bytes no longer match its hash (run roomlog scrub)"));
        }
        parts.push(Part { path, bytes, blake3 });
    }
    let Carried { config_toml, secrets } = carried;
    append(&mut tar, "config.toml", config_toml.as_bytes())?;
    parts.push(Part {
        path: "config.toml".into(),
        bytes: config_toml.len() as u64,
        blake3: blake3::hash(config_toml.as_bytes()).to_hex().to_string(),
    });
    // The token secret: without it a restored server refuses every token issued before.
    for (name, bytes) in secrets {
        let path = format!("auth/{name}");
        append(&mut tar, &path, bytes)?;
        parts.push(Part { path, bytes: bytes.len() as u64, blake3: blake3::hash(bytes).to_hex().to_string() });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        roomlog_version: env!("CARGO_PKG_VERSION").into(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        base,
        after_seq,
        through_seq,
        events,
        parts,
        content_skipped,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Corrupt(e.to_string()))?;
    append(&mut tar, "manifest.json", &manifest_json)?;
    append(&mut tar, "manifest.json.blake3", blake3::hash(&manifest_json).to_hex().as_bytes())?;
    let writer = tar.into_inner().map_err(io("finishing the archive"))?;
    let file = writer
        .into_inner()
        .map_err(|e| BackupError::Io { what: "writing the archive".into(), source: e.into_error() })?;
    file.sync_all().map_err(io("syncing the archive"))?;
    // A backup that a power cut could take back is not one: its name is made durable too.
    crate::durable::rename(&tmp, out).map_err(io(format!("renaming to {}", out.display())))?;
    Ok(manifest)
}

/// Hashes what it reads.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn append(tar: &mut tar::Builder<BufWriter<File>>, path: &str, bytes: &[u8]) -> Result<(), BackupError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, path, bytes).map_err(io(format!("adding {path}")))
}

/// One record of an archive, as stored, with what a restore needs from its envelope (read
/// once, by [`verify`]).
#[derive(Debug)]
pub struct Record {
    pub seq: u64,
    pub at_unix_ms: u64,
    pub stream: StreamId,
    /// The encoded envelope, byte for byte as the log stored it.
    pub bytes: Vec<u8>,
}

/// An archive read back and checked.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    /// blake3 of `manifest.json`, which an incremental backup names as its base.
    pub manifest_blake3: String,
    /// Records, in seq order.
    pub records: Vec<Record>,
    pub config_toml: String,
    /// The token secret files the archive carries (`secret`, `secret.previous`), if any.
    pub secrets: Vec<(String, Vec<u8>)>,
}

/// Reads an archive and checks everything: the manifest's hash, every part's size and hash,
/// that every record decodes, in strictly increasing seq within the manifest's range.
pub fn verify(path: &Path) -> Result<Verified, BackupError> {
    let mut entries = std::collections::HashMap::new();
    // Content is hashed as it streams past, never held: (size, blake3) per entry.
    let mut content = std::collections::HashMap::new();
    for_each_entry(path, |name, entry| {
        if name.starts_with("content/") {
            let mut hasher = blake3::Hasher::new();
            let size = std::io::copy(entry, &mut hasher).map_err(io(format!("reading {name}")))?;
            content.insert(name.to_owned(), (size, hasher.finalize().to_hex().to_string()));
        } else {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(io(format!("reading {name}")))?;
            entries.insert(name.to_owned(), bytes);
        }
        Ok(())
    })?;
    let corrupt = |what: String| BackupError::Corrupt(format!("{}: {what}", path.display()));
    let manifest_json = entries.remove("manifest.json").ok_or_else(|| corrupt("no manifest.json".into()))?;
    let manifest_blake3 = blake3::hash(&manifest_json).to_hex().to_string();
    let recorded = entries.remove("manifest.json.blake3").ok_or_else(|| corrupt("no manifest.json.blake3".into()))?;
    if recorded != manifest_blake3.as_bytes() {
        return Err(corrupt("manifest.json does not match its blake3".into()));
    }
    let manifest: Manifest =
        serde_json::from_slice(&manifest_json).map_err(|e| corrupt(format!("manifest.json: {e}")))?;
    if manifest.format != FORMAT {
        return Err(corrupt(format!("format {:?}; this build reads {FORMAT}", manifest.format)));
    }
    if manifest.after_seq > manifest.through_seq || manifest.through_seq > crate::log::SEQ_MAX {
        return Err(corrupt(format!(
            "seqs {}..={} are not a range this server writes",
            manifest.after_seq.saturating_add(1),
            manifest.through_seq
        )));
    }
    let mut records = Vec::new();
    let mut config_toml = String::new();
    let mut secrets = Vec::new();
    let mut last = manifest.after_seq;
    for part in &manifest.parts {
        if part.path.starts_with("content/") {
            let found = content.remove(&part.path).ok_or_else(|| corrupt(format!("{} is missing", part.path)))?;
            if found != (part.bytes, part.blake3.clone()) {
                return Err(corrupt(format!("{} does not match its size and blake3 in the manifest", part.path)));
            }
            continue;
        }
        let bytes = entries.remove(&part.path).ok_or_else(|| corrupt(format!("{} is missing", part.path)))?;
        if bytes.len() as u64 != part.bytes || blake3::hash(&bytes).to_hex().as_str() != part.blake3 {
            return Err(corrupt(format!("{} does not match its size and blake3 in the manifest", part.path)));
        }
        if part.path == "config.toml" {
            config_toml = String::from_utf8(bytes).map_err(|_| corrupt("config.toml is not UTF-8".into()))?;
            continue;
        }
        if let Some(name) = part.path.strip_prefix("auth/") {
            secrets.push((name.to_owned(), bytes));
            continue;
        }
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let (len, tail) =
                rest.split_at_checked(4).ok_or_else(|| corrupt(format!("{}: truncated length", part.path)))?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt("length".into()))?) as usize;
            let (record, tail) =
                tail.split_at_checked(len).ok_or_else(|| corrupt(format!("{}: truncated record", part.path)))?;
            let envelope = decode(last.saturating_add(1), record)?;
            if envelope.seq <= last || envelope.seq > manifest.through_seq || envelope.seq > crate::log::SEQ_MAX {
                return Err(corrupt(format!(
                    "record {} out of order or outside {}..={}",
                    envelope.seq,
                    manifest.after_seq.saturating_add(1),
                    manifest.through_seq
                )));
            }
            last = envelope.seq;
            records.push(Record {
                seq: envelope.seq,
                at_unix_ms: envelope.at_unix_ms,
                stream: envelope.stream,
                bytes: record.to_vec(),
            });
            rest = tail;
        }
    }
    if records.len() as u64 != manifest.events {
        return Err(corrupt(format!("{} records, the manifest says {}", records.len(), manifest.events)));
    }
    if let Some(extra) = entries.keys().chain(content.keys()).next() {
        return Err(corrupt(format!("{extra} is not in the manifest")));
    }
    Ok(Verified { manifest, manifest_blake3, records, config_toml, secrets })
}

/// Calls `each` with every entry of the archive at `path` and its name, in archive order.
fn for_each_entry(
    path: &Path,
    mut each: impl FnMut(&str, &mut dyn Read) -> Result<(), BackupError>,
) -> Result<(), BackupError> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    for entry in archive.entries().map_err(io("reading the archive"))? {
        let mut entry = entry.map_err(io("reading an archive entry"))?;
        let name = entry.path().map_err(io("reading an entry name"))?.to_string_lossy().into_owned();
        each(&name, &mut entry)?;
    }
    Ok(())
}

/// Where a restore stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    pub seq: Option<u64>,
    pub at_unix_ms: Option<u64>,
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub events: u64,
    pub last_seq: u64,
    /// Content files installed in the file store, and their bytes.
    pub content_files: u64,
    pub content_bytes: u64,
    /// Whether the archive's token secret was installed (tokens issued before still work).
    pub secret_restored: bool,
}

/// Restores a full archive and the incrementals on top of it, in order, into `data`, which
/// must be empty or absent. Everything is verified before anything is written.
/// Content is installed into the tier it was backed up from when `store` has that tier, else
/// into the hot tier (where reads find it either way); only content that a key names at the
/// point restored to is installed.
pub fn restore(
    archives: &[PathBuf],
    log_dir: &Path,
    store: &BlobStore,
    data: &Path,
    secrets: &crate::token::SecretFiles,
    until: Until,
) -> Result<Restored, BackupError> {
    if data.exists() && std::fs::read_dir(data).map_err(io(format!("reading {}", data.display())))?.next().is_some() {
        return Err(BackupError::Refused(format!(
            "{} is not empty; restore only into an empty folder",
            data.display()
        )));
    }
    let mut verified = Vec::new();
    for (i, path) in archives.iter().enumerate() {
        let archive = verify(path)?;
        match (i, &archive.manifest.base, verified.last()) {
            (0, None, _) => {}
            (0, Some(_), _) => {
                return Err(BackupError::Refused(format!(
                    "{} is incremental; give its full backup first",
                    path.display()
                )))
            }
            (_, Some(base), Some(previous)) => {
                let previous: &Verified = previous;
                if base.through_seq != previous.manifest.through_seq || base.manifest_blake3 != previous.manifest_blake3
                {
                    return Err(BackupError::Refused(format!(
                        "{} does not continue the archive before it",
                        path.display()
                    )));
                }
            }
            _ => return Err(BackupError::Refused(format!("{} is a full backup; give it first", path.display()))),
        }
        verified.push(archive);
    }
    let log = crate::log::open_backend(log_dir, 64 * 1024 * 1024)?;
    let past = |r: &Record| until.seq.is_some_and(|s| r.seq > s) || until.at_unix_ms.is_some_and(|t| r.at_unix_ms > t);
    let kept: Vec<&Record> = verified.iter().flat_map(|a| &a.records).take_while(|r| !past(r)).collect();
    for chunk in kept.chunks(4096) {
        let encoded: Vec<_> = chunk.iter().map(|r| (r.seq, &r.stream, r.bytes.as_slice())).collect();
        log.write(&encoded)?;
    }
    log.sync()?;
    let mut refs = ContentRefs::default();
    for record in &kept {
        refs.apply(&decode(record.seq, &record.bytes)?.event);
    }
    let wanted = refs.hashes();
    let (mut content_files, mut content_bytes) = (0, 0);
    for (path, archive) in archives.iter().zip(&verified) {
        let skipped: std::collections::HashSet<&str> =
            archive.manifest.content_skipped.iter().map(|s| s.hash.as_str()).collect();
        for_each_entry(path, |name, entry| {
            let Some((tier, hash)) = name.strip_prefix("content/").and_then(|rest| rest.split_once('/')) else {
                return Ok(());
            };
            let (Some(tier), Some(hash)) = (Tier::parse(tier), ContentHash::parse(hash)) else {
                return Err(BackupError::Corrupt(format!("{}: {name} is not a content entry", path.display())));
            };
            if skipped.contains(hash.as_str()) || !wanted.contains(&hash) || store.find(&hash).is_some() {
                return Ok(());
            }
            let tier = if store.has_cold() { tier } else { Tier::Hot };
            content_bytes += store
                .install(tier, &hash, entry)
                .map_err(|source| BackupError::Content { hash: hash.to_string(), source })?;
            content_files += 1;
            Ok(())
        })?;
    }
    if let Some(first) = verified.first() {
        let config = data.join("config.restored.toml");
        let mut file = File::create(&config).map_err(io(format!("writing {}", config.display())))?;
        file.write_all(first.config_toml.as_bytes()).map_err(io("writing the restored config"))?;
    }
    // The newest archive's secret: the one the tokens in use were signed with.
    let archived = verified.iter().rev().find(|a| !a.secrets.is_empty()).map_or(&[][..], |a| a.secrets.as_slice());
    let secret_restored =
        secrets.install(archived).map_err(io(format!("installing the token secret in {}", secrets.dir.display())))?;
    Ok(Restored {
        events: kept.len() as u64,
        last_seq: kept.last().map_or(0, |r| r.seq),
        content_files,
        content_bytes,
        secret_restored,
    })
}

/// Takes one full backup of `log` into `dir` (named by time) and deletes the oldest archives
/// of that folder beyond `keep`. Blocking: run it off the async threads.
pub fn scheduled(
    log: &crate::log::EventLog,
    store: &BlobStore,
    dir: &Path,
    keep: usize,
    config_toml: &str,
    secrets: &[(String, Vec<u8>)],
) -> Result<(PathBuf, Manifest), BackupError> {
    crate::durable::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let out = dir.join(format!("roomlog-{now:015}.tar"));
    let manifest = write_archive(&out, 0, log.head(), None, Carried { config_toml, secrets }, store, |after| {
        Ok(log.read_raw_blocking(after.saturating_add(1), 4096)?)
    })?;
    let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("roomlog-") && n.ends_with(".tar"))
        })
        .collect();
    archives.sort();
    let excess = archives.len().saturating_sub(keep.max(1));
    for old in &archives[..excess] {
        std::fs::remove_file(old).map_err(io(format!("deleting {}", old.display())))?;
        tracing::info!(archive = %old.display(), keep, "old scheduled backup deleted: more than backup.keep");
    }
    Ok((out, manifest))
}
