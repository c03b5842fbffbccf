//! The node's admin endpoint: a small HTTP/1.1 server, on loopback unless configured
//! otherwise, for operators and scrapers.
//!
//! - `GET /metrics`: Prometheus text — rpc calls, errors by kind and latency per method (this
//!   core), calls refused before dispatch, beacons sent/accepted/rejected by reason, registry
//!   size, TLS handshakes, and the I/O driver in use with its counters (loop turns, kernel
//!   entries, sleeps, submissions, completions, cross-thread wake-ups);
//! - `GET /healthz`: `ok` while the node runs;
//! - `GET /status`: an HTML page of the cluster as this node sees it, refreshed live from
//! - `GET /status.json`: members, instances with health and load, beacon counters, and the
//!   [`Sections`] other components add (the replicated table's partitions and leaders).
//!
//! Requests are parsed and answered by [`respond`] (sans-IO, unit-tested); [`AdminServer`]
//! only moves bytes. Every connection is answered once and closed; a request that is slow,
//! oversized or malformed gets an error status and never holds the node up.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use multispace_rpc::net::TcpListener;
use multispace_rpc::runtime::time::timeout;
use multispace_rpc::runtime::JoinHandle;
use multispace_rpc::spawn;
use serde_json::json;

use crate::node::Node;

