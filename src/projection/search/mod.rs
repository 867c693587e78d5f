//! The search projection: a tantivy index of every message the rooms still hold.
//!
//! Fed from the log like every other projection. Its checkpoint (the last applied seq) is the
//! payload of the tantivy commit that made those events durable, so after a crash the index
//! re-applies exactly the events after its last commit: nothing missing, nothing twice.
//! Commits are batched by time ([`SearchConfig::refresh`], the near-real-time delay) and by
//! count, on the projection runner's blocking thread. A message is one document identified
//! by its seq; every event that removes messages ([`Event::removal`]) deletes their documents,
//! and an edit deletes the old text and adds the new.
//!
//! The index keeps no copy of the texts and stores no documents: a document's room, author,
//! times and the seq of the record that holds its text (the post, or its newest edit) are
//! columns, and a page of hits reads those texts from the log ([`MessageTexts`]) to cut its
//! snippets (issue 19: the stored bodies were 95 MB of the 150 MB index of the 1M corpus, a
//! third copy of every text).

pub mod query;
mod rank;
#[cfg(test)]
mod tests;
pub mod tokenizer;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tantivy::query::{
    BooleanQuery, Occur, PhrasePrefixQuery, PhraseQuery, Query, RangeQuery, RegexQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::{Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::snippet::SnippetGenerator;
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{doc, DocAddress, Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, Term};

pub use crate::config::SearchConfig;
pub use rank::TOTAL_EXACT_MAX;

use super::{Projection, ProjectionError};
use crate::event::{Envelope, Event, Removal, RoomId};
use crate::log::EventLog;
use query::{Item, QueryError};

/// Bumped when the schema or the tokenizer changes: an index of another version is dropped
/// and rebuilt from the log when it is opened. 2: nothing stored (columns, and the texts in
/// the log), `text_seq` added. 3: the time is a column only (its range queries ran on the
/// column already), room and author keep no field norms.
const SCHEMA_VERSION: u32 = 3;
/// Most index terms one `prefix*` expands to.
const PREFIX_EXPANSIONS_MAX: u32 = 200;
/// Characters of text around the matches in a snippet.
const SNIPPET_CHARS: usize = 160;

#[derive(Debug, Clone, Copy)]
struct Fields {
    seq: Field,
    room: Field,
    author: Field,
    at: Field,
    body: Field,
    /// The seq of the record that holds the text: the post, or the edit that gave it.
    text_seq: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // Nothing is stored: what a hit shows is read from columns, its text from the log. The
    // seq is indexed for the deletion of one message by its term; a range of seqs or times is
    // read from the column (tantivy's `RangeQuery` on a fast field), so the time is not
    // indexed (a term and a posting per message: 0.9 MB of postings of the 1M corpus's index).
    // Room and author are filters, never scored by their length: no field norms (1 MB each).
    let seq = NumericOptions::default().set_indexed().set_fast();
    let at = NumericOptions::default().set_fast();
    let keyword = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        )
        .set_fast("raw");
    let body = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer::NAME)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        seq: builder.add_u64_field("seq", seq),
        room: builder.add_text_field("room", keyword.clone()),
        author: builder.add_text_field("author", keyword),
        at: builder.add_u64_field("at", at),
        body: builder.add_text_field("body", body),
        text_seq: builder.add_u64_field("text_seq", FAST),
    };
    (builder.build(), fields)
}

/// The document store holds nothing but, per document, its place in its block (4 bytes a
/// document, 4.0 MB of the 1M corpus's index with tantivy's default LZ4); zstd packs those
/// offsets to a fraction.
fn settings() -> IndexSettings {
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor { compression_level: Some(1) }),
        ..IndexSettings::default()
    }
}

/// What a commit records.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    schema: u32,
    seq: u64,
}

/// Read access to the index; cheap to clone.
#[derive(Clone)]
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    /// Seq of the last event committed and reloaded into `reader`: what searches see. Set from
    /// the commit payload when opened, then by the projection after each commit, so a search
    /// does not read `meta.json` to learn it.
    searchable: Arc<AtomicU64>,
    /// The segments' columns, opened once each.
    seqs: rank::ColumnCache,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

