//! `multispace call` against a real node process over mutual TLS: a calc method with JSON
//! arguments, the node's own control interface, a method listing, and the exit codes for
//! arguments that are not JSON (2), an unknown method or service (3), an application error
//! (1) and an unreachable node (5).

mod common;

use common::{certs, cli, free_port, json, line_with, node, stderr};

#[test]
fn operators_call_any_method_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path(), 1, "admin");
    let control = free_port();
    let _node = node(1, free_port(), control, "calc", &certs);
    let at = format!("127.0.0.1:{control}");
    let call = |args: &[&str]| cli(&[&["call"][..], args, &["--node", &at]].concat(), &certs, "admin");

    // The instance is found through the node; positional and named arguments.
    let sum = call(&["calc.add", "[2,3]"]);
    assert_eq!(json(&sum), 5);
    assert_eq!(String::from_utf8_lossy(&sum.stdout), "5\n");
    assert_eq!(json(&call(&["Calc.add", r#"{"a": 2, "b": 3}"#, "-o", "json"])), 5);
    let centroid = json(&call(&["calc.centroid_sum", r#"[{"x":1,"y":2},{"x":3,"y":4}]"#]));
    assert_eq!(centroid, serde_json::json!({"x": 4, "y": 6}));
    assert_eq!(json(&call(&["calc.ping"])), serde_json::Value::Null);

    // The instance named by id, as `svc ls` shows it, and the node's own interface.
    let instances = json(&call(&["node.lookup", r#""Calc""#]));
    let id = instances[0]["id"].as_u64().unwrap();
    assert_eq!(json(&call(&["calc.whoami", "--instance", &format!("{id:#x}")])), "calc");
    let members = json(&call(&["node.members"]));
    assert_eq!(members[0]["this_node"], true);

    // Listing the methods needs no node.
    let list = cli(&["call", "calc"], &certs, "admin");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success() && text.starts_with("METHOD"), "{text}");
    let add = text.lines().find(|l| l.starts_with("Calc.add(a: i64, b: i64) ")).unwrap_or_default();
    assert!(add.split_whitespace().any(|w| w == "i64") && add.ends_with("`a + b`."), "{text}");
    let list = json(&cli(&["call", "calc", "-o", "json"], &certs, "admin"));
    assert!(list.as_array().unwrap().iter().any(|m| m["name"] == "centroid_sum"), "{list}");

    // Not JSON, or not the method's arguments: usage, exit 2.
    let bad = call(&["calc.add", "[2,"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("not JSON"), "{}", stderr(&bad));
    let bad = call(&["calc.add", r#"["two", 3]"#]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("argument `a` (i64)"), "{}", stderr(&bad));

    // Unknown method or service: 3, naming what exists.
    let unknown = call(&["calc.multiply", "[2,3]"]);
    assert_eq!(unknown.status.code(), Some(3));
    assert!(stderr(&unknown).contains("add"), "{}", stderr(&unknown));
    let unknown = call(&["jukebox.play"]);
    assert_eq!(unknown.status.code(), Some(3));
    assert!(stderr(&unknown).contains("Keiretsu"), "{}", stderr(&unknown));
    let missing = call(&["calc.ping", "--instance", "0x1ffffffff"]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    // No Keiretsu instance runs here.
    let none = call(&["keiretsu.get_client_list"]);
    assert_eq!(none.status.code(), Some(3), "{}", stderr(&none));

    // The handler's error: exit 1 with its message.
    let div = call(&["calc.divide", "[1,0]"]);
    assert_eq!(div.status.code(), Some(1));
    assert!(stderr(&div).contains("division by zero"), "{}", stderr(&div));

    // Nobody listening: 5.
    let gone = cli(&["call", "calc.add", "[1,2]", "--node", &format!("127.0.0.1:{}", free_port())], &certs, "admin");
    assert_eq!(gone.status.code(), Some(5), "{}", stderr(&gone));
}

#[test]
fn a_traced_call_is_logged_under_its_trace_id_at_every_hop() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path(), 1, "admin");
    let control = free_port();
    let (_node, log) = node(1, free_port(), control, "calc", &certs);
    let at = format!("127.0.0.1:{control}");
    let out = cli(&["call", "calc.add", "[2,3]", "--trace", "--node", &at], &certs, "admin");
    assert_eq!(json(&out), 5);
    let id = stderr(&out)
        .lines()
        .find_map(|l| l.strip_prefix("trace ").map(str::to_string))
        .unwrap_or_else(|| panic!("no trace id on stderr: {}", stderr(&out)));
    assert_eq!(id.len(), 32, "{id}");
    // Two hops in the node: the control server's lookup, then the calc instance's add; each
    // logged once, as served, in its own span of the trace.
    let hops: Vec<String> = (0..2).map(|_| line_with(&log, &id)).collect();
    assert!(hops.iter().all(|l| l.contains("served")), "{hops:#?}");
    assert!(hops.iter().any(|l| l.contains("lookup")), "{hops:#?}");
    assert!(hops.iter().any(|l| l.contains("add")), "{hops:#?}");
}
