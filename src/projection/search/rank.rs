//! Ranking and counting that walk no more of the index than the answer needs.
//!
//! The best `k` matches by BM25 come from tantivy's block-max pruning (`Weight::for_each_pruning`:
//! block-WAND for one word, its intersection variant for several), which skips every block of
//! postings whose best possible score cannot enter the top `k`. Ties are broken by seq, newest
//! first, so that the order does not depend on how the index is split into segments; the
//! threshold handed back to tantivy sits just below the `k`-th score, so a match that ties it
//! is still seen.
//!
//! The total is counted exactly up to [`TOTAL_EXACT_MAX`] and then stops, as Elasticsearch's
//! `track_total_hits` does: past that a total is a lower bound, and the answer says so.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tantivy::columnar::{Column, StrColumn};
use tantivy::index::SegmentId;
use tantivy::query::{BooleanQuery, EnableScoring, Occur, Query};
use tantivy::{DocAddress, DocId, DocSet, Score, Searcher, SegmentReader, TantivyError, TERMINATED};

/// Matches counted exactly; past this many, `total` is this and `total_is_exact` is false.
pub const TOTAL_EXACT_MAX: usize = 10_000;

/// One match with what orders it.
#[derive(Debug, Clone, Copy)]
pub struct Ranked {
    pub score: Score,
    pub seq: u64,
    pub address: DocAddress,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    /// Better is greater: a higher score, then a newer message.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(self.seq.cmp(&other.seq))
    }
}

/// Documents per chunk of a segment, for newest-first walks ([`newest`]).
const CHUNK_DOCS: u32 = 16_384;

/// One segment's `seq` column, and (once a newest-first search has asked) the largest seq of its
/// first chunks of documents.
#[derive(Clone)]
pub struct SegmentColumns {
    /// The `seq` column.
    pub column: Column<u64>,
    /// What a hit shows, read from columns rather than from a store of documents.
    pub shown: Shown,
    chunk_docs: u32,
    /// `upto[n]`: the largest seq among the segment's first `n` chunks of `chunk_docs` documents.
    upto: Arc<OnceLock<Vec<u64>>>,
}

/// A segment's columns of what a hit shows besides its seq.
#[derive(Clone)]
pub struct Shown {
    pub at: Column<u64>,
    pub text_seq: Column<u64>,
    /// `None` in a segment without documents.
    pub room: Option<StrColumn>,
    pub author: Option<StrColumn>,
}

impl Shown {
    fn open(reader: &SegmentReader) -> tantivy::Result<Self> {
        let fast = reader.fast_fields();
        Ok(Self {
            at: fast.u64("at")?,
            text_seq: fast.u64("text_seq")?,
            room: fast.str("room")?,
            author: fast.str("author")?,
        })
    }

    /// The text of `doc` in a string column (empty if it has none).
    pub fn text(column: Option<&StrColumn>, doc: DocId) -> tantivy::Result<String> {
        let mut out = String::new();
        if let Some((column, ord)) = column.and_then(|c| Some((c, c.term_ords(doc).next()?))) {
            column.ord_to_str(ord, &mut out)?;
        }
        Ok(out)
    }
}

impl SegmentColumns {
    fn new(reader: &SegmentReader, chunk_docs: u32) -> tantivy::Result<Self> {
        Ok(Self {
            column: reader.fast_fields().u64("seq")?,
            shown: Shown::open(reader)?,
            chunk_docs: chunk_docs.max(1),
            upto: Arc::default(),
        })
    }

    /// The largest seq among the first `n` chunks, for each `n` (one read of the column, at
    /// the segment's first newest-first search).
    fn upto(&self) -> &[u64] {
        self.upto.get_or_init(|| {
            let docs = self.column.num_docs();
            let mut upto = vec![0];
            let (mut max, mut doc) = (0, 0);
            while doc < docs {
                let end = docs.min(doc.saturating_add(self.chunk_docs));
                max = (doc..end).filter_map(|d| self.column.first(d)).fold(max, u64::max);
                upto.push(max);
                doc = end;
            }
            upto
        })
    }
}

/// Each segment's columns (`seq`, and what a hit shows), opened once per segment and shared by
/// the searches after it.
///
/// Opening a column reads its whole block index into memory (tantivy's blockwise-linear codec:
/// about a megabyte per ten million documents), and a search opened the `seq` column twice per
/// segment: at ten million messages that copying was a third of a two-word search's time.
#[derive(Clone)]
pub struct ColumnCache {
    segments: Arc<Mutex<HashMap<SegmentId, SegmentColumns>>>,
    chunk_docs: u32,
}

impl Default for ColumnCache {
    fn default() -> Self {
        Self::with_chunk_docs(CHUNK_DOCS)
    }
}