/// The writing side, owned by the projection runner.
pub struct SearchProjection {
    read: SearchIndex,
    writer: IndexWriter,
    /// Seq of the last event applied to the writer (the committed one is `read.searchable`).
    applied: u64,
    pending: usize,
    pending_since: Option<Instant>,
    config: SearchConfig,
}

impl std::fmt::Debug for SearchProjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchProjection")
            .field("applied", &self.applied)
            .field("committed", &self.read.searchable.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

/// Opens (or creates) the index in `dir` for reading only, as `roomlog search` does next to a
/// running server.
pub fn open_reader(dir: &Path) -> Result<SearchIndex, ProjectionError> {
    let index = Index::open_in_dir(dir)?;
    reader_of(index)
}

/// Opens (or creates) the index in `dir`: the reading handle and the projection that writes
/// it with `threads` indexing threads.
pub fn open(
    dir: &Path,
    config: &SearchConfig,
    threads: usize,
) -> Result<(SearchIndex, SearchProjection), ProjectionError> {
    crate::durable::create_dir_all(dir)
        .map_err(|e| ProjectionError::Task(format!("cannot create {}: {e}", dir.display())))?;
    let (schema, _) = schema();
    let mut index = if dir.join("meta.json").exists() { Some(Index::open_in_dir(dir)?) } else { None };
    if let Some(existing) = &index {
        let current = payload(existing)?.is_none_or(|p| p.schema == SCHEMA_VERSION) && existing.schema() == schema;
        if !current {
            tracing::warn!(dir = %dir.display(), "search index of another version: dropping it to rebuild from the log");
            index = None;
            std::fs::remove_dir_all(dir)
                .and_then(|()| crate::durable::create_dir_all(dir))
                .map_err(|e| ProjectionError::Task(format!("cannot clear {}: {e}", dir.display())))?;
        }
    }
    let index = match index {
        Some(index) => index,
        None => Index::builder().schema(schema).settings(settings()).create_in_dir(dir)?,
    };
    let read = reader_of(index)?;
    let writer = read.index.writer_with_num_threads(threads.max(1), config.writer_bytes.max(15 << 20))?;
    let committed = read.searchable.load(Ordering::Acquire);
    let projection = SearchProjection {
        read: read.clone(),
        writer,
        applied: committed,
        pending: 0,
        pending_since: None,
        config: config.clone(),
    };
    Ok((read, projection))
}

fn reader_of(index: Index) -> Result<SearchIndex, ProjectionError> {
    index.tokenizers().register(tokenizer::NAME, tokenizer::analyzer());
    let (_, fields) = schema();
    let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
    let searchable = Arc::new(AtomicU64::new(payload(&index)?.map_or(0, |p| p.seq)));
    Ok(SearchIndex { index, reader, fields, searchable, seqs: rank::ColumnCache::default() })
}

fn payload(index: &Index) -> Result<Option<Payload>, ProjectionError> {
    let metas = index.load_metas()?;
    Ok(metas.payload.as_deref().and_then(|p| serde_json::from_str(p).ok()))
}

impl Projection for SearchProjection {
    fn name(&self) -> &'static str {
        crate::projection::Kind::Search.name()
    }

    fn checkpoint(&self) -> Result<u64, ProjectionError> {
        Ok(self.applied)
    }

    fn visible(&self) -> Result<u64, ProjectionError> {
        Ok(self.read.indexed_through())
    }

    fn apply(&mut self, batch: &[Envelope]) -> Result<(), ProjectionError> {
        let f = self.read.fields;
        for envelope in batch {
            // Removal first: an edit takes the old text out before the new one goes in.
            match envelope.event.removal() {
                Some(Removal::Message { seq, .. }) => {
                    self.writer.delete_term(Term::from_field_u64(f.seq, seq));
                }
                Some(Removal::Through { room, through_seq }) => {
                    let query = BooleanQuery::new(vec![
                        (Occur::Must, Box::new(term_query(f.room, room.as_str())) as Box<dyn Query>),
                        (Occur::Must, Box::new(seq_range(f.seq, Bound::Unbounded, Bound::Included(through_seq)))),
                    ]);
                    self.writer.delete_query(Box::new(query))?;
                }
                None => {}
            }
            match &envelope.event {
                Event::MessagePosted(p) => {
                    self.writer.add_document(doc!(
                        f.seq => envelope.seq, f.room => p.room.as_str(), f.author => p.author.as_str(),
                        f.at => envelope.at_unix_ms, f.body => p.body.as_str(), f.text_seq => envelope.seq,
                    ))?;
                }
                Event::MessageEdited(e) => {
                    self.writer.add_document(doc!(
                        f.seq => e.seq, f.room => e.room.as_str(), f.author => e.author.as_str(),
                        f.at => e.posted_at_unix_ms, f.body => e.body.as_str(), f.text_seq => envelope.seq,
                    ))?;
                }
                _ => {}
            }
        }
        if let Some(last) = batch.last() {
            self.applied = last.seq;
            self.pending += batch.len();
            self.pending_since.get_or_insert_with(Instant::now);
        }
        if self.pending >= self.config.commit_events_max {
            self.flush()?;
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), ProjectionError> {
        self.writer.delete_all_documents()?;
        self.applied = 0;
        self.commit()
    }

    fn flush_due(&self) -> Option<Instant> {
        self.pending_since.map(|since| since.checked_add(self.config.refresh).unwrap_or(since))
    }

    fn flush(&mut self) -> Result<(), ProjectionError> {
        if self.applied == self.read.indexed_through() {
            return Ok(());
        }
        self.commit()
    }
}

impl SearchProjection {
    /// Commits everything applied, with the applied seq as the payload, and makes it searchable.
    fn commit(&mut self) -> Result<(), ProjectionError> {
        let payload = serde_json::to_string(&Payload { schema: SCHEMA_VERSION, seq: self.applied })
            .map_err(|e| ProjectionError::Task(e.to_string()))?;
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.read.reader.reload()?;
        self.read.searchable.store(self.applied, Ordering::Release);
        self.pending = 0;
        self.pending_since = None;
        Ok(())
    }

    /// Ends a rebuild: waits for the background merges, then merges what is left into one
    /// segment, which also removes the files merged away. Returns how many segments there
    /// were. One segment is the smallest index and the quickest to search (the 1M corpus:
    /// 50.6 MB against 55.6 MB in 6 segments and 60.3 MB in 12, as the indexing threads and
    /// merges happened to leave it; 2 s of merging). The live index keeps tantivy's merge
    /// policy.
    pub fn finish(self) -> Result<usize, ProjectionError> {
        self.writer.wait_merging_threads()?;
        let segments = self.read.index.searchable_segment_ids()?;
        if segments.len() > 1 {
            let mut writer: IndexWriter = self.read.index.writer_with_num_threads(1, MERGE_WRITER_BYTES)?;
            writer.merge(&segments).wait()?;
            writer.wait_merging_threads()?;
        }
        self.read.reader.reload()?;
        Ok(segments.len())
    }
}

/// The indexing budget of the writer that only merges at the end of a rebuild (tantivy's
/// least).
const MERGE_WRITER_BYTES: usize = 15 << 20;

/// How hits are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Best match first (BM25); ties newest first.
    #[default]
    Relevance,
    /// Newest first.
    Time,
}

