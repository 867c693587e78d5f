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
