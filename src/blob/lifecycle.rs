//! Lifecycle rules in the JSON shape of an S3 bucket lifecycle configuration: which keys expire
//! after how many days, and when their content moves to a colder tier. Parsed and checked with
//! errors that name the rule and the field; [`Rules::plan`] says what each rule would do now,
//! for the janitor to apply.
//!
//! Storage classes map to roomlog's two tiers: `STANDARD` is hot (the data folder); `STANDARD_IA`,
//! `ONEZONE_IA`, `GLACIER_IR`, `GLACIER` and `DEEP_ARCHIVE` are cold (the folder an operator names).

use serde::Deserialize;

use crate::projection::files::FileEntry;

const DAY_MS: u64 = 24 * 3600 * 1000;

pub use super::Tier;

/// The tier of an S3 storage class, if it is one roomlog knows.
pub fn tier_of(storage_class: &str) -> Option<Tier> {
    match storage_class {
        "STANDARD" => Some(Tier::Hot),
        "STANDARD_IA" | "ONEZONE_IA" | "GLACIER_IR" | "GLACIER" | "DEEP_ARCHIVE" => Some(Tier::Cold),
        _ => None,
    }
}

/// A rule, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub enabled: bool,
    pub prefix: String,
    pub expiration_days: Option<u64>,
    /// Ascending by days: (days, storage class, tier).
    pub transitions: Vec<(u64, String, Tier)>,
}

/// A whole configuration, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

/// A configuration that is not valid, naming the rule and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lifecycle rules: {0}")]
pub struct RulesError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "Rules")]
    rules: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(rename = "ID")]
    id: Option<String>,
    #[serde(rename = "Status")]
    status: String,
    #[serde(rename = "Filter")]
    filter: Option<RawFilter>,
    /// The older, top-level form of `Filter.Prefix`.
    #[serde(rename = "Prefix")]
    prefix: Option<String>,
    #[serde(rename = "Expiration")]
    expiration: Option<RawDays>,
    #[serde(rename = "Transitions", default)]
    transitions: Vec<RawTransition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(rename = "Prefix", default)]
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDays {
    #[serde(rename = "Days")]
    days: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    #[serde(rename = "Days")]
    days: i64,
    #[serde(rename = "StorageClass")]
    storage_class: String,
}

impl Rules {
    /// The rules in force: those of the S3-style JSON file at `path` (`files.lifecycle`), none
    /// when unset.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, RulesError> {
        let Some(path) = path else { return Ok(Self::default()) };
        let json =
            std::fs::read_to_string(path).map_err(|e| RulesError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&json).map_err(|e| RulesError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses and checks a configuration.
    pub fn parse(json: &str) -> Result<Self, RulesError> {
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| RulesError(format!("expected {{\"Rules\": [...]}}: {e}")))?;
        let mut rules = Vec::new();
        for (n, value) in raw.rules.into_iter().enumerate() {
            let name = match value.get("ID").and_then(|v| v.as_str()) {
                Some(id) => format!("rule {} ({id:?})", n + 1),
                None => format!("rule {}", n + 1),
            };
            let bad = |field: &str, what: String| RulesError(format!("{name}, {field}: {what}"));
            let raw: RawRule = serde_json::from_value(value).map_err(|e| RulesError(format!("{name}: {e}")))?;
            let id = raw.id.unwrap_or_else(|| format!("rule-{}", n + 1));
            if rules.iter().any(|r: &Rule| r.id == id) {
                return Err(bad("ID", format!("{id:?} is used by an earlier rule")));
            }
            let enabled = match raw.status.as_str() {
                "Enabled" => true,
                "Disabled" => false,
                other => return Err(bad("Status", format!("{other:?}: use Enabled or Disabled"))),
            };
            let days = |field: &str, days: i64| -> Result<u64, RulesError> {
                u64::try_from(days)
                    .ok()
                    .filter(|&d| d >= 1)
                    .ok_or_else(|| bad(field, format!("{days}: days must be 1 or more")))
            };
            let expiration_days = raw.expiration.map(|e| days("Expiration.Days", e.days)).transpose()?;
            let mut transitions = Vec::new();
            for (i, t) in raw.transitions.iter().enumerate() {
                let field = format!("Transitions[{i}]");
                let d = days(&format!("{field}.Days"), t.days)?;
                let tier = tier_of(&t.storage_class).ok_or_else(|| {
                    bad(
                        &format!("{field}.StorageClass"),
                        format!("unknown storage class {:?}: use STANDARD, STANDARD_IA, ONEZONE_IA, GLACIER_IR, GLACIER or DEEP_ARCHIVE", t.storage_class),
                    )
                })?;
                if transitions.last().is_some_and(|(prev, _, _)| *prev >= d) {
                    return Err(bad(&format!("{field}.Days"), format!("{d} is not after the previous transition")));
                }
                transitions.push((d, t.storage_class.clone(), tier));
            }
            if let (Some(expire), Some((last, _, _))) = (expiration_days, transitions.last()) {
                if *last >= expire {
                    return Err(bad(
                        "Expiration.Days",
                        format!("{expire} is not after the last transition ({last} days)"),
                    ));
                }
            }
            if expiration_days.is_none() && transitions.is_empty() {
                return Err(bad("Expiration", "a rule needs an Expiration or Transitions".into()));
            }
            let prefix = raw.filter.map(|f| f.prefix).or(raw.prefix).unwrap_or_default();
            rules.push(Rule { id, enabled, prefix, expiration_days, transitions });
        }
        Ok(Self { rules })
    }