/// A search, checked. Built by [`SearchRequest::new`] from what a caller typed.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    items: Vec<Item>,
    /// Only these rooms (already limited to what the caller may read); `None`: every room.
    rooms: Option<Vec<RoomId>>,
    author: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    limit: usize,
    sort: Sort,
    cursor: Option<Cursor>,
}

/// Where the next page starts. Time order continues below a seq, so new messages never shift
/// a page; relevance order continues at an offset within the hits that existed at the first
/// page (seq at most `through`).
/// The deepest hit a relevance search pages to (Elasticsearch's `max_result_window` is the
/// same): a relevance page costs memory in proportion to its depth, and a cursor past it once
/// let a caller make the server allocate terabytes and abort. Time order pages without end.
pub const RELEVANCE_DEPTH_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    Time { before_seq: u64 },
    Relevance { offset: usize, through: u64 },
}

impl Cursor {
    fn parse(text: &str) -> Result<Self, QueryError> {
        let bad = || QueryError(format!("cursor {text:?} is not one this server gave"));
        if let Some(seq) = text.strip_prefix('t') {
            return Ok(Cursor::Time { before_seq: seq.parse().map_err(|_| bad())? });
        }
        let (offset, through) = text.strip_prefix('r').and_then(|r| r.split_once('.')).ok_or_else(bad)?;
        let offset: usize = offset.parse().map_err(|_| bad())?;
        if offset >= RELEVANCE_DEPTH_MAX {
            return Err(QueryError(format!(
                "relevance order pages through the best {RELEVANCE_DEPTH_MAX} hits; use sort=time to go further"
            )));
        }
        Ok(Cursor::Relevance { offset, through: through.parse().map_err(|_| bad())? })
    }