impl ColumnCache {
    /// Columns whose newest-first walks go `chunk_docs` documents at a time (tests use few).
    pub fn with_chunk_docs(chunk_docs: u32) -> Self {
        Self { segments: Arc::default(), chunk_docs }
    }

    /// The columns of each of the searcher's segments, in the searcher's order. Columns of
    /// segments the searcher no longer has (merged away) are dropped.
    pub fn of(&self, searcher: &Searcher) -> tantivy::Result<Vec<SegmentColumns>> {
        let mut cache = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
        let readers = searcher.segment_readers();
        cache.retain(|id, _| readers.iter().any(|r| r.segment_id() == *id));
        readers
            .iter()
            .map(|reader| match cache.get(&reader.segment_id()) {
                Some(seqs) => Ok(seqs.clone()),
                None => {
                    let seqs = SegmentColumns::new(reader, self.chunk_docs)?;
                    cache.insert(reader.segment_id(), seqs.clone());
                    Ok(seqs)
                }
            })
            .collect()
    }
}

/// The clauses as one query. A lone required clause is returned on its own: tantivy prunes a
/// term query, but not a boolean query around it.
pub fn all_of(mut clauses: Vec<(Occur, Box<dyn Query>)>) -> Box<dyn Query> {
    if let [(Occur::Must, _)] = clauses.as_slice() {
        if let Some((_, query)) = clauses.pop() {
            return query;
        }
    }
    Box::new(BooleanQuery::new(clauses))
}

/// A copy of the clauses (a boxed query clones itself; the tuple does not).
pub fn copy(clauses: &[(Occur, Box<dyn Query>)]) -> Vec<(Occur, Box<dyn Query>)> {
    clauses.iter().map(|(occur, query)| (*occur, query.box_clone())).collect()
}

/// The `k` best matches of `query`, best first: by BM25 score, ties newest first. `seqs` are
/// the searcher's columns ([`ColumnCache::of`]).
pub fn top_by_score(
    searcher: &Searcher,
    seqs: &[SegmentColumns],
    query: &dyn Query,
    k: usize,
) -> tantivy::Result<Vec<Ranked>> {
    if k == 0 {
        return Ok(Vec::new());
    }
    let weight = query.weight(EnableScoring::enabled_from_searcher(searcher))?;
    // The worst of the best `k` on top.
    let mut best: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(k + 1);
    let mut threshold = Score::MIN;
    for (ord, (reader, seqs)) in searcher.segment_readers().iter().zip(seqs).enumerate() {
        let alive = reader.alive_bitset();
        let segment_ord = u32::try_from(ord).unwrap_or(u32::MAX);
        weight.for_each_pruning(threshold, reader, &mut |doc, score| {
            if alive.is_none_or(|bits| bits.is_alive(doc)) {
                let seq = seqs.column.first(doc).unwrap_or_default();
                best.push(Reverse(Ranked { score, seq, address: DocAddress::new(segment_ord, doc) }));
                if best.len() > k {
                    best.pop();
                }
                if best.len() == k {
                    threshold = best.peek().map_or(Score::MIN, |worst| just_below(worst.0.score));
                }
            }
            threshold
        })?;
    }
    let mut ranked: Vec<Ranked> = best.into_iter().map(|Reverse(r)| r).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ranked)
}

