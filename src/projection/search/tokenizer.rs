//! The tokenizer of message text: words for scripts that separate words with spaces, and
//! overlapping character bigrams for those that do not (Chinese, Japanese, Korean).
//!
//! This is the approach of Lucene's `CJKBigramFilter` and Elasticsearch's `cjk` analyzer:
//! `我们的团队` is indexed as `我们 们的 的团 团队`, so a two-character word (`团队`) is one
//! term and a longer one is a phrase of bigrams, with no dictionary to ship or keep current.
//! A lone ideograph between other characters is indexed as itself. Latin and other
//! space-separated scripts are split on anything that is not a letter or digit, then lower-cased
//! and folded to ASCII where they have an ASCII form (`Café` → `cafe`).

use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the tokenizer is registered under in the index.
pub const NAME: &str = "roomlog_chat";

/// Longest token kept, in bytes: longer ones are noise (hashes, base64) nobody searches for.
const TOKEN_BYTES_MAX: usize = 64;

/// The analyzer of the `body` field: [`ChatTokenizer`], lower-cased, ASCII-folded.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(ChatTokenizer)
        .filter(RemoveLongFilter::limit(TOKEN_BYTES_MAX))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Splits text into words and CJK bigrams; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatTokenizer;

/// The tokens of one text, computed up front.
#[derive(Debug)]
pub struct ChatTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl Tokenizer for ChatTokenizer {
    type TokenStream<'a> = ChatTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ChatTokenStream {
        ChatTokenStream { tokens: tokens(text), next: 0 }
    }
}

impl TokenStream for ChatTokenStream {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

/// Whether `c` belongs to a script written without spaces between words.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x2FA1F) // CJK extensions B to F, compatibility supplement
}

#[derive(PartialEq)]
enum Run {
    None,
    Word,
    Cjk,
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut run = Run::None;
    let mut start = 0;
    let mut cjk: Vec<(usize, char)> = Vec::new();
    for (offset, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        let kind = if is_cjk(c) {
            Run::Cjk
        } else if c.is_alphanumeric() {
            Run::Word
        } else {
            Run::None
        };
        if kind != run {
            match run {
                Run::Word => push(&mut out, text, start, offset),
                Run::Cjk => bigrams(&mut out, text, &cjk, offset),
                Run::None => {}
            }
            cjk.clear();
            start = offset;
            run = kind;
        }
        if run == Run::Cjk {
            cjk.push((offset, c));
        }
    }
    out
}

fn push(out: &mut Vec<Token>, text: &str, from: usize, to: usize) {
    out.push(Token {
        offset_from: from,
        offset_to: to,
        position: out.len(),
        text: text[from..to].to_owned(),
        position_length: 1,
    });
}

/// A run of CJK characters as overlapping bigrams; a run of one character as itself.
fn bigrams(out: &mut Vec<Token>, text: &str, run: &[(usize, char)], end: usize) {
    if let [(from, _)] = run {
        push(out, text, *from, end);
        return;
    }
    for (i, (from, _)) in run.iter().enumerate().take(run.len() - 1) {
        let to = run.get(i + 2).map_or(end, |(o, _)| *o);
        push(out, text, *from, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while let Some(token) = stream.next() {
            out.push(token.text.clone());
        }
        out
    }

    #[test]
    fn words_are_split_lowercased_and_folded() {
        assert_eq!(texts("Hello, Café-au-lait! 42x"), ["hello", "cafe", "au", "lait", "42x"]);
    }

    #[test]
    fn chinese_and_japanese_become_bigrams_with_positions() {
        assert_eq!(texts("我们的团队"), ["我们", "们的", "的团", "团队"]);
        assert_eq!(texts("東京へ行く"), ["東京", "京へ", "へ行", "行く"]);
        assert_eq!(texts("ok 好 fine"), ["ok", "好", "fine"]);
        assert_eq!(texts("release版本2"), ["release", "版本", "2"]);
        let mut analyzer = analyzer();
        let mut stream = analyzer.token_stream("a 你好吗");
        let mut positions = Vec::new();
        while let Some(token) = stream.next() {
            positions.push((token.position, token.offset_from, token.offset_to));
        }
        assert_eq!(positions, [(0, 0, 1), (1, 2, 8), (2, 5, 11)]);
    }

    #[test]
    fn empty_and_punctuation_give_nothing() {
        assert!(texts("").is_empty());
        assert!(texts(" ... !!").is_empty());
    }
}