    fn render(self) -> String {
        match self {
            Cursor::Time { before_seq } => format!("t{before_seq}"),
            Cursor::Relevance { offset, through } => format!("r{offset}.{through}"),
        }
    }
}

/// The options of a search as a caller gives them (query string or WebSocket frame).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchParams {
    /// The query text.
    pub q: String,
    /// One room, or several separated by commas.
    pub room: Option<String>,
    pub author: Option<String>,
    /// Oldest message time: `7d` (ago), an RFC 3339 time, or Unix ms.
    pub since: Option<String>,
    /// Newest message time, same forms.
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
    pub sort: Option<Sort>,
}

impl SearchRequest {
    /// Checks a caller's search. `readable` is the set of rooms the caller may read (`None`:
    /// all); a named room outside it is refused, and with no room named the search covers
    /// exactly the readable ones.
    pub fn new(
        params: &SearchParams,
        readable: Option<Vec<RoomId>>,
        limit_max: usize,
        now: SystemTime,
    ) -> Result<Self, QueryError> {
        let items = query::parse(&params.q)?;
        if !items.iter().any(|i| !i.exclude) {
            return Err(QueryError("give at least one word or phrase to find (q=...)".into()));
        }
        let named = match params.room.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            Some(list) => Some(
                list.split(',')
                    .map(|r| RoomId::parse(r.trim()).map_err(|e| QueryError(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let rooms = match (named, readable) {
            (Some(named), Some(readable)) => {
                if let Some(hidden) = named.iter().find(|r| !readable.contains(r)) {
                    return Err(QueryError(format!("room {hidden} is not one you may read")));
                }
                Some(named)
            }
            (named, readable) => named.or(readable),
        };
        let since_ms = params.since.as_deref().map(|t| query::parse_time(t, now)).transpose()?;
        let until_ms = params.until.as_deref().map(|t| query::parse_time(t, now)).transpose()?;
        let limit = params.limit.unwrap_or(20);
        if limit == 0 || limit > limit_max {
            return Err(QueryError(format!("limit must be 1 to {limit_max}")));
        }
        let cursor = params.cursor.as_deref().map(Cursor::parse).transpose()?;
        let sort = params.sort.unwrap_or_default();
        match (sort, cursor) {
            (Sort::Time, Some(Cursor::Relevance { .. })) | (Sort::Relevance, Some(Cursor::Time { .. })) => {
                return Err(QueryError("the cursor belongs to a search with another sort".into()))
            }
            _ => {}
        }
        let author = params.author.clone().filter(|a| !a.is_empty());
        Ok(Self { items, rooms, author, since_ms, until_ms, limit, sort, cursor })
    }
}

/// One hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub room: String,
    pub seq: u64,
    pub author: String,
    pub at_unix_ms: u64,
    /// The matching part of the text, HTML-escaped, with matches in `<b>…</b>`.
    pub snippet: String,
    /// BM25 score (0 when sorted by time).
    pub score: f32,
}

/// A page of hits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hits {
    /// How many messages match in all (not only this page), counted exactly up to
    /// [`TOTAL_EXACT_MAX`]; past it, that number.
    pub total: usize,
    /// Whether `total` is the exact count (false: at least `total` messages match).
    pub total_is_exact: bool,
    pub hits: Vec<Hit>,
    /// Give this as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The index holds every event up to this seq.
    pub indexed_through_seq: u64,
}

/// Where a page of hits reads its texts: the records of the log that hold them.
pub trait MessageTexts: Sync {
    /// The texts held by the records at `seqs` (ascending): a message posted, or an edit. A
    /// record the log no longer holds (a retention cut the index has not applied yet) is left
    /// out of the answer.
    fn texts(&self, seqs: &[u64]) -> Result<HashMap<u64, String>, ProjectionError>;
}

/// Records at most this far apart are read together, in one read of the log (a sealed pack
/// holds 64): a page sorted by time is mostly neighbours.
const TEXTS_READ_SPAN: u64 = 64;

/// `seqs` (ascending) in runs read together: each run's seqs lie within [`TEXTS_READ_SPAN`] of
/// its first.
fn runs(seqs: &[u64]) -> Vec<&[u64]> {
    let mut runs = Vec::new();
    let mut rest = seqs;
    while let Some(&first) = rest.first() {
        let together = rest.iter().take_while(|&&seq| seq - first < TEXTS_READ_SPAN).count();
        let (run, after) = rest.split_at(together);
        runs.push(run);
        rest = after;
    }
    runs
}

impl MessageTexts for EventLog {
    fn texts(&self, seqs: &[u64]) -> Result<HashMap<u64, String>, ProjectionError> {
        let mut texts = HashMap::with_capacity(seqs.len());
        for run in runs(seqs) {
            let (Some(&first), Some(&last)) = (run.first(), run.last()) else { continue };
            let span = usize::try_from(last - first + 1).unwrap_or(usize::MAX);
            for (seq, bytes) in self.read_raw_blocking(first, span)? {
                if run.binary_search(&seq).is_err() {
                    continue;
                }
                let record = crate::event::decode(seq, &bytes).map_err(crate::log::LogError::from)?;
                match record.event {
                    Event::MessagePosted(posted) => texts.insert(seq, posted.body),
                    Event::MessageEdited(edit) => texts.insert(seq, edit.body),
                    _ => None,
                };
            }
        }
        Ok(texts)
    }
}

impl SearchIndex {
    /// The seq of the last event searchable, from the last commit.
    pub fn indexed_through(&self) -> u64 {
        self.searchable.load(Ordering::Acquire)
    }

    /// Documents in the index as last reloaded.
    pub fn documents(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Bytes of the index's files on disk.
    pub fn size_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }

    /// Runs a search, reading the texts of the page's hits from `texts` (the log). Blocking:
    /// call it off the async threads.
    pub fn search(&self, request: &SearchRequest, texts: &dyn MessageTexts) -> Result<Hits, ProjectionError> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let indexed_through_seq = self.indexed_through();
        let mut analyzer = tokenizer::analyzer();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut highlight: BTreeMap<String, f32> = BTreeMap::new();
        for item in &request.items {
            let mut tokens = Vec::new();
            analyzer.token_stream(&item.text).process(&mut |t| tokens.push(t.text.clone()));
            let Some(last) = tokens.last().cloned() else { continue };
            let terms: Vec<Term> = tokens.iter().map(|t| Term::from_field_text(f.body, t)).collect();
            let query: Box<dyn Query> = if item.prefix {
                let mut query = PhrasePrefixQuery::new(terms);
                query.set_max_expansions(PREFIX_EXPANSIONS_MAX);
                if !item.exclude {
                    self.expand_prefix(&searcher, &last, &mut highlight)?;
                }
                Box::new(query)
            } else if let Some(c) = lone_cjk(&tokens) {
                // The index holds CJK text as bigrams (see `tokenizer`): one character is
                // found in every term that holds it, first or second, or alone. The pattern
                // matches terms of at most three characters, so the walk stays small.
                Box::new(
                    RegexQuery::from_pattern(&format!(".?{c}.?"), f.body)
                        .map_err(|e| ProjectionError::Task(format!("search pattern: {e}")))?,
                )
            } else if terms.len() == 1 {
                Box::new(TermQuery::new(terms[0].clone(), IndexRecordOption::WithFreqs))
            } else {
                Box::new(PhraseQuery::new(terms))
            };
            if !item.exclude {
                let full = if item.prefix { &tokens[..tokens.len() - 1] } else { &tokens[..] };
                highlight.extend(full.iter().map(|t| (t.clone(), 1.0)));
            }
            clauses.push((if item.exclude { Occur::MustNot } else { Occur::Must }, query));
        }
        if !clauses.iter().any(|(occur, _)| *occur == Occur::Must) {
            // Every word was punctuation: nothing can match.
            return Ok(Hits {
                total: 0,
                total_is_exact: true,
                hits: Vec::new(),
                next_cursor: None,
                indexed_through_seq,
            });
        }
        if let Some(rooms) = &request.rooms {
            let terms = rooms.iter().map(|r| Term::from_field_text(f.room, r.as_str()));
            clauses.push((Occur::Must, Box::new(TermSetQuery::new(terms))));
        }
        if let Some(author) = &request.author {
            clauses.push((Occur::Must, Box::new(term_query(f.author, author))));
        }
        if request.since_ms.is_some() || request.until_ms.is_some() {
            let from = request.since_ms.map_or(Bound::Unbounded, Bound::Included);
            let to = request.until_ms.map_or(Bound::Unbounded, Bound::Included);
            clauses.push((Occur::Must, Box::new(seq_range(f.at, from, to))));
        }
        let snippets = SnippetGenerator::new(highlight, tokenizer::analyzer(), f.body, SNIPPET_CHARS);
        let seqs = self.seqs.of(&searcher)?;
        // The hits are read (their columns, then their texts from the log) while the count
        // still runs beside: at 10M messages the count is the longer of the two.
        let page_of = |ranked: Vec<(f32, DocAddress)>| -> Result<(bool, Vec<Hit>), ProjectionError> {
            let more = ranked.len() > request.limit;
            let hits = hits(&seqs, ranked.into_iter().take(request.limit), &snippets, texts)?;
            Ok((more, hits))
        };
        // The page, the total, and for relevance order the window its cursor continues in.
        let ((total, total_is_exact), (more, hits), window) = match request.sort {
            Sort::Time => {
                let before = match request.cursor {
                    Some(Cursor::Time { before_seq }) => before_seq,
                    _ => u64::MAX,
                };
                let base = rank::all_of(clauses);
                let k = request.limit + 1;
                let (total, page) = rank::counting_beside(&searcher, base.as_ref(), || {
                    let docs = rank::newest(&searcher, &seqs, base.as_ref(), before, k)?;
                    page_of(docs.into_iter().map(|address| (0.0, address)).collect())
                })?;
                (total, page, None)
            }
            Sort::Relevance => {
                let (offset, through) = match request.cursor {
                    Some(Cursor::Relevance { offset, through }) => (offset, through),
                    _ => (0, indexed_through_seq),
                };
                let counted = rank::all_of(rank::copy(&clauses));
                // Pages of one search rank the same messages: none indexed after its first
                // page. The bound is left out when the index holds nothing newer, so that the
                // words alone make the query and tantivy can prune it.
                if rank::max_seq(&searcher, &seqs) > through {
                    clauses.push((Occur::Must, Box::new(seq_range(f.seq, Bound::Unbounded, Bound::Included(through)))));
                }
                let ranking = rank::all_of(clauses);
                let k = offset + request.limit + 1;
                let (total, page) = rank::counting_beside(&searcher, counted.as_ref(), || {
                    let ranked = rank::top_by_score(&searcher, &seqs, ranking.as_ref(), k)?;
                    page_of(ranked.into_iter().skip(offset).map(|r| (r.score, r.address)).collect())
                })?;
                (total, page, Some((offset, through)))
            }
        };
        let next_cursor = match hits.last() {
            Some(last) if more => Some(
                match window {
                    Some((offset, through)) => Cursor::Relevance { offset: offset + request.limit, through },
                    None => Cursor::Time { before_seq: last.seq },
                }
                .render(),
            )
            .filter(|_| window.is_none_or(|(offset, _)| offset + request.limit < RELEVANCE_DEPTH_MAX)),
            _ => None,
        };
        Ok(Hits { total, total_is_exact, hits, next_cursor, indexed_through_seq })
    }

    /// Adds the index terms that start with `prefix` to the terms a snippet highlights.
    fn expand_prefix(
        &self,
        searcher: &tantivy::Searcher,
        prefix: &str,
        highlight: &mut BTreeMap<String, f32>,
    ) -> Result<(), ProjectionError> {
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.fields.body)?;
            let mut stream = inverted
                .terms()
                .range()
                .ge(prefix.as_bytes())
                .into_stream()
                .map_err(|e| ProjectionError::Task(format!("search terms: {e}")))?;
            let mut taken = 0;
            while stream.advance() && taken < PREFIX_EXPANSIONS_MAX {
                let Ok(term) = std::str::from_utf8(stream.key()) else { continue };
                if !term.starts_with(prefix) {
                    break;
                }
                highlight.insert(term.to_owned(), 0.5);
                taken += 1;
            }
        }
        Ok(())
    }
}

