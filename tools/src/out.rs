//! How the command prints: tables for people, JSON for programs, colour only on a terminal
//! (never with `NO_COLOR`), quiet exit when the reader of a pipe goes away, and exit codes
//! that say what happened.

use std::io::{IsTerminal as _, Write as _};

/// Exit codes (besides 0: done, 1: other error, 2: bad usage).
pub mod exit {
    /// The key, instance or node asked for does not exist.
    pub const NOT_FOUND: i32 = 3;
    /// A compare-and-set found another value.
    pub const COMPARE_FAILED: i32 = 4;
    /// The node or table could not be reached (refused, timed out, connection lost).
    pub const UNREACHABLE: i32 = 5;
    /// The peer refused this client's certificate or principal.
    pub const DENIED: i32 = 6;
}

/// The exit-code table, for `--help`.
pub const EXIT_CODES: &str = "\
Exit codes: 0 done; 1 error; 2 bad usage; 3 not found; 4 compare failed (dht cas); \
5 node or table unreachable; 6 certificate or principal refused.";

/// `-o table|json`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document for programs.
    Json,
}

/// Whether stdout gets colour: a terminal, and `NO_COLOR` unset or empty (no-color.org).
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && no_color_unset()
}

/// Whether the logs (stderr) get colour, by the same rule.
pub fn log_colour() -> bool {
    std::io::stderr().is_terminal() && no_color_unset()
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Write to stdout. A closed pipe (`multispace svc ls | head -1`) ends the process quietly
/// with success instead of a panic; any other write error is reported.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing output: {e}");
            std::process::exit(1);
        }
    }
}

/// [`print()`] a JSON value, pretty, with a final newline.
pub fn print_json(value: &serde_json::Value) {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    print(&text);
}

/// What a cell means, for colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Bad,
    Dim,
}

/// A table with a header row; numbers right-aligned.
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<(String, Tone)>>,
}

impl Table {
    /// Columns named `header`; a name starting with `>` is right-aligned (the `>` is dropped).
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: header.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// A row with a tone per cell.
    pub fn toned_row(&mut self, cells: Vec<(String, Tone)>) {
        self.rows.push(cells);
    }

    /// The table as text; ANSI colour if `colour`.
    pub fn render(&self, colour: bool) -> String {
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate() {
                if let Some(w) = width.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<(String, Tone)> = self.header.iter().map(|h| (h.to_string(), Tone::Plain)).collect();
        for (n, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            let last = row.len().min(width.len()).saturating_sub(1);
            for (i, (cell, tone)) in row.iter().enumerate().take(width.len()) {
                let pad = width[i] - cell.chars().count();
                let (left, right) = if self.right[i] { (pad, 0) } else { (0, if i == last { 0 } else { pad }) };
                let code = match (colour, n == 0, tone) {
                    (false, _, _) => "",
                    (true, true, _) => "\x1b[1m",
                    (true, false, Tone::Good) => "\x1b[32m",
                    (true, false, Tone::Bad) => "\x1b[31m",
                    (true, false, Tone::Dim) => "\x1b[2m",
                    (true, false, Tone::Plain) => "",
                };
                let reset = if code.is_empty() { "" } else { "\x1b[0m" };
                out.push_str(&" ".repeat(left));
                out.push_str(code);
                out.push_str(cell);
                out.push_str(reset);
                out.push_str(&" ".repeat(right));
                if i != last {
                    out.push_str("  ");
                }
            }
            out.push('\n');
        }
        out
    }
}

/// The exit code an error means: a typed rpc error anywhere in its chain decides.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    use multispace_dht::client::DhtError;
    use multispace_rpc::CallError;
    for cause in e.chain() {
        if let Some(DhtError::Unavailable { .. } | DhtError::Connect(_)) = cause.downcast_ref::<DhtError>() {
            return exit::UNREACHABLE;
        }
        if let Some(call) = cause.downcast_ref::<CallError>() {
            return match call {
                CallError::PermissionDenied(_) => exit::DENIED,
                CallError::Tls(t) if t.is_rejection() => exit::DENIED,
                CallError::Tls(_) | CallError::Connect(_) | CallError::ConnectionLost | CallError::DeadlineExceeded => {
                    exit::UNREACHABLE
                }
                _ => 1,
            };
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_colour_only_when_asked() {
        let mut t = Table::new(&["NODE", ">LOAD", "STATE"]);
        t.toned_row(vec![("1".into(), Tone::Plain), ("12".into(), Tone::Plain), ("up".into(), Tone::Good)]);
        t.toned_row(vec![("10".into(), Tone::Plain), ("3".into(), Tone::Plain), ("down".into(), Tone::Bad)]);
        assert_eq!(t.render(false), "NODE  LOAD  STATE\n1       12  up\n10       3  down\n");
        let coloured = t.render(true);
        assert!(coloured.contains("\x1b[31mdown\x1b[0m") && coloured.starts_with("\x1b[1mNODE"), "{coloured:?}");
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let denied = anyhow::Error::new(multispace_rpc::CallError::PermissionDenied("no".into())).context("svc start");
        assert_eq!(exit_code(&denied), exit::DENIED);
        let gone = anyhow::Error::new(multispace_rpc::CallError::DeadlineExceeded);
        assert_eq!(exit_code(&gone), exit::UNREACHABLE);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
        let table = multispace_dht::client::DhtError::Connect("no seed answered".into());
        assert_eq!(exit_code(&anyhow::Error::new(table)), exit::UNREACHABLE);
    }
}
