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
//!
//! An incremental archive holds the records after its base's cut and names the base by its
//! cut and its manifest's hash, so a restore can check the chain.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::{decode, DecodeError, StreamId};
use crate::log::{LogError, Store};

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
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// Writes an archive to `out` (through a temporary file, renamed when complete and synced).
/// `next_records` yields the records after `after_seq` up to the cut, in order, in chunks,
/// and an empty chunk at the end.
pub fn write_archive(
    out: &Path,
    after_seq: u64,
    through_seq: u64,
    base: Option<Base>,
    config_toml: &str,
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
    append(&mut tar, "config.toml", config_toml.as_bytes())?;
    parts.push(Part {
        path: "config.toml".into(),
        bytes: config_toml.len() as u64,
        blake3: blake3::hash(config_toml.as_bytes()).to_hex().to_string(),
    });
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
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Corrupt(e.to_string()))?;
    append(&mut tar, "manifest.json", &manifest_json)?;
    append(&mut tar, "manifest.json.blake3", blake3::hash(&manifest_json).to_hex().as_bytes())?;
    let writer = tar.into_inner().map_err(io("finishing the archive"))?;
    let file = writer
        .into_inner()
        .map_err(|e| BackupError::Io { what: "writing the archive".into(), source: e.into_error() })?;
    file.sync_all().map_err(io("syncing the archive"))?;
    std::fs::rename(&tmp, out).map_err(io(format!("renaming to {}", out.display())))?;
    Ok(manifest)
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
}

/// Reads an archive and checks everything: the manifest's hash, every part's size and hash,
/// that every record decodes, in strictly increasing seq within the manifest's range.
pub fn verify(path: &Path) -> Result<Verified, BackupError> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut entries = std::collections::HashMap::new();
    for entry in archive.entries().map_err(io("reading the archive"))? {
        let mut entry = entry.map_err(io("reading an archive entry"))?;
        let name = entry.path().map_err(io("reading an entry name"))?.to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io(format!("reading {name}")))?;
        entries.insert(name, bytes);
    }
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
    let mut records = Vec::new();
    let mut config_toml = String::new();
    let mut last = manifest.after_seq;
    for part in &manifest.parts {
        let bytes = entries.remove(&part.path).ok_or_else(|| corrupt(format!("{} is missing", part.path)))?;
        if bytes.len() as u64 != part.bytes || blake3::hash(&bytes).to_hex().as_str() != part.blake3 {
            return Err(corrupt(format!("{} does not match its size and blake3 in the manifest", part.path)));
        }
        if part.path == "config.toml" {
            config_toml = String::from_utf8(bytes).map_err(|_| corrupt("config.toml is not UTF-8".into()))?;
            continue;
        }
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let (len, tail) =
                rest.split_at_checked(4).ok_or_else(|| corrupt(format!("{}: truncated length", part.path)))?;
            let len = u32::from_be_bytes(len.try_into().map_err(|_| corrupt("length".into()))?) as usize;
            let (record, tail) =
                tail.split_at_checked(len).ok_or_else(|| corrupt(format!("{}: truncated record", part.path)))?;
            let envelope = decode(last + 1, record)?;
            if envelope.seq <= last || envelope.seq > manifest.through_seq {
                return Err(corrupt(format!(
                    "record {} out of order or outside {}..={}",
                    envelope.seq,
                    manifest.after_seq + 1,
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
    if let Some(extra) = entries.keys().next() {
        return Err(corrupt(format!("{extra} is not in the manifest")));
    }
    Ok(Verified { manifest, manifest_blake3, records, config_toml })
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
}

/// Restores a full archive and the incrementals on top of it, in order, into `data`, which
/// must be empty or absent. Everything is verified before anything is written.
pub fn restore(archives: &[PathBuf], log_dir: &Path, data: &Path, until: Until) -> Result<Restored, BackupError> {
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
    let store = Store::open(log_dir, 64 * 1024 * 1024)?;
    let past = |r: &Record| until.seq.is_some_and(|s| r.seq > s) || until.at_unix_ms.is_some_and(|t| r.at_unix_ms > t);
    let kept: Vec<&Record> = verified.iter().flat_map(|a| &a.records).take_while(|r| !past(r)).collect();
    for chunk in kept.chunks(4096) {
        let encoded: Vec<_> = chunk.iter().map(|r| (r.seq, &r.stream, r.bytes.as_slice())).collect();
        store.write_encoded(&encoded)?;
    }
    store.sync()?;
    if let Some(first) = verified.first() {
        let config = data.join("config.restored.toml");
        let mut file = File::create(&config).map_err(io(format!("writing {}", config.display())))?;
        file.write_all(first.config_toml.as_bytes()).map_err(io("writing the restored config"))?;
    }
    Ok(Restored { events: kept.len() as u64, last_seq: kept.last().map_or(0, |r| r.seq) })
}

/// Takes one full backup of `log` into `dir` (named by time) and deletes the oldest archives
/// of that folder beyond `keep`. Blocking: run it off the async threads.
pub fn scheduled(
    log: &crate::log::EventLog,
    dir: &Path,
    keep: usize,
    config_toml: &str,
) -> Result<(PathBuf, Manifest), BackupError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let out = dir.join(format!("roomlog-{now:015}.tar"));
    let manifest = write_archive(&out, 0, log.head(), None, config_toml, |after| Ok(log.read_raw(after + 1, 4096)?))?;
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