    /// What the enabled rules would do now to each entry: expire it, or move its content to a
    /// tier. The first enabled rule whose prefix matches a key decides for it.
    pub fn plan(&self, entries: &[FileEntry], now_ms: u64) -> Vec<Planned> {
        let mut out = Vec::new();
        for entry in entries {
            let Some(rule) = self.rules.iter().find(|r| r.enabled && entry.key.as_str().starts_with(&r.prefix)) else {
                continue;
            };
            let age_days = now_ms.saturating_sub(entry.stored_at_unix_ms) / DAY_MS;
            if rule.expiration_days.is_some_and(|d| age_days >= d) {
                out.push(Planned {
                    key: entry.key.to_string(),
                    rule: rule.id.clone(),
                    action: Action::Expire,
                    bytes: entry.size,
                });
            } else if let Some((_, class, tier)) = rule.transitions.iter().rev().find(|(d, _, _)| age_days >= *d) {
                out.push(Planned {
                    key: entry.key.to_string(),
                    rule: rule.id.clone(),
                    action: Action::Transition { storage_class: class.clone(), tier: *tier },
                    bytes: entry.size,
                });
            }
        }
        out
    }
}

/// What a rule would do to one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Planned {
    pub key: String,
    pub rule: String,
    pub action: Action,
    /// The key's size (the bytes an expiry frees once no other key uses the content).
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Expire,
    Transition { storage_class: String, tier: Tier },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{ContentHash, FileKey};

    /// The example policy of the issue, as given.
    const EXAMPLE: &str = r#"{"Rules": [
      {"ID": "DeleteTempFiles", "Status": "Enabled", "Filter": {"Prefix": "temp_"}, "Expiration": {"Days": 7}},
      {"ID": "ExpireTts", "Status": "Enabled", "Filter": {"Prefix": "tts/"}, "Expiration": {"Days": 30}},
      {"ID": "TransitionToIA", "Status": "Enabled", "Filter": {"Prefix": "permanent/"},
       "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}, {"Days": 90, "StorageClass": "GLACIER"}]}
    ]}"#;

    fn entry(key: &str, age_days: u64, now: u64) -> FileEntry {
        FileEntry {
            key: FileKey::parse(key).expect("key"),
            hash: ContentHash::parse(&"a".repeat(64)).expect("hash"),
            size: 100,
            content_type: "x".into(),
            owner: None,
            stored_at_unix_ms: now - age_days * DAY_MS,
        }
    }

    #[test]
    fn the_example_policy_is_accepted_and_planned() {
        let rules = Rules::parse(EXAMPLE).expect("the issue's example is valid");
        assert_eq!(rules.rules.len(), 3);
        let now = 1_000 * DAY_MS;
        let entries = [
            entry("temp_photos/a.jpg", 8, now),
            entry("temp_audio/b.mp3", 6, now),
            entry("tts/c.mp3", 31, now),
            entry("permanent/photos/d.jpg", 45, now),
            entry("permanent/photos/e.jpg", 100, now),
            entry("other/f", 500, now),
        ];
        let plan: Vec<(String, String, Action)> =
            rules.plan(&entries, now).into_iter().map(|p| (p.key, p.rule, p.action)).collect();
        let ia = Action::Transition { storage_class: "STANDARD_IA".into(), tier: Tier::Cold };
        let glacier = Action::Transition { storage_class: "GLACIER".into(), tier: Tier::Cold };
        assert_eq!(
            plan,
            vec![
                ("temp_photos/a.jpg".into(), "DeleteTempFiles".into(), Action::Expire),
                ("tts/c.mp3".into(), "ExpireTts".into(), Action::Expire),
                ("permanent/photos/d.jpg".into(), "TransitionToIA".into(), ia),
                ("permanent/photos/e.jpg".into(), "TransitionToIA".into(), glacier),
            ]
        );
    }

    #[test]
    fn bad_rules_are_refused_naming_the_rule_and_the_field() {
        let cases = [
            (
                r#"{"Rules":[{"ID":"A","Status":"Enabled","Filter":{"Prefix":"x"},"Transitions":[{"Days":30,"StorageClass":"COLD_STORAGE"}]}]}"#,
                r#"rule 1 ("A"), Transitions[0].StorageClass: unknown storage class "COLD_STORAGE""#,
            ),
            (
                r#"{"Rules":[{"ID":"A","Status":"Enabled","Expiration":{"Days":-3}}]}"#,
                r#"rule 1 ("A"), Expiration.Days: -3"#,
            ),
            (
                r#"{"Rules":[{"ID":"A","Status":"Enabled","Expiration":{"Days":3}},{"ID":"A","Status":"Enabled","Expiration":{"Days":4}}]}"#,
                r#"rule 2 ("A"), ID: "A" is used by an earlier rule"#,
            ),
            (r#"{"Rules":[{"ID":"A","Status":"On","Expiration":{"Days":3}}]}"#, r#"rule 1 ("A"), Status: "On""#),
            (r#"{"Rules":[{"ID":"A","Status":"Enabled"}]}"#, r#"rule 1 ("A"), Expiration: a rule needs"#),
            (
                r#"{"Rules":[{"ID":"A","Status":"Enabled","Expiration":{"Days":3},"Bogus":1}]}"#,
                r#"rule 1 ("A"): unknown field `Bogus`"#,
            ),
            (
                r#"{"Rules":[{"ID":"A","Status":"Enabled","Expiration":{"Days":30},"Transitions":[{"Days":60,"StorageClass":"GLACIER"}]}]}"#,
                r#"rule 1 ("A"), Expiration.Days: 30 is not after the last transition"#,
            ),
            (r#"[1,2]"#, "expected {\"Rules\": [...]}"),
        ];
        for (json, expected) in cases {
            let error = Rules::parse(json).expect_err("must be refused").to_string();
            assert!(error.contains(expected), "{json}\n  gave: {error}\n  want: {expected}");
        }
    }
}
