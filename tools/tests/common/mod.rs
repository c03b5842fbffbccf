//! Shared by the process-level tests: `multispace` node processes, the CLI run as a given
//! principal, and bounded waits on their output.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_multispace");

/// A node process, killed when dropped.
pub struct NodeProc(pub Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A throwaway cluster CA with certificates for `nodes` nodes and the `clients` (comma
/// separated), made by the CLI itself.
pub fn certs(dir: &Path, nodes: u32, clients: &str) -> PathBuf {
    let certs = dir.join("certs");
    let out = Command::new(BIN)
        .args(["cert", "init", "--nodes", &nodes.to_string(), "--clients", clients, "--dir"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(out.status.success(), "cert init: {}", String::from_utf8_lossy(&out.stderr));
    certs
}

/// Starts `multispace` with `args` and `env`; its stdout and stderr (log) lines arrive on
/// the channel (read by threads, so the process never blocks on a full pipe).
pub fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> (NodeProc, Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    forward_lines(child.stdout.take().unwrap(), tx.clone());
    forward_lines(child.stderr.take().unwrap(), tx);
    (NodeProc(child), rx)
}

fn forward_lines(from: impl std::io::Read + Send + 'static, tx: std::sync::mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}

/// The first line from `rx` containing `want`, waiting at most 20 seconds.
pub fn line_with(rx: &Receiver<String>, want: &str) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(want) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with `{want}`: {e}"),
        }
    }
}

/// Node `id` over mutual TLS from `certs`, beaconing on `beacon_port`, hosting `service`,
/// its control server on `control_port`; returns once that server listens.
pub fn node(id: u64, beacon_port: u16, control_port: u16, service: &str, certs: &Path) -> (NodeProc, Receiver<String>) {
    let (id_s, beacons, control) = (id.to_string(), beacon_port.to_string(), control_port.to_string());
    let args = [
        "node",
        "--id",
        &id_s,
        "--port",
        &beacons,
        "--control-port",
        &control,
        "--beacon-ms",
        "50",
        "--service",
        service,
        "--admin",
        "127.0.0.1:0",
        "--cluster",
        "process-tests",
    ];
    let (p, rx) = spawn_with(&args, &[("MULTISPACE_TLS_DIR", certs.to_str().unwrap())]);
    line_with(&rx, &format!("node {id}: control at 127.0.0.1:{control_port}"));
    (p, rx)
}

/// The CLI as principal `name`, output captured, no colour.
pub fn cli(args: &[&str], certs: &Path, name: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MULTISPACE_TLS_DIR", certs)
        .env("MULTISPACE_TLS_NAME", name)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// A successful command's stdout as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
