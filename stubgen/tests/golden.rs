//! Golden test: the code generated for a small interface, checked in so a change to the
//! generator's output is seen in review. `UPDATE_EXPECT=1` rewrites it.

use std::path::Path;

#[test]
fn generated_code_matches_the_checked_in_copy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let source = std::fs::read_to_string(dir.join("greeter.rs")).unwrap();
    let got = multispace_stubgen::generate(&source, "tests/golden/greeter.rs").unwrap();
    let expected_path = dir.join("greeter.expected.rs");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &got).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert!(got == expected, "generated code changed; review and rerun with UPDATE_EXPECT=1\n{got}");
}

#[test]
fn method_ids_follow_the_signature_not_the_docs() {
    let base = "pub trait S {\n    async fn f(&self, x: u32) -> u32;\n    async fn g(&self);\n}\n";
    let id = |src: &str, m: &str| {
        let code = multispace_stubgen::generate(src, "s.rs").unwrap();
        code.lines().find(|l| l.contains(&format!("pub const {m}: u32"))).unwrap().to_owned()
    };
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
    let id = |src: &str, m: &str| {
        let code = multispace_stubgen::generate(src, "s.rs").unwrap();
        code.lines().find(|l| l.contains(&format!("pub const {m}: u32"))).unwrap().to_owned()
    };
    let changed = base.replace("pub x: i32", "pub x: i64");
    assert_ne!(id(base, "F"), id(&changed, "F"), "P is used through Q");
    assert_eq!(id(base, "G"), id(&changed, "G"));
}
