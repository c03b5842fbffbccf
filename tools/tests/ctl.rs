//! The operator commands against real node processes on loopback, over mutual TLS as
//! deployed: `members` and `svc ls` in both output formats, `svc start` on another node,
//! `svc stop` wherever the instance lives, and the exit codes for a missing instance, an
//! unreachable node and a refused certificate; and output into a closed pipe ends quietly.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{certs, cli, free_port, json, line_with, node, spawn_with as node_with, BIN};

/// Repeats `f` until it returns `Some`, for at most 20 seconds.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn operators_list_start_and_stop_services_across_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path(), 2, "admin,mallory");
    let beacons = free_port();
    let (c1, c2) = (free_port(), free_port());
    let _n1 = node(1, beacons, c1, "keiretsu", &certs);
    let _n2 = node(2, beacons, c2, "keiretsu", &certs);
    let at1 = format!("127.0.0.1:{c1}");

    // Both nodes, each with its keiretsu instance, as node 1 sees them.
    let members = eventually("node 1 sees node 2's instance", || {
        let m = json(&cli(&["members", "--node", &at1, "-o", "json"], &certs, "admin"));
        let total: u64 = m.as_array()?.iter().filter_map(|r| r["instances"].as_u64()).sum();
        (total == 2).then_some(m)
    });
    assert_eq!(members[0]["node"], 1);
    assert_eq!(members[0]["this_node"], true);
    assert_eq!(members[1]["control"], format!("127.0.0.1:{c2}"));
    let table = cli(&["members", "--node", &at1], &certs, "admin");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NODE") && text.lines().nth(1).unwrap().starts_with("1*"), "{text}");
    assert!(!text.contains('\x1b'), "no colour when piped: {text:?}");

    // Start a calc instance on node 2 by asking node 1; it shows up in the listing.
    let started = json(&cli(&["svc", "start", "calc", "--on", "2", "--node", &at1, "-o", "json"], &certs, "admin"));
    assert_eq!(started["node"], 2);
    assert_eq!(started["service"], "Calc");
    let id = started["id_hex"].as_str().unwrap().to_string();
    eventually("node 1 lists the new instance", || {
        let v = json(&cli(&["svc", "ls", "calc", "--node", &at1, "-o", "json"], &certs, "admin"));
        (v.as_array()?.len() == 1 && v[0]["id_hex"] == id.as_str()).then_some(())
    });

    // A non-admin certificate reads but may not start or stop.
    let denied = cli(&["svc", "stop", &id, "--node", &at1], &certs, "mallory");
    assert_eq!(denied.status.code(), Some(6), "{}", String::from_utf8_lossy(&denied.stderr));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("permission denied"));

    // Stop it through node 1 (it lives on node 2); stopping it again finds nothing.
    let stopped = cli(&["svc", "stop", &id, "--node", &at1], &certs, "admin");
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let again = cli(&["svc", "stop", &id, "--node", &at1], &certs, "admin");
    assert_eq!(again.status.code(), Some(3));
    let unknown = cli(&["svc", "start", "jukebox", "--node", &at1], &certs, "admin");
    assert_eq!(unknown.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("Keiretsu"), "says what it knows");

    // Nobody listening: exit code 5, and a message that says which node.
    let gone = cli(&["members", "--node", &format!("127.0.0.1:{}", free_port())], &certs, "admin");
    assert_eq!(gone.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("listing members"));

    // A reader that goes away after one line: the command ends quietly, successfully.
    let mut watch = Command::new(BIN)
        .args(["members", "--watch", "--interval-ms", "20", "--count", "1000", "--node", &at1, "-o", "json"])
        .env("MULTISPACE_TLS_DIR", &certs)
        .env("MULTISPACE_TLS_NAME", "admin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(watch.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with('['), "{first}");
    // The pipe is closed now; the next change (node 2 leaving) makes the watch write into it.
    drop(_n2);
    let status = watch.wait().unwrap();
    let mut err = String::new();
    watch.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success() && err.is_empty(), "{status}: {err}");
}

#[test]
fn settings_come_from_flags_then_environment_then_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.conf");
    let port = free_port().to_string();
    std::fs::write(
        &file,
        format!(
            "# a node's settings\nid = 5\nbeacon-ms = 70\nbeacon-window-ms = 9000\ncontrol-port = 0\nport = {port}\ninsecure-plain = true\nno-admin = true\n"
        ),
    )
    .unwrap();
    let conf = file.to_str().unwrap();
    // The file alone.
    let (_n, rx) = node_with(&["node", "--config", conf], &[]);
    assert!(line_with(&rx, "control at").contains("node 5: control at 127.0.0.1:"));
    // The environment beats the file; a flag beats both.
    let (_n, rx) = node_with(&["node", "start", "--config", conf, "--id", "6"], &[("MULTISPACE_BEACON_MS", "90")]);
    let line = line_with(&rx, "control at");
    assert!(line.starts_with("node 6:") && line.ends_with("beaconing every 90 ms"), "{line}");
    // A setting that is not a flag names its line.
    std::fs::write(&file, "id = 5\nbogus = 1\n").unwrap();
    let out = Command::new(BIN).args(["node", "--config", conf]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2: unknown setting `bogus`"), "{err}");
}

#[test]
fn a_node_drains_on_command_and_on_sigterm_and_the_cluster_routes_around_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path(), 2, "admin");
    let beacons = free_port().to_string();
    let (c1, c2) = (free_port().to_string(), free_port().to_string());
    let common = ["--port", &beacons, "--beacon-ms", "50", "--cluster", "drain-test", "--admin", "127.0.0.1:0"];
    let tls = [("MULTISPACE_TLS_DIR", certs.to_str().unwrap())];
    let (mut n1, rx1) = node_with(&[&["node", "--id", "1", "--control-port", &c1][..], &common].concat(), &tls);
    let (mut n2, rx2) = node_with(&[&["node", "--id", "2", "--control-port", &c2][..], &common].concat(), &tls);
    line_with(&rx1, "peers [2]");
    // `multispace node drain` against node 2: it says goodbye, so node 1 drops it at once
    // (long before the five missed beacons expiry would take), and its process exits cleanly.
    let at2 = format!("127.0.0.1:{c2}");
    let out = cli(&["node", "drain", "--node", &at2, "--grace-ms", "2000"], &certs, "admin");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("draining") && text.contains("gone after"), "{text}");
    line_with(&rx2, "drained; exiting");
    assert!(n2.0.wait().unwrap().success());
    line_with(&rx1, "peers []");
    let m = json(&cli(&["members", "--node", &format!("127.0.0.1:{c1}"), "-o", "json"], &certs, "admin"));
    assert_eq!(m.as_array().unwrap().len(), 1);
    assert!(json(&cli(&["members", "--node", &format!("127.0.0.1:{c1}"), "-o", "json"], &certs, "admin"))[0]
        ["this_node"]
        .as_bool()
        .unwrap());
    // SIGTERM drains too.
    let killed = Command::new("kill").args(["-TERM", &n1.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert!(line_with(&rx1, "drained in").contains("0 cut off"));
    assert!(n1.0.wait().unwrap().success());
}