/// The `k` newest matches of `query` whose seq is below `before`, newest first. `seqs` are the
/// searcher's columns ([`ColumnCache::of`]).
///
/// Scores give no order to prune by here, seqs do: a segment's documents are mostly in seq
/// order (one indexing thread adds them as the log gives them; a merge puts whole segments end
/// to end), so the newest sit in its last chunks. Each segment is walked from its end, a window
/// of chunks at a time (1, 2, 4, ... chunks, so a segment of few matches costs few scorers), always
/// in the segment whose chunks not yet walked may hold the largest seq; the walk stops once the
/// page's oldest seq is at or above what any chunk left could hold. Two common words at ten million
/// messages walked millions of matches for a page of twenty.
pub fn newest(
    searcher: &Searcher,
    seqs: &[SegmentColumns],
    query: &dyn Query,
    before: u64,
    k: usize,
) -> tantivy::Result<Vec<DocAddress>> {
    if k == 0 {
        return Ok(Vec::new());
    }
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let readers = searcher.segment_readers();
    // The oldest of the newest `k` on top.
    let mut best: BinaryHeap<Reverse<(u64, DocAddress)>> = BinaryHeap::with_capacity(k + 1);
    // Per segment: its chunks not walked yet are the first `end`; the next window is `width`.
    let mut left: Vec<(usize, usize)> = seqs.iter().map(|s| (s.upto().len() - 1, 1)).collect();
    let below = before.saturating_sub(1);
    loop {
        // The segment whose chunks left may hold the largest seq below `before`.
        let next = left
            .iter()
            .zip(seqs)
            .enumerate()
            .filter(|(_, ((end, _), _))| *end > 0)
            .map(|(ord, ((end, _), seqs))| (seqs.upto()[*end].min(below), ord))
            .max();
        let Some((bound, ord)) = next else { break };
        if best.len() == k && best.peek().is_some_and(|oldest| oldest.0 .0 >= bound) {
            break;
        }
        let (Some(reader), Some(segment)) = (readers.get(ord), seqs.get(ord)) else { break };
        let (end, width) = left[ord];
        let start = end.saturating_sub(width);
        left[ord] = (start, width.saturating_mul(2));
        let chunk = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).saturating_mul(segment.chunk_docs);
        let (first_doc, end_doc) = (chunk(start), chunk(end).min(reader.max_doc()));
        let alive = reader.alive_bitset();
        let segment_ord = u32::try_from(ord).unwrap_or(u32::MAX);
        let mut matches = weight.scorer(reader, 1.0)?;
        // A fresh scorer stands on its first match, which may lie past the window's start.
        let mut doc = matches.doc();
        if doc < first_doc {
            doc = matches.seek(first_doc);
        }
        while doc < end_doc {
            if alive.is_none_or(|bits| bits.is_alive(doc)) {
                let seq = segment.column.first(doc).unwrap_or_default();
                let newer = best.len() < k || best.peek().is_some_and(|oldest| seq > oldest.0 .0);
                if seq < before && newer {
                    best.push(Reverse((seq, DocAddress::new(segment_ord, doc))));
                    if best.len() > k {
                        best.pop();
                    }
                }
            }
            doc = matches.advance();
        }
    }
    let mut page: Vec<(u64, DocAddress)> = best.into_iter().map(|Reverse(entry)| entry).collect();
    page.sort_unstable_by(|a, b| b.cmp(a));
    Ok(page.into_iter().map(|(_, address)| address).collect())
}

/// Runs `walk` while a second thread counts the matches of `counted` ([`bounded_count`]): the
/// two walks share nothing, and the count was a fifth of a two-word search at ten million
/// messages.
pub fn counting_beside<T: Send, E: From<TantivyError>>(
    searcher: &Searcher,
    counted: &dyn Query,
    walk: impl FnOnce() -> Result<T, E>,
) -> Result<((usize, bool), T), E> {
    let count = || bounded_count(searcher, counted);
    std::thread::scope(|scope| {
        match std::thread::Builder::new().name("search-count".into()).spawn_scoped(scope, count) {
            Ok(total) => {
                let walked = walk();
                let total =
                    total.join().unwrap_or_else(|_| Err(TantivyError::InternalError("the count panicked".into())));
                Ok((total?, walked?))
            }
            // No thread to be had (the process at its limit): the count runs after the walk.
            Err(_) => {
                let walked = walk()?;
                Ok((count()?, walked))
            }
        }
    })
}

/// A threshold that still lets a match of `score` through: tantivy passes only matches scoring
/// above it, and its pruning adds block maxima in another order than the final score (a
/// rounding apart), so the margin is relative, not one ulp.
fn just_below(score: Score) -> Score {
    score - score.abs() * 1e-4 - Score::EPSILON
}

/// How many documents match `query`: exactly up to [`TOTAL_EXACT_MAX`], and whether the count
/// is exact (false: at least that many).
pub fn bounded_count(searcher: &Searcher, query: &dyn Query) -> tantivy::Result<(usize, bool)> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut count = 0;
    for reader in searcher.segment_readers() {
        let alive = reader.alive_bitset();
        let mut matches = weight.scorer(reader, 1.0)?;
        let mut doc = matches.doc();
        while doc != TERMINATED {
            if alive.is_none_or(|bits| bits.is_alive(doc)) {
                count += 1;
                if count > TOTAL_EXACT_MAX {
                    return Ok((TOTAL_EXACT_MAX, false));
                }
            }
            doc = matches.advance();
        }
    }
    Ok((count, true))
}

/// The largest seq among the searcher's documents (0 for an empty index), from its columns
/// ([`ColumnCache::of`]).
pub fn max_seq(searcher: &Searcher, seqs: &[SegmentColumns]) -> u64 {
    let readers = searcher.segment_readers();
    readers
        .iter()
        .zip(seqs)
        .filter(|(reader, _)| reader.max_doc() > 0)
        .map(|(_, seqs)| seqs.column.max_value())
        .max()
        .unwrap_or(0)
}
