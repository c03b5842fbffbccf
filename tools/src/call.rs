//! `multispace call`: call any method of a running service with JSON arguments and print the
//! JSON result. The JSON conversion is generated with each interface's stubs (stubgen's
//! `Builder::json`); this file only finds the instance to call and picks the interface.
//!
//! ```text
//! multispace call calc.add '[2, 3]'
//! multispace call calc.add '{"a": 2, "b": 3}' --instance 0x100000001
//! multispace call node.members
//! multispace call Calc                 # its methods and their parameters
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use multispace_node::control;
use multispace_rpc::json::{JsonCallError, JsonMethod};
use multispace_rpc::{CallOptions, Client};
use multispace_services::{calc, keiretsu::api as keiretsu};
use serde_json::{json, Value};

use crate::ctl::{self, NodeConn};
use crate::out::{self, Format, Table, Tone};

/// Exit code for arguments that are not JSON or do not fit the method (clap's usage code).
const BAD_USAGE: i32 = 2;

#[derive(clap::Args, Debug)]
#[command(
    allow_negative_numbers = true,
    after_help = "Services: Calc, Keiretsu, and node (the asked node's own \
    control interface). Arguments: a JSON array of positional values, an object keyed by parameter name, or for \
    a method of one parameter the bare value; none for a method without parameters.\n\
    Exit codes: 0 done; 1 error (e.g. the method's own); 2 arguments not JSON or not the method's; \
    3 unknown service, method or instance; 5 unreachable; 6 certificate or principal refused."
)]
pub struct CallArgs {
    /// SERVICE.METHOD to call (any case, e.g. calc.add), or SERVICE alone to list its methods.
    target: String,
    /// The arguments as JSON, e.g. '[2, 3]' or '{"a": 2, "b": 3}'.
    args: Option<String>,
    /// Call this instance (decimal or 0x hex, as `svc ls` shows it) instead of any up one.
    #[arg(long, value_parser = ctl::parse_id, conflicts_with = "addr")]
    instance: Option<u64>,
    /// Call the instance serving at this address, without asking the node.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Results are always JSON; for a method listing, `table` (the default there) or `json`.
    #[arg(short = 'o', long = "output", value_enum)]
    output: Option<Format>,
    #[command(flatten)]
    conn: NodeConn,
    #[command(flatten)]
    pub trace: ctl::TraceArg,
}

/// The interfaces this tool was built with (each with generated JSON access).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interface {
    Calc,
    Keiretsu,
    /// The node control interface, at the node's control address.
    Node,
}

impl Interface {
    const ALL: [Interface; 3] = [Interface::Calc, Interface::Keiretsu, Interface::Node];

    /// The name to call it by (the service name; `node` for the control interface).
    fn name(self) -> &'static str {
        match self {
            Interface::Calc => calc::SERVICE,
            Interface::Keiretsu => keiretsu::SERVICE,
            Interface::Node => "node",
        }
    }

    fn by_name(name: &str) -> Option<Interface> {
        Interface::ALL.into_iter().find(|i| {
            i.name().eq_ignore_ascii_case(name)
                || (*i == Interface::Node && name.eq_ignore_ascii_case(control::SERVICE))
        })
    }

    fn methods(self) -> &'static [JsonMethod] {
        match self {
            Interface::Calc => calc::json_methods(),
            Interface::Keiretsu => keiretsu::json_methods(),
            Interface::Node => control::json_methods(),
        }
    }

    async fn call(self, client: &Client, method: &str, args: Value, opts: CallOptions) -> Result<Value, JsonCallError> {
        match self {
            Interface::Calc => calc::call_json(client, method, args, opts).await,
            Interface::Keiretsu => keiretsu::call_json(client, method, args, opts).await,
            Interface::Node => control::call_json(client, method, args, opts).await,
        }
    }
}

fn known() -> String {
    Interface::ALL.map(Interface::name).join(", ")
}

/// The method listing: people get a table, programs JSON.
fn listing(iface: Interface, format: Format) {
    let methods = iface.methods();
    match format {
        Format::Json => out::print_json(&json!(methods
            .iter()
            .map(|m| json!({
                "name": m.name,
                "params": m.params.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
                "returns": m.returns,
                "one_way": m.one_way,
                "doc": m.doc,
            }))
            .collect::<Vec<_>>())),
        Format::Table => {
            let mut t = Table::new(&["METHOD", "RETURNS", "DOC"]);
            for m in methods {
                let params: Vec<String> = m.params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
                let returns =
                    if m.one_way { ("one-way".to_owned(), Tone::Dim) } else { (m.returns.to_owned(), Tone::Plain) };
                t.toned_row(vec![
                    (format!("{}.{}({})", iface.name(), m.name, params.join(", ")), Tone::Plain),
                    returns,
                    (m.doc.to_owned(), Tone::Dim),
                ]);
            }
            out::print(&t.render(out::colour()));
        }
    }
}

