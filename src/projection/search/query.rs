//! The query language people type: words (all must match), `"quoted phrases"`, `-excluded`
//! words or phrases, and `prefix*`. Nothing else is special, so no input can name a field or
//! widen a search beyond the rooms it is limited to.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest query accepted, in bytes.
pub const QUERY_BYTES_MAX: usize = 1024;
/// Most words and phrases in one query.
pub const ITEMS_MAX: usize = 32;

/// One word or phrase of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The text as typed, without quotes, `-` or `*`.
    pub text: String,
    /// `-word`: hits must not contain it.
    pub exclude: bool,
    /// `word*`: the last word is a prefix.
    pub prefix: bool,
}

/// A query or an option that cannot be understood; code `invalid_query`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

/// Splits a query into its words and phrases.
pub fn parse(query: &str) -> Result<Vec<Item>, QueryError> {
    if query.len() > QUERY_BYTES_MAX {
        return Err(QueryError(format!("the query is {} bytes; the limit is {QUERY_BYTES_MAX}", query.len())));
    }
    let mut items = Vec::new();
    let mut rest = query.trim_start();
    while !rest.is_empty() {
        let exclude = rest.starts_with('-');
        if exclude {
            rest = &rest[1..];
        }
        let (text, after) = if let Some(quoted) = rest.strip_prefix('"') {
            // An unclosed quote runs to the end of the query.
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let (text, after, prefix) = match after.strip_prefix('*') {
            Some(after) => (text, after, true),
            None => match text.strip_suffix('*') {
                Some(stem) => (stem, after, true),
                None => (text, after, false),
            },
        };
        if !text.trim().is_empty() {
            items.push(Item { text: text.to_owned(), exclude, prefix });
        }
        rest = after.trim_start();
    }
    if items.len() > ITEMS_MAX {
        return Err(QueryError(format!("the query has {} words or phrases; the limit is {ITEMS_MAX}", items.len())));
    }
    Ok(items)
}

/// A point in time given as a duration ago (`7d`, `90m`), an RFC 3339 time
/// (`2026-11-01T12:00:00Z`, `2026-11-01`), or milliseconds since the Unix epoch.
pub fn parse_time(text: &str, now: SystemTime) -> Result<u64, QueryError> {
    let text = text.trim();
    let to_ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(to_ms(now.checked_sub(ago).unwrap_or(UNIX_EPOCH)));
    }
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_owned() };
    humantime::parse_rfc3339_weak(full.trim_end_matches('Z')).map(to_ms).map_err(|_| {
        QueryError(format!("{text:?} is not a time: use a duration ago (7d, 12h), an RFC 3339 time, or Unix ms"))
    })
}

/// How long ago a Unix time in ms was, for display.
pub fn ago(at_unix_ms: u64, now: SystemTime) -> Duration {
    let at = UNIX_EPOCH + Duration::from_millis(at_unix_ms);
    now.duration_since(at).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str, exclude: bool, prefix: bool) -> Item {
        Item { text: text.into(), exclude, prefix }
    }

    #[test]
    fn words_phrases_exclusions_and_prefixes() {
        assert_eq!(
            parse(r#"deploy "release notes" -draft migr* "big ba"* -"old plan""#).expect("parses"),
            vec![
                item("deploy", false, false),
                item("release notes", false, false),
                item("draft", true, false),
                item("migr", false, true),
                item("big ba", false, true),
                item("old plan", true, false),
            ]
        );
    }

    #[test]
    fn odd_input_is_tolerated_or_refused_clearly() {
        assert_eq!(parse(r#"  "unclosed phrase"#).expect("parses"), vec![item("unclosed phrase", false, false)]);
        assert!(parse("  - * \"\" ").expect("parses").is_empty());
        assert!(parse(&"w ".repeat(40)).is_err());
        assert!(parse(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn times_ago_absolute_and_raw() {
        let now = UNIX_EPOCH + Duration::from_secs(10 * 86_400);
        assert_eq!(parse_time("7d", now).expect("ago"), 3 * 86_400_000);
        assert_eq!(parse_time("1970-01-02", now).expect("date"), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z", now).expect("rfc3339"), 1000);
        assert_eq!(parse_time("1234", now).expect("ms"), 1234);
        assert!(parse_time("yesterday-ish", now).is_err());
    }
}
