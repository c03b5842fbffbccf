//! Compile-fail tests: each `ui/*.rs` is a bad interface file; generating from it must fail
//! with exactly the message in the `.stderr` file beside it (file, line, column, what is
//! wrong and what to do instead). `UPDATE_EXPECT=1` rewrites the expectations.

use std::path::Path;

#[test]
fn bad_interfaces_fail_with_a_located_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "ui cases missing");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let source = std::fs::read_to_string(&case).unwrap();
        let name = format!("tests/ui/{}", case.file_name().unwrap().to_string_lossy());
        let got = match multispace_stubgen::generate(&source, &name) {
            Ok(_) => "(generated without error)\n".to_string(),
            Err(e) => format!("{e}\n"),
        };
        let expect_path = case.with_extension("stderr");
        if update {
            std::fs::write(&expect_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expect_path).unwrap_or_default();
        if got != expected {
            failures.push(format!("{name}:\n--- expected\n{expected}--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
