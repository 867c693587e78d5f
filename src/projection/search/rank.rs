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
use std::sync::{Arc, Mutex, PoisonError};

use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::query::{BooleanQuery, EnableScoring, Occur, Query};
use tantivy::{DocAddress, DocSet, Score, Searcher, TERMINATED};

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

/// Each segment's `seq` column, opened once per segment and shared by the searches after it.
///
/// Opening a column reads its whole block index into memory (tantivy's blockwise-linear codec:
/// about a megabyte per ten million documents), and a search opened it twice per segment:
/// at ten million messages that copying was a third of a two-word search's time.
#[derive(Clone, Default)]
pub struct SeqColumns(Arc<Mutex<HashMap<SegmentId, Column<u64>>>>);

impl SeqColumns {
    /// The `seq` column of each of the searcher's segments, in the searcher's order. Columns of
    /// segments the searcher no longer has (merged away) are dropped.
    pub fn of(&self, searcher: &Searcher) -> tantivy::Result<Vec<Column<u64>>> {
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let readers = searcher.segment_readers();
        cache.retain(|id, _| readers.iter().any(|r| r.segment_id() == *id));
        readers
            .iter()
            .map(|reader| match cache.get(&reader.segment_id()) {
                Some(column) => Ok(column.clone()),
                None => {
                    let column = reader.fast_fields().u64("seq")?;
                    cache.insert(reader.segment_id(), column.clone());
                    Ok(column)
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
/// the searcher's columns ([`SeqColumns::of`]).
pub fn top_by_score(
    searcher: &Searcher,
    seqs: &[Column<u64>],
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
                let seq = seqs.first(doc).unwrap_or_default();
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

/// The `k` newest matches of `query` whose seq is below `before`, newest first, and how many
/// matches `query` has in all (exactly up to [`TOTAL_EXACT_MAX`], as [`bounded_count`]). Newest
/// first has no order to prune by, so every match is walked, and counted in the same walk.
/// `seqs` are the searcher's columns ([`SeqColumns::of`]).
pub fn newest(
    searcher: &Searcher,
    seqs: &[Column<u64>],
    query: &dyn Query,
    before: u64,
    k: usize,
) -> tantivy::Result<(Vec<DocAddress>, (usize, bool))> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    // The oldest of the newest `k` on top.
    let mut best: BinaryHeap<Reverse<(u64, DocAddress)>> = BinaryHeap::with_capacity(k + 1);
    let mut count = 0usize;
    for (ord, (reader, seqs)) in searcher.segment_readers().iter().zip(seqs).enumerate() {
        let alive = reader.alive_bitset();
        let segment_ord = u32::try_from(ord).unwrap_or(u32::MAX);
        weight.for_each_no_score(reader, &mut |docs| {
            for &doc in docs {
                if alive.is_some_and(|bits| !bits.is_alive(doc)) {
                    continue;
                }
                count += 1;
                let seq = seqs.first(doc).unwrap_or_default();
                let newer = best.len() < k || best.peek().is_some_and(|oldest| seq > oldest.0 .0);
                if seq < before && newer {
                    best.push(Reverse((seq, DocAddress::new(segment_ord, doc))));
                    if best.len() > k {
                        best.pop();
                    }
                }
            }
        })?;
    }
    let mut page: Vec<(u64, DocAddress)> = best.into_iter().map(|Reverse(entry)| entry).collect();
    page.sort_unstable_by(|a, b| b.cmp(a));
    let total = (count.min(TOTAL_EXACT_MAX), count <= TOTAL_EXACT_MAX);
    Ok((page.into_iter().map(|(_, address)| address).collect(), total))
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
/// ([`SeqColumns::of`]).
pub fn max_seq(searcher: &Searcher, seqs: &[Column<u64>]) -> u64 {
    let readers = searcher.segment_readers();
    readers
        .iter()
        .zip(seqs)
        .filter(|(reader, _)| reader.max_doc() > 0)
        .map(|(_, seqs)| seqs.max_value())
        .max()
        .unwrap_or(0)
}