/// Largest request head accepted (request line and headers).
const MAX_REQUEST: usize = 8 << 10;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// A response with this status, content type and body.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Response {
        Response { status, content_type, body: body.into() }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// The response on the wire; for a HEAD request (`head`) without its body.
    pub fn to_bytes(&self, head: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Service Unavailable",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// What a request asks for, if the head in `buf` is complete: `Ok(None)` means read more.
pub fn parse(buf: &[u8]) -> Result<Option<(String, String)>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or_default().to_string();
            let path = req.path.unwrap_or_default();
            // The query string does not choose anything here.
            let path = path.split('?').next().unwrap_or_default().to_string();
            Ok(Some((method, path)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            Err(Response::text(431, "request head too large\n"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(Response::text(400, format!("bad request: {e}\n"))),
    }
}

/// More parts of `/status.json` (and so of the `/status` page), each a name and a function
/// giving its current value: what other components of the process add, such as the
/// replicated table's partitions and leaders (`table`). Functions run on the node's core and
/// must answer at once (serve a cached value).
#[derive(Clone, Default)]
pub struct Sections(Vec<(&'static str, SectionFn)>);

/// What answers a request: method and path in, response out.
type Route = Rc<dyn Fn(&str, &str) -> Response>;

/// What gives one section's current value.
type SectionFn = Rc<dyn Fn() -> serde_json::Value>;

impl std::fmt::Debug for Sections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

impl Sections {
    /// No extra sections.
    pub fn new() -> Sections {
        Sections::default()
    }

    /// Add the section `name` (a top-level key of `/status.json`).
    pub fn with(mut self, name: &'static str, value: impl Fn() -> serde_json::Value + 'static) -> Sections {
        self.0.push((name, Rc::new(value)));
        self
    }
}

/// The answer to `method path` from `node` (`None`: the node has stopped).
pub fn respond(method: &str, path: &str, node: Option<&Node>, started: Instant, sections: &Sections) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET\n");
    }
    let Some(node) = node else {
        return Response::text(503, "node stopped\n");
    };
    match path {
        "/healthz" => Response::text(200, "ok\n"),
        "/metrics" => Response::new(200, "text/plain; version=0.0.4; charset=utf-8", metrics(node, started)),
        "/status.json" => Response::new(200, "application/json", status_json(node, started, sections).to_string()),
        "/" | "/status" => Response::new(200, "text/html; charset=utf-8", STATUS_PAGE),
        _ => Response::text(404, "not found: try /status, /metrics, /healthz\n"),
    }
}

/// Write one metric family in the Prometheus text format: `lines` are (labels, value), the
/// labels as `k="v",...` or empty.
pub fn counter(out: &mut String, name: &str, help: &str, kind: &str, lines: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in lines {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The `/metrics` page.
pub fn metrics(node: &Node, started: Instant) -> String {
    let mut out = String::new();
    let b = node.beacon_counters();
    let members = node.members();
    let instances = node.all_instances();
    let id = node.id();
    let _ = writeln!(
        out,
        "# HELP multispace_node_info This node.\n# TYPE multispace_node_info gauge\nmultispace_node_info{{node=\"{id}\",incarnation=\"{}\",driver=\"{}\"}} 1",
        node.incarnation(),
        multispace_rpc::runtime::current_driver().map_or("none".to_string(), |k| k.to_string()),
    );
    let _ = writeln!(
        out,
        "# HELP multispace_node_uptime_seconds Time since the admin endpoint started.\n# TYPE multispace_node_uptime_seconds gauge\nmultispace_node_uptime_seconds {}",
        started.elapsed().as_secs_f64()
    );
    counter(&mut out, "multispace_beacons_sent_total", "Beacons sent.", "counter", &[(String::new(), b.sent)]);
    counter(
        &mut out,
        "multispace_beacons_accepted_total",
        "Beacons accepted.",
        "counter",
        &[(String::new(), b.accepted)],
    );
    let rejected = [
        ("replayed", b.replayed),
        ("unknown_key", b.unknown_key),
        ("bad_mac", b.bad_mac),
        ("malformed", b.malformed),
        ("stale", b.stale),
    ];
    let rejected: Vec<(String, u64)> = rejected.iter().map(|(r, n)| (format!("reason=\"{r}\""), *n)).collect();
    counter(&mut out, "multispace_beacons_rejected_total", "Beacons dropped, by reason.", "counter", &rejected);
    counter(
        &mut out,
        "multispace_nodes_goodbye_total",
        "Nodes that said goodbye.",
        "counter",
        &[(String::new(), b.goodbyes)],
    );
    counter(
        &mut out,
        "multispace_nodes_expired_total",
        "Nodes dropped as silent.",
        "counter",
        &[(String::new(), b.expired)],
    );
    counter(
        &mut out,
        "multispace_registry_nodes",
        "Nodes known, this one included.",
        "gauge",
        &[(String::new(), members.len() as u64)],
    );
    let up = instances.iter().filter(|r| r.up).count() as u64;
    let down = instances.len() as u64 - up;
    counter(
        &mut out,
        "multispace_registry_instances",
        "Service instances known in the cluster, by state.",
        "gauge",
        &[("state=\"up\"".into(), up), ("state=\"down\"".into(), down)],
    );
    counter(
        &mut out,
        "multispace_local_instances",
        "Instances this node hosts.",
        "gauge",
        &[(String::new(), node.local_instances().len() as u64)],
    );
    let s = node.stats();
    counter(
        &mut out,
        "multispace_table_pulls_total",
        "Tables pulled to catch up.",
        "counter",
        &[(String::new(), s.pulls)],
    );
    core_metrics(&mut out);
    out
}

/// The metrics of the current core that any process serving rpc has: TLS handshakes, I/O
/// driver counters, and calls per method (`/metrics` of a node, and of a table node).
pub fn core_metrics(out: &mut String) {
    let t = multispace_rpc::tls::handshake_counts();
    let tls = [
        ("side=\"client\",kind=\"full\"", t.client_full),
        ("side=\"client\",kind=\"resumed\"", t.client_resumed),
        ("side=\"server\",kind=\"full\"", t.server_full),
        ("side=\"server\",kind=\"resumed\"", t.server_resumed),
    ];
    let tls: Vec<(String, u64)> = tls.iter().map(|(l, n)| (l.to_string(), *n)).collect();
    counter(out, "multispace_tls_handshakes_total", "TLS handshakes completed on this core.", "counter", &tls);
    if let Some(d) = multispace_rpc::runtime::current_driver_stats() {
        let one = |v: u64| [(String::new(), v)];
        let rows: [(&str, &str, u64); 7] = [
            ("turns", "Event-loop turns of this core.", d.turns),
            ("enters", "Turns that entered the kernel (io_uring_enter or epoll_wait).", d.enters),
            ("sleeps", "Turns allowed to sleep in the kernel (nothing ready).", d.sleeps),
            ("submissions", "io_uring submission entries queued (0 with epoll).", d.submissions),
            ("completions", "io_uring completions or epoll events reaped.", d.completions),
            ("remote_wakes", "Wake-ups from other threads through the core's eventfd.", d.remote_wakes),
            ("direct_reads", "Datagrams read directly by busy-polling tasks.", d.direct_reads),
        ];
        for (name, help, v) in rows {
            counter(out, &format!("multispace_driver_{name}_total"), help, "counter", &one(v));
        }
    }
    let (methods, refused) = multispace_rpc::metrics::snapshot();
    multispace_rpc::metrics::render_prometheus(&methods, &refused, out);
}

/// The data of the `/status` page.
pub fn status_json(node: &Node, started: Instant, sections: &Sections) -> serde_json::Value {
    let members: Vec<serde_json::Value> = node
        .members()
        .iter()
        .map(|m| {
            json!({
                "node": m.node, "incarnation": m.incarnation, "control": m.control,
                "last_heard_ms": m.last_heard_ms, "instances": m.instances, "up": m.up,
                "key_id": m.key_id, "this_node": m.this_node,
            })
        })
        .collect();
    let instances: Vec<serde_json::Value> = node
        .all_instances()
        .iter()
        .map(|r| {
            let health = node.health(r.id);
            json!({
                "id": format!("{:#x}", r.id), "service": r.service, "node": r.id >> 32, "addr": r.addr,
                "load": r.load, "up": r.up,
                "uptime_s": health.as_ref().map(|h| h.uptime.as_secs()),
                "probes_failed": health.as_ref().map(|h| h.probes_failed),
            })
        })
        .collect();
    let b = node.beacon_counters();
    let mut status = json!({
        "node": node.id(),
        "incarnation": node.incarnation(),
        "control": node.control_addr().to_string(),
        "uptime_s": started.elapsed().as_secs(),
        "members": members,
        "instances": instances,
        "beacons": {
            "sent": b.sent, "accepted": b.accepted, "replayed": b.replayed, "unknown_key": b.unknown_key,
            "bad_mac": b.bad_mac, "malformed": b.malformed, "stale": b.stale,
            "goodbyes": b.goodbyes, "expired": b.expired,
        },
    });
    for (name, value) in &sections.0 {
        status[*name] = value();
    }
    status
}

/// The admin endpoint of one node, serving on the node's core until dropped.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    _task: JoinHandle<()>,
}

impl AdminServer {
    /// Serve `node`'s admin endpoint on `addr` (port 0: any). It holds only a weak
    /// reference: once the node stops, requests get 503.
    pub fn bind(node: &Node, addr: SocketAddr) -> std::io::Result<AdminServer> {
        Self::bind_with(node, addr, Sections::new())
    }

    /// [`AdminServer::bind`], with more sections on the status page.
    pub fn bind_with(node: &Node, addr: SocketAddr, sections: Sections) -> std::io::Result<AdminServer> {
        let (weak, started) = (node.downgrade(), Instant::now());
        Self::serve(addr, move |method, path| respond(method, path, weak.upgrade().as_ref(), started, &sections))
    }

    /// Serve other routes the same way (a table node's admin endpoint, say): `route` answers
    /// each request's method and path, on this core; requests are read and bounded as for a
    /// node's.
    pub fn serve(addr: SocketAddr, route: impl Fn(&str, &str) -> Response + 'static) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr, false)?;
        let addr = listener.local_addr()?;
        let route: Route = Rc::new(route);
        let task = spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        spawn(answer(stream, route.clone())).detach();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin endpoint: accept failed");
                        // Out of descriptors, say: let connections close before trying again.
                        multispace_rpc::runtime::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tracing::info!(%addr, "admin endpoint up");
        Ok(AdminServer { addr, _task: task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Keep serving for as long as the core runs (after the node stops, requests get 503);
    /// where it listens.
    pub fn detach(self) -> SocketAddr {
        self._task.detach();
        self.addr
    }
}

async fn answer(stream: multispace_rpc::net::TcpStream, route: Route) {
    let read = async {
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            buf.reserve(1024);
            let (res, b) = stream.recv(buf).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            match parse(&buf) {
                Ok(Some(req)) => return Some(Ok(req)),
                Ok(None) => {}
                Err(resp) => return Some(Err(resp)),
            }
        }
    };
    let (response, head) = match timeout(READ_TIMEOUT, read).await {
        Err(_) => (Response::text(408, "request took too long\n"), false),
        Ok(None) => return,
        Ok(Some(Err(resp))) => (resp, false),
        Ok(Some(Ok((method, path)))) => (route(&method, &path), method == "HEAD"),
    };
    let _ = stream.send_all(BytesMut::from(&response.to_bytes(head)[..])).await;
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// The status page: static HTML that polls `/status.json` once a second.
const STATUS_PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_fail_with_a_status() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            Some(("GET".into(), "/metrics".into()))
        );
        assert_eq!(parse(b"GET /status?x=1 HTTP/1.1\r\n\r\n").unwrap(), Some(("GET".into(), "/status".into())));
        assert_eq!(parse(b"GET /metr").unwrap(), None, "partial: read more");
        assert_eq!(parse(b"\x00\x01garbage\r\n\r\n").unwrap_err().status, 400);
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST + 10, b'a');
        assert_eq!(parse(&huge).unwrap_err().status, 431);
    }

    #[test]
    fn routes_answer_without_a_node_with_503_and_reject_other_methods() {
        let t = Instant::now();
        let none = Sections::new();
        assert_eq!(respond("POST", "/metrics", None, t, &none).status, 405);
        assert_eq!(respond("GET", "/metrics", None, t, &none).status, 503);
        let r = Response::text(200, "ok\n");
        let wire = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(String::from_utf8(r.to_bytes(true))
            .unwrap()
            .ends_with("Content-Length: 3\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"));
        assert!(
            wire.starts_with("HTTP/1.1 200 OK\r\n")
                && wire.contains("Content-Length: 3\r\n")
                && wire.ends_with("\r\n\r\nok\n")
        );
    }
}
