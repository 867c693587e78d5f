//! One file's bytes as a power cut sees them: what the disk holds (durable) and what only the
//! page cache holds (dirty 4 KiB pages, a live length, a truncation mark).
//!
//! sled's data file grows to tens of MiB and is fsynced hundreds of times a second, so an
//! fsync must cost what was written since the last one, not the file's size: the durable bytes
//! are one `Vec` that an fsync patches page by page, and a cut drops the dirty pages at once.

use std::collections::BTreeMap;

/// Bytes of one page: the unit in which writes are kept apart from the durable bytes.
pub const PAGE_BYTES: u64 = 4096;

/// A regular file's content, durable and volatile.
#[derive(Debug, Default)]
pub struct Pages {
    /// What an fsync last made durable, exactly the durable length long.
    durable: Vec<u8>,
    /// Pages written since the last fsync, by page index, each [`PAGE_BYTES`] long. Bytes of a
    /// page at or past `len` are zero (a truncation zeroes them), so growing the file again
    /// shows zeros there.
    dirty: BTreeMap<u64, Box<[u8]>>,
    /// The live length: what `stat` and reads see.
    len: u64,
    /// Durable bytes at or past this offset read as zeros: the file was truncated below them
    /// after the last fsync (and perhaps grown again). `u64::MAX` when it was not.
    truncated_at: u64,
}

impl Pages {
    pub fn new() -> Self {
        Self { truncated_at: u64::MAX, ..Self::default() }
    }

    /// The live length.
    pub fn live_len(&self) -> u64 {
        self.len
    }

    /// The larger of the live and the durable length: what the file holds on the disk until
    /// an fsync or a cut settles which of the two it keeps.
    pub fn held_bytes(&self) -> u64 {
        self.len.max(self.durable.len() as u64)
    }

    /// Bytes of pages written but not yet fsynced (within the live length).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.keys().map(|&page| PAGE_BYTES.min(self.len.saturating_sub(page * PAGE_BYTES))).sum()
    }

    /// The durable bytes a clean page shows at `offset`, or zero past them.
    fn durable_byte_limit(&self) -> u64 {
        (self.durable.len() as u64).min(self.truncated_at)
    }

    /// Up to `size` bytes from `offset`, as the live file reads.
    pub fn read(&self, offset: u64, size: u64) -> Vec<u8> {
        let end = offset.saturating_add(size).min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let page = at / PAGE_BYTES;
            let page_end = ((page + 1) * PAGE_BYTES).min(end);
            match self.dirty.get(&page) {
                Some(bytes) => {
                    let from = (at - page * PAGE_BYTES) as usize;
                    out.extend_from_slice(&bytes[from..from + (page_end - at) as usize]);
                }
                None => {
                    let durable_end = page_end.min(self.durable_byte_limit()).max(at);
                    if durable_end > at {
                        out.extend_from_slice(&self.durable[at as usize..durable_end as usize]);
                    }
                    out.resize(out.len() + (page_end - durable_end) as usize, 0);
                }
            }
            at = page_end;
        }
        out
    }

    /// The dirty copy of `page`, made from what the live file reads there if it is clean.
    fn dirty_page(&mut self, page: u64) -> &mut [u8] {
        if !self.dirty.contains_key(&page) {
            let start = page * PAGE_BYTES;
            let mut bytes = vec![0u8; PAGE_BYTES as usize];
            let durable_end = (start + PAGE_BYTES).min(self.durable_byte_limit()).min(self.len);
            if durable_end > start {
                bytes[..(durable_end - start) as usize]
                    .copy_from_slice(&self.durable[start as usize..durable_end as usize]);
            }
            self.dirty.insert(page, bytes.into_boxed_slice());
        }
        self.dirty.get_mut(&page).expect("the page was just made dirty")
    }

    /// Writes `data` at `offset`, growing the file if it ends past the live length.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut at = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let page = at / PAGE_BYTES;
            let from = (at - page * PAGE_BYTES) as usize;
            let n = rest.len().min(PAGE_BYTES as usize - from);
            self.dirty_page(page)[from..from + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at += n as u64;
        }
        self.len = self.len.max(offset + data.len() as u64);
    }

    /// Truncates or extends (with zeros) the live file to `len`.
    pub fn set_len(&mut self, len: u64) {
        if len < self.len {
            self.truncated_at = self.truncated_at.min(len);
            let first_gone = len.div_ceil(PAGE_BYTES);
            self.dirty.retain(|&page, _| page < first_gone);
            if !len.is_multiple_of(PAGE_BYTES) {
                if let Some(bytes) = self.dirty.get_mut(&(len / PAGE_BYTES)) {
                    bytes[(len % PAGE_BYTES) as usize..].fill(0);
                }
            }
        }
        self.len = len;
    }

    /// fsync: the live content and length become durable, at the cost of the dirty pages.
    pub fn sync(&mut self) {
        let limit = self.durable_byte_limit().min(self.len) as usize;
        self.durable.truncate(limit);
        self.durable.resize(self.len as usize, 0);
        for (page, bytes) in std::mem::take(&mut self.dirty) {
            let start = (page * PAGE_BYTES) as usize;
            let end = (start + PAGE_BYTES as usize).min(self.durable.len());
            if start < end {
                self.durable[start..end].copy_from_slice(&bytes[..end - start]);
            }
        }
        self.truncated_at = u64::MAX;
    }

    /// A power cut: the file is what the last fsync left. Returns the bytes it loses (dirty
    /// pages, counted whole within the live length).
    pub fn revert(&mut self) -> u64 {
        let dropped = self.dirty_bytes();
        self.dirty.clear();
        self.len = self.durable.len() as u64;
        self.truncated_at = u64::MAX;
        dropped
    }
}
