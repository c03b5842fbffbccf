//! The operator commands against real node processes on loopback, over mutual TLS as
//! deployed: `members` and `svc ls` in both output formats, `svc start` on another node,
//! `svc stop` wherever the instance lives, and the exit codes for a missing instance, an
//! unreachable node and a refused certificate; and output into a closed pipe ends quietly.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_multispace");

/// A node process, killed when dropped.
struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let out = Command::new(BIN)
        .args(["cert", "init", "--nodes", "2", "--clients", "admin,mallory", "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "cert init: {}", String::from_utf8_lossy(&out.stderr));
    certs
}

/// Starts node `id` and returns it with its control address (from the line it prints).
fn node(id: u64, beacon_port: u16, control_port: u16, certs: &Path) -> NodeProc {
    let child = Command::new(BIN)
        .args(["node", "--id", &id.to_string(), "--port", &beacon_port.to_string()])
        .args(["--control-port", &control_port.to_string(), "--beacon-ms", "50", "--service", "keiretsu"])
        .args(["--admin", "127.0.0.1:0"])
        .args(["--cluster", "ctl-test", "--tls-dir"])
        .arg(certs)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = NodeProc(child);
    // Wait for the control server line (the process prints it once it listens).
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let want = format!("node {id}: control at 127.0.0.1:{control_port}");
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with(&want) => break,
            Some(Ok(_)) => {}
            other => panic!("node {id} ended before serving: {other:?}"),
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn cli(args: &[&str], certs: &Path, name: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MULTISPACE_TLS_DIR", certs)
        .env("MULTISPACE_TLS_NAME", name)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

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
    let certs = certs(dir.path());
    let beacons = free_port();
    let (c1, c2) = (free_port(), free_port());
    let _n1 = node(1, beacons, c1, &certs);
    let _n2 = node(2, beacons, c2, &certs);
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