/// Where to call: the instance's address and how to name it in messages.
async fn target(args: &CallArgs, iface: Interface) -> anyhow::Result<(SocketAddr, String)> {
    let conn = &args.conn;
    if let Some(addr) = args.addr {
        return Ok((addr, format!("{} at {addr}", iface.name())));
    }
    if iface == Interface::Node {
        if args.instance.is_some() {
            eprintln!("error: --instance names a service instance; the node interface is at --node (or --addr)");
            std::process::exit(BAD_USAGE);
        }
        return Ok((conn.node, format!("node {}", conn.node)));
    }
    let service = iface.name();
    let chosen = match args.instance {
        Some(id) => {
            // Any state: the operator asked for this one.
            let all = ctl::bounded(conn, "listing instances", ctl::control(conn.node).instances()).await?;
            let all: Vec<control::InstanceRecord> = all.to_owned()?;
            match all.into_iter().find(|r| r.id == id) {
                Some(r) if r.service == service => r,
                Some(r) => {
                    eprintln!("error: instance {id:#x} is a {} instance, not {service}", r.service);
                    std::process::exit(out::exit::NOT_FOUND);
                }
                None => {
                    eprintln!("error: no instance {id:#x} in the cluster (see `multispace svc ls`)");
                    std::process::exit(out::exit::NOT_FOUND);
                }
            }
        }
        None => {
            let up =
                ctl::bounded(conn, &format!("looking up {service}"), ctl::control(conn.node).lookup(service.into()))
                    .await?;
            let up: Vec<control::InstanceRecord> = up.to_owned()?;
            // The least loaded; `lookup` answers only instances that are up.
            match up.into_iter().filter(|r| r.up).min_by_key(|r| (r.load, r.id)) {
                Some(r) => r,
                None => {
                    eprintln!(
                        "error: no {service} instance is up in the cluster (start one: `multispace svc start {}`)",
                        service.to_lowercase()
                    );
                    std::process::exit(out::exit::NOT_FOUND);
                }
            }
        }
    };
    let addr = chosen.addr.parse().with_context(|| format!("instance {:#x}'s address `{}`", chosen.id, chosen.addr))?;
    Ok((addr, format!("{service} instance {:#x} at {addr}", chosen.id)))
}

pub fn run(args: CallArgs) -> anyhow::Result<()> {
    let (service, method) = match args.target.split_once('.') {
        Some((s, m)) => (s, Some(m)),
        None => (args.target.as_str(), None),
    };
    let Some(iface) = Interface::by_name(service) else {
        eprintln!("error: unknown service `{service}` (known: {})", known());
        std::process::exit(out::exit::NOT_FOUND);
    };
    let Some(method) = method else {
        listing(iface, args.output.unwrap_or(Format::Table));
        return Ok(());
    };
    // Check what can be checked before asking anyone: the method, then the JSON.
    if multispace_rpc::json::find(iface.methods(), method).is_none() {
        eprintln!("error: {}", multispace_rpc::json::unknown_method(iface.name(), method, iface.methods()));
        std::process::exit(out::exit::NOT_FOUND);
    }
    let json_args: Value = match args.args.as_deref().map(str::trim) {
        None | Some("") => Value::Null,
        Some(text) => match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: the arguments are not JSON ({e}): {text}");
                std::process::exit(BAD_USAGE);
            }
        },
    };
    let opts = CallOptions::timeout(Duration::from_millis(args.conn.timeout_ms));
    ctl::runtime(&args.conn)?.block_on(async {
        let (addr, what) = target(&args, iface).await?;
        match iface.call(&Client::new(addr), method, json_args, opts).await {
            Ok(result) => {
                out::print_json(&result);
                Ok(())
            }
            Err(e @ (JsonCallError::BadArguments { .. } | JsonCallError::UnknownMethod { .. })) => {
                eprintln!("error: {e}");
                let code =
                    if matches!(e, JsonCallError::BadArguments { .. }) { BAD_USAGE } else { out::exit::NOT_FOUND };
                std::process::exit(code);
            }
            // The rpc error stays in the chain, so the exit code says unreachable or denied.
            Err(e) => Err(anyhow::Error::new(e)).with_context(|| format!("calling {what}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_found_in_any_case_and_list_generated_methods() {
        assert_eq!(Interface::by_name("calc"), Some(Interface::Calc));
        assert_eq!(Interface::by_name("KEIRETSU"), Some(Interface::Keiretsu));
        assert_eq!(Interface::by_name("node"), Some(Interface::Node));
        assert_eq!(Interface::by_name("NodeControl"), Some(Interface::Node));
        assert_eq!(Interface::by_name("jukebox"), None);
        let add = Interface::Calc.methods().iter().find(|m| m.name == "add").unwrap();
        assert_eq!(add.signature(), "add(a: i64, b: i64) -> i64");
        assert!(Interface::Node.methods().iter().any(|m| m.name == "lookup"));
        assert_eq!(known(), "Calc, Keiretsu, node");
    }
}
