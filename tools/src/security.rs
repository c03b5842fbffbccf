//! `multispace cert` (a cluster CA and certificates in one directory) and the flags every
//! command shares to choose mutual TLS (the default) or, explicitly, plain TCP.
//!
//! ```text
//! multispace cert init --dir certs --nodes 3 --clients admin   # ca.pem, node-1..3, admin
//! multispace cert issue --dir certs --name node-4 --ip 10.0.0.4
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use multispace_rpc::tls::certs::{Authority, Leaf};
use multispace_rpc::{ConnConfig, TlsConfig};

/// How a command secures its connections.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Directory made by `multispace cert init`: ca.pem, and NAME.pem + NAME.key per identity.
    #[arg(long, env = "MULTISPACE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// The identity to present from --tls-dir (default: node-ID for nodes, admin for clients).
    #[arg(long, env = "MULTISPACE_TLS_NAME")]
    pub tls_name: Option<String>,
    /// Plain TCP instead of mutual TLS: for benchmarks and loopback-only setups. Never chosen
    /// silently; every member of a cluster must agree.
    #[arg(long, env = "MULTISPACE_INSECURE_PLAIN", conflicts_with = "tls_dir")]
    pub insecure_plain: bool,
}

impl TlsArgs {
    /// The connection settings these flags ask for; `default_name` is the identity to use when
    /// --tls-name is not given.
    pub fn conn(&self, default_name: &str) -> anyhow::Result<ConnConfig> {
        if self.insecure_plain {
            return Ok(ConnConfig::default());
        }
        let Some(dir) = &self.tls_dir else {
            bail!(
                "connections are mutual TLS by default: pass --tls-dir DIR (make one with \
                 `multispace cert init --dir DIR`), or --insecure-plain for plain TCP"
            )
        };
        let name = self.tls_name.as_deref().unwrap_or(default_name);
        let tls = TlsConfig::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
        .with_context(|| format!("loading identity `{name}` from {}", dir.display()))?;
        Ok(ConnConfig { tls: Some(tls), ..ConnConfig::default() })
    }

    /// The same flags as arguments for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.insecure_plain {
            v.push("--insecure-plain".into());
        }
        if let Some(d) = &self.tls_dir {
            v.extend(["--tls-dir".into(), d.display().to_string()]);
        }
        if let Some(n) = &self.tls_name {
            v.extend(["--tls-name".into(), n.clone()]);
        }
        v
    }
}

#[derive(clap::Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CertCommand {
    /// Create a cluster CA and certificates for nodes node-1..node-N and the named clients,
    /// all in DIR (keys mode 0600). Enough for a secure local cluster.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Node certificates to issue (node-1 .. node-N).
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Client identities to issue (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        clients: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Addresses the nodes serve on besides loopback (comma-separated).
        #[arg(long, value_delimiter = ',')]
        ip: Vec<IpAddr>,
    },
    /// Issue one more certificate from the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The identity (principal), e.g. node-4 or alice.
        #[arg(long)]
        name: String,
        /// Addresses it serves on besides loopback (comma-separated).
        #[arg(long, value_delimiter = ',')]
        ip: Vec<IpAddr>,
        /// Extra DNS names (comma-separated).
        #[arg(long, value_delimiter = ',')]
        dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

fn write(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn issue(ca: &Authority, dir: &Path, leaf: &Leaf, verbose: bool) -> anyhow::Result<()> {
    let issued = ca.issue(leaf)?;
    write(&dir.join(format!("{}.pem", leaf.name)), &issued.cert_pem, false)?;
    write(&dir.join(format!("{}.key", leaf.name)), &issued.key_pem, true)?;
    if verbose {
        println!("issued {} ({}.pem, {}.key)", leaf.name, leaf.name, leaf.name);
    }
    Ok(())
}

/// Makes a CA and the usual identities in `dir` (the cluster demo uses it for a throwaway
/// cluster).
pub fn init(
    dir: &Path,
    nodes: u32,
    clients: &[String],
    days: u64,
    ips: &[IpAddr],
    verbose: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join("ca.key").exists() {
        bail!("{} already holds a CA (ca.key); use `multispace cert issue` to add identities", dir.display());
    }
    let ca = Authority::create("multispace cluster CA", days)?;
    write(&dir.join("ca.pem"), ca.cert_pem(), false)?;
    write(&dir.join("ca.key"), &ca.key_pem(), true)?;
    for i in 1..=nodes {
        let mut leaf = Leaf::new(&format!("node-{i}"), days);
        leaf.ips.extend(ips);
        issue(&ca, dir, &leaf, verbose)?;
    }
    for c in clients {
        issue(&ca, dir, &Leaf::new(c, days), verbose)?;
    }
    Ok(())
}

pub fn run(args: CertArgs) -> anyhow::Result<()> {
    match args.command {
        CertCommand::Init { dir, nodes, clients, days, ip } => {
            init(&dir, nodes, &clients, days, &ip, true)?;
            println!("CA and certificates in {}; use them with --tls-dir {}", dir.display(), dir.display());
            Ok(())
        }
        CertCommand::Issue { dir, name, ip, dns, days } => {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f)).with_context(|| format!("reading {f} in {}", dir.display()))
            };
            let ca = Authority::load(&read("ca.pem")?, &read("ca.key")?)?;
            let mut leaf = Leaf::new(&name, days);
            leaf.ips.extend(ip);
            leaf.dns = dns;
            issue(&ca, &dir, &leaf, true)
        }
    }
}
