//! The documents a reader starts from say what the code does (issue 17: they still described
//! name-only authentication and modules that had since landed).

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

#[test]
fn the_layout_names_every_module_and_the_docs_describe_todays_code() {
    let lib = read("src/lib.rs");
    let unlisted: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')))
        .filter(|m| !lib.contains(&format!("//! - [`{m}`]")))
        .collect();
    assert!(unlisted.is_empty(), "modules the `# Layout` of src/lib.rs does not name: {unlisted:?}");
    assert!(!lib.contains("as the issues land"), "src/lib.rs: the janitor has landed");
    let actors = read("src/actor/mod.rs");
    assert!(!actors.contains("as their issues land"), "src/actor/mod.rs: sessions have landed");
    let architecture = read("ARCHITECTURE.md");
    assert!(!architecture.contains("today `NameOnly`"), "ARCHITECTURE.md: authentication is by signed token");
}

/// The error table of `schema/wire.md` is the registry's: every code, with its HTTP status and
/// whether a WebSocket error frame carries it, and no code the server does not send.
#[test]
fn the_wire_schema_lists_every_error_code_with_its_status() {
    use roomlog::error_code::ErrorCode;
    let schema = read("schema/wire.md");
    let section = schema.split("## Error codes").nth(1).expect("schema/wire.md has an `## Error codes` section");
    let rows: Vec<Vec<&str>> = section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split('|').map(|cell| cell.trim().trim_end_matches('`')).collect())
        .collect();
    let documented: Vec<(&str, &str, bool)> = rows.iter().map(|r| (r[0], r[1], r[2] == "frame")).collect();
    let registry: Vec<(&str, String, bool)> =
        ErrorCode::ALL.iter().map(|c| (c.as_str(), c.status().as_u16().to_string(), c.in_frames())).collect();
    let registry: Vec<(&str, &str, bool)> = registry.iter().map(|(c, s, f)| (*c, s.as_str(), *f)).collect();
    assert_eq!(documented, registry, "schema/wire.md `## Error codes` (code, status, frame) against ErrorCode::ALL");
}