/// The hits of a page: what each document's columns hold, and its text from `texts` for the
/// snippet. A message whose record the log no longer holds (removed by a retention cut that
/// the index has not applied yet) is left out: its text is gone.
fn hits(
    columns: &[rank::SegmentColumns],
    page: impl Iterator<Item = (f32, DocAddress)>,
    snippets: &SnippetGenerator,
    texts: &dyn MessageTexts,
) -> Result<Vec<Hit>, ProjectionError> {
    let mut found = Vec::new();
    for (score, address) in page {
        let Some(segment) = columns.get(address.segment_ord as usize) else { continue };
        let (doc, shown) = (address.doc_id, &segment.shown);
        let hit = Hit {
            room: rank::Shown::text(shown.room.as_ref(), doc)?,
            seq: segment.column.first(doc).unwrap_or_default(),
            author: rank::Shown::text(shown.author.as_ref(), doc)?,
            at_unix_ms: shown.at.first(doc).unwrap_or_default(),
            snippet: String::new(),
            score,
        };
        found.push((shown.text_seq.first(doc).unwrap_or_default(), hit));
    }
    let mut wanted: Vec<u64> = found.iter().map(|(text_seq, _)| *text_seq).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut bodies = texts_on_two_threads(texts, &wanted)?;
    Ok(found
        .into_iter()
        .filter_map(|(text_seq, mut hit)| {
            let body = bodies.remove(&text_seq)?;
            let snippet = snippets.snippet(&body);
            hit.snippet = if snippet.is_empty() { escape_start(&body) } else { snippet.to_html() };
            Some(hit)
        })
        .collect())
}

