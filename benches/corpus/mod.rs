//! A generated chat corpus with a realistic word distribution, the same on every run: words drawn
//! from a Zipf distribution (exponent 1.07, as measured for English text) over a 50,000-word
//! vocabulary, 3 to 30 words a message, and one message in twenty in Chinese (characters drawn
//! from a Zipf distribution over 3,000 characters). Shared by `benches/search.rs` and
//! `roomlog-load --fill --text zipf`.
#![allow(dead_code)]

/// A small deterministic generator (SplitMix64): benchmarks need no cryptographic randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Ranks drawn with probability proportional to `1 / rank^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    /// A rank from 0 (the most frequent).
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "to", "ri", "en", "sa", "mo", "lu", "ne", "di", "po", "an", "ve", "shi", "ra", "co", "mi", "te", "lo", "ba",
    "gu", "fe", "in", "or", "ya", "zu", "pe", "ti", "na", "so", "ul",
];

/// The corpus: vocabulary and distributions.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub words: Vec<String>,
    chars: Vec<char>,
    word_ranks: Zipf,
    char_ranks: Zipf,
}

impl Default for Corpus {
    fn default() -> Self {
        Self::new()
    }
}

impl Corpus {
    pub fn new() -> Self {
        // 50,000 distinct pronounceable words of 1 to 4 syllables (30 + 900 + 27,000 + rest).
        let mut words = Vec::with_capacity(50_000);
        let n = SYLLABLES.len();
        'outer: for len in 1..=4u32 {
            for i in 0..n.pow(len) {
                let mut word = String::new();
                let mut k = i;
                for _ in 0..len {
                    word.push_str(SYLLABLES[k % n]);
                    k /= n;
                }
                words.push(word);
                if words.len() == 50_000 {
                    break 'outer;
                }
            }
        }
        // Shuffle so that frequent words are not all short ones.
        let mut rng = Rng::new(7);
        for i in (1..words.len()).rev() {
            words.swap(i, rng.below(i + 1));
        }
        let chars = (0..3000u32).filter_map(|i| char::from_u32(0x4E00 + i * 7)).collect();
        Self { words, chars, word_ranks: Zipf::new(50_000, 1.07), char_ranks: Zipf::new(3000, 1.0) }
    }

    /// One message body.
    pub fn message(&self, rng: &mut Rng) -> String {
        if rng.below(20) == 0 {
            let len = 4 + rng.below(20);
            return (0..len).map(|_| self.chars[self.char_ranks.sample(rng)]).collect();
        }
        let len = 3 + rng.below(28);
        let mut body = String::with_capacity(len * 7);
        for i in 0..len {
            if i > 0 {
                body.push(' ');
            }
            body.push_str(&self.words[self.word_ranks.sample(rng)]);
        }
        body
    }

    /// A word as people search for one: half drawn as they occur in text (often frequent), half
    /// uniformly among ranks 100 to 20,000 (the specific words searches are usually for).
    pub fn query_word(&self, rng: &mut Rng) -> &str {
        if rng.below(2) == 0 {
            &self.words[self.word_ranks.sample(rng)]
        } else {
            &self.words[100 + rng.below(19_900)]
        }
    }
}
