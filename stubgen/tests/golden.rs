//! Golden test: the code generated for a small interface, checked in so a change to the
//! generator's output is seen in review. `UPDATE_EXPECT=1` rewrites it.

use std::path::Path;

/// Generates `tests/golden/NAME.rs` with `generate(source, path)` and compares the result
/// with `NAME.expected.rs` (or rewrites that under `UPDATE_EXPECT=1`).
fn check_golden(name: &str, generate: impl Fn(&str, &str) -> String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let source = std::fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap();
    let got = generate(&source, &format!("tests/golden/{name}.rs"));
    let expected_path = dir.join(format!("{name}.expected.rs"));
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &got).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert!(got == expected, "generated code changed; review and rerun with UPDATE_EXPECT=1\n{got}");
}

/// The line declaring method `m`'s id constant in the code generated for `src`.
fn id_line(src: &str, m: &str) -> String {
    let code = multispace_stubgen::generate(src, "s.rs").unwrap();
    code.lines().find(|l| l.contains(&format!("pub const {m}: u32"))).unwrap().to_owned()
}

#[test]
fn generated_code_matches_the_checked_in_copy() {
    check_golden("greeter", |source, path| multispace_stubgen::generate(source, path).unwrap());
}

#[test]
fn method_ids_follow_the_signature_not_the_docs() {
    let base = "pub trait S {\n    async fn f(&self, x: u32) -> u32;\n    async fn g(&self);\n}\n";
    let id = id_line;
    let documented = base.replace("    async fn f", "    /// Now with docs.\n    async fn f");
    assert_eq!(id(base, "F"), id(&documented, "F"), "docs do not change ids");
    let changed = base.replace("x: u32) -> u32", "x: u64) -> u32");
    assert_ne!(id(base, "F"), id(&changed, "F"), "a new argument type is a new id");
    assert_eq!(id(base, "G"), id(&changed, "G"), "other methods keep their ids");
    let added = base.replace("    async fn g(&self);", "    async fn g(&self);\n    async fn h(&self);");
    assert_eq!(id(base, "F"), id(&added, "F"), "adding a method keeps the others' ids");
    let oneway = base.replace("    async fn g", "    #[oneway]\n    async fn g");
    assert_ne!(id(base, "G"), id(&oneway, "G"), "how a method is called is part of its id");
}

#[test]
fn a_change_to_a_type_used_by_a_method_changes_its_id() {
    let base = "pub struct P { pub x: i32 }\npub struct Q { pub p: P }\npub trait S {\n    async fn f(&self, q: Q);\n    async fn g(&self, x: u8);\n}\n";
    let id = id_line;
    let changed = base.replace("pub x: i32", "pub x: i64");
    assert_ne!(id(base, "F"), id(&changed, "F"), "P is used through Q");
    assert_eq!(id(base, "G"), id(&changed, "G"));
}

#[test]
fn generated_json_access_matches_the_checked_in_copy() {
    let builder = multispace_stubgen::Builder::new().json(true);
    check_golden("inventory", |source, path| builder.generate_source(source, path).unwrap());
}

#[test]
fn json_access_is_opt_in_and_keeps_the_method_ids() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inventory.rs")).unwrap();
    let plain = multispace_stubgen::generate(&source, "inventory.rs").unwrap();
    let json = multispace_stubgen::Builder::new().json(true).generate_source(&source, "inventory.rs").unwrap();
    assert!(!plain.contains("serde") && !plain.contains("call_json"), "off by default");
    let id_lines = |code: &str| {
        code.lines().filter(|l| l.contains("pub const") && l.contains(": u32 =")).map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(id_lines(&plain).len(), 5, "four methods and the interface method");
    assert_eq!(id_lines(&plain), id_lines(&json), "serde derives do not change what travels");
    // Both types derive serde, after their own derives and rkyv attributes.
    assert_eq!(json.matches("::multispace_rpc::serde::Serialize").count(), 2, "{json}");
    assert_eq!(json.matches("#[serde(crate = \"::multispace_rpc::serde\")]").count(), 2);
    // Parameters and results described as written, docs to the first blank line.
    for want in [
        r#"("items", "Vec<Item>"),"#,
        r#"("note", "Option<String>"),"#,
        r#"returns: "Option<(Place, u32)>""#,
        r#"doc: "How many items there are.""#,
        r#"name: "note","#,
    ] {
        assert!(json.contains(want), "missing {want}\n{json}");
    }
}

#[test]
fn a_type_that_derives_serde_itself_is_left_alone() {
    let source = "#[derive(serde::Serialize, serde::Deserialize)]\npub struct P { pub x: i32 }\npub trait S {\n    async fn f(&self, p: P);\n}\n";
    let json = multispace_stubgen::Builder::new().json(true).generate_source(source, "s.rs").unwrap();
    assert!(!json.contains("::multispace_rpc::serde::Serialize"), "{json}");
    assert!(json.contains("pub async fn call_json"));
}