/// Runs of hits fewer than this are read on the search's own thread.
const TEXTS_SPLIT_RUNS_MIN: usize = 4;

/// The texts of `wanted` (ascending), read half on this thread and half on a second one when
/// they lie in several places of the log: at ten million messages each is a read of sled's
/// file (its cache holds a fraction of the log), about 40 µs, and a page has 20.
fn texts_on_two_threads(texts: &dyn MessageTexts, wanted: &[u64]) -> Result<HashMap<u64, String>, ProjectionError> {
    let runs = runs(wanted);
    if runs.len() < TEXTS_SPLIT_RUNS_MIN {
        return texts.texts(wanted);
    }
    let mine: usize = runs[..runs.len() / 2].iter().map(|run| run.len()).sum();
    let (mine, theirs) = wanted.split_at(mine);
    std::thread::scope(|scope| {
        match std::thread::Builder::new().name("search-texts".into()).spawn_scoped(scope, || texts.texts(theirs)) {
            Ok(other) => {
                let mut read = texts.texts(mine)?;
                let more =
                    other.join().map_err(|_| ProjectionError::Task("reading the hits' texts panicked".into()))?;
                read.extend(more?);
                Ok(read)
            }
            // No thread to be had (the process at its limit): all on this one.
            Err(_) => texts.texts(wanted),
        }
    })
}

/// The character of a query that is one CJK character (no regex syntax: a CJK character is
/// not a metacharacter).
fn lone_cjk(tokens: &[String]) -> Option<char> {
    let [token] = tokens else { return None };
    let mut chars = token.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if tokenizer::is_cjk(c) => Some(c),
        _ => None,
    }
}

fn term_query(field: Field, text: &str) -> TermQuery {
    TermQuery::new(Term::from_field_text(field, text), IndexRecordOption::Basic)
}

fn seq_range(field: Field, from: Bound<u64>, to: Bound<u64>) -> RangeQuery {
    let term = |v| Term::from_field_u64(field, v);
    let map = |b: Bound<u64>| match b {
        Bound::Included(v) => Bound::Included(term(v)),
        Bound::Excluded(v) => Bound::Excluded(term(v)),
        Bound::Unbounded => Bound::Unbounded,
    };
    RangeQuery::new(map(from), map(to))
}

/// The start of a text, HTML-escaped, for a hit whose match is not in its words (a prefix
/// beyond the expansions highlighted).
fn escape_start(text: &str) -> String {
    let start: String = text.chars().take(SNIPPET_CHARS).collect();
    start.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
