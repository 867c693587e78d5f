//! `roomlog config`: the configuration in force (file, environment and flags), as TOML.

use roomlog::Config;

/// `roomlog config`: prints the configuration in force.
pub fn print(config: &Config) -> anyhow::Result<()> {
    print!("{}", config_listing(config)?);
    Ok(())
}

/// The configuration in force as TOML, with every key: TOML has no null, so a key without a
/// value (`files.cold_dir`, `logging.dir`, ...) is listed commented out, and an empty list of
/// tables (`files.on_pay`) as `[]`.
fn config_listing(config: &Config) -> anyhow::Result<String> {
    fn leaves(value: &serde_json::Value, section: &str, out: &mut Vec<(String, String, serde_json::Value)>) {
        for (key, child) in value.as_object().into_iter().flatten() {
            match child {
                serde_json::Value::Object(_) => {
                    let inner = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
                    leaves(child, &inner, out);
                }
                _ => out.push((section.to_owned(), key.clone(), child.clone())),
            }
        }
    }
    let text = toml::to_string_pretty(config)?;
    // (header, lines) in order; the first has no header (the top-level keys).
    let mut sections: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        match line.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(header) if !header.starts_with('[') => sections.push((header.to_owned(), Vec::new())),
            _ => {
                if let Some(last) = sections.last_mut() {
                    last.1.push(line.to_owned());
                }
            }
        }
    }
    let mut all = Vec::new();
    leaves(&serde_json::to_value(config)?, "", &mut all);
    for (section, key, value) in all {
        let path = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
        if text.contains(&format!("[[{path}]]")) {
            continue;
        }
        let line = match &value {
            serde_json::Value::Null => format!("# {key} =   (unset)"),
            other => format!("{key} = {}", toml::Value::try_from(other)?),
        };
        let index = match sections.iter().position(|(header, _)| *header == section) {
            Some(index) => index,
            None => {
                sections.push((section.clone(), Vec::new()));
                sections.len() - 1
            }
        };
        let lines = &mut sections[index].1;
        if lines.iter().any(|l| l.trim_start().starts_with(&format!("{key} ="))) {
            continue;
        }
        // Before the blank line that ends the section.
        let at = lines.iter().rposition(|l| !l.trim().is_empty()).map_or(0, |i| i + 1);
        lines.insert(at, line);
    }
    let mut out = String::new();
    for (header, lines) in sections {
        if !header.is_empty() {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(&format!("[{header}]\n"));
        }
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}
