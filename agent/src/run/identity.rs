//! The agent's identity: host id (`"auto"` pinned in the data dir), name,
//! address and version — what every WAL record carries (`event` docs).

use crate::config::AgentConfig;
use crate::event::Identity;
use crate::Error;
use std::path::Path;

/// The file in the data dir that pins an `"auto"` host id.
const HOST_ID_FILE: &str = "host_id";

/// The host's name and the local address towards the first etcd endpoint
/// (`None` when it cannot be found, e.g. the name does not resolve).
fn host_name_and_ip(cfg: &AgentConfig) -> (String, Option<String>) {
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let ip = cfg.etcd.endpoints.first().and_then(|e| local_ip_towards(e));
    (host_name, ip)
}

/// How `host_id = "auto"` is settled (pure): the id derived now
/// (`<hostname>-<ip>`, if the ip could be found) against the one pinned in
/// the data dir by an earlier start. The first derived id is pinned and kept:
/// a host whose address changes (DHCP) or whose DNS fails at start keeps
/// following its own etcd key instead of silently following another (empty)
/// one. `Ok((id, pin_it, warning))`.
///
/// # Errors
/// Nothing pinned and nothing derivable.
pub fn settle_auto_host_id(
    derived: Option<String>,
    pinned: Option<String>,
) -> Result<(String, bool, Option<String>), String> {
    match (derived, pinned) {
        (Some(d), Some(p)) if d == p => Ok((p, false, None)),
        (Some(d), Some(p)) => Ok((
            p.clone(),
            false,
            Some(format!(
                "host_id \"auto\" would now be `{d}`, but this agent has been `{p}` (pinned in the data dir); it stays `{p}`: set host_id explicitly to change it"
            )),
        )),
        (Some(d), None) => Ok((d, true, None)),
        (None, Some(p)) => Ok((
            p.clone(),
            false,
            Some(format!(
                "host_id \"auto\": the address towards etcd cannot be found now; using `{p}` pinned by an earlier start"
            )),
        )),
        (None, None) => Err(
            "host_id = \"auto\" cannot be derived: the address towards the first etcd endpoint cannot be found (does its name resolve?); set host_id explicitly".into(),
        ),
    }
}

/// Resolves the agent's identity: `host_id` as configured, or `"auto"`
/// settled by [`settle_auto_host_id`] against `<data_dir>/host_id`.
///
/// # Errors
/// `"auto"` cannot be derived and was never pinned, or the pin file cannot
/// be read or written.
pub fn identity(cfg: &AgentConfig) -> Result<Identity, Error> {
    let (host_name, ip) = host_name_and_ip(cfg);
    let host_id = if cfg.host_id == "auto" {
        let file = cfg.data_dir.join(HOST_ID_FILE);
        let pinned = match std::fs::read_to_string(&file) {
            Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::Io {
                    path: file,
                    source: e,
                })
            }
        };
        let derived = ip.as_ref().map(|ip| format!("{host_name}-{ip}"));
        let (id, pin, warning) = settle_auto_host_id(derived, pinned).map_err(Error::Stopped)?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        if pin {
            write_atomically(&file, id.as_bytes()).map_err(|e| Error::Io {
                path: file.clone(),
                source: e,
            })?;
        }
        id
    } else {
        cfg.host_id.clone()
    };
    Ok(Identity {
        host_id,
        host_name,
        host_ip: ip.unwrap_or_else(|| "unknown".into()),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new
/// content: a temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The local address the kernel would use to reach `endpoint` (a UDP
/// "connect" sends nothing).
fn local_ip_towards(endpoint: &str) -> Option<String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let hostport = endpoint
        .split("://")
        .last()
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let addr = hostport.to_socket_addrs().ok()?.next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_host_id_is_hostname_and_the_address_towards_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
data_dir = "{}"
[kafka]
brokers = "127.0.0.1:9092"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
"#,
            dir.path().display()
        );
        let path = Path::new("agent.toml");
        let mut cfg: AgentConfig = common::config::parse_config(path, &text, |_| None).unwrap();
        let id = identity(&cfg).unwrap();
        assert_eq!(id.host_ip, "127.0.0.1");
        assert_eq!(id.host_id, format!("{}-127.0.0.1", id.host_name));
        // Pinned: a later start whose etcd name does not resolve keeps it.
        cfg.etcd.endpoints = vec!["http://no-such-host.invalid:2379".into()];
        assert_eq!(identity(&cfg).unwrap().host_id, id.host_id);
        cfg.host_id = "web-7".into();
        assert_eq!(identity(&cfg).unwrap().host_id, "web-7");
        assert_eq!(local_ip_towards("no-such-host.invalid:2379"), None);
    }

    /// Issue #12 item 6: never a different identity silently.
    #[test]
    fn an_auto_host_id_is_pinned_and_never_falls_back_silently() {
        let s = |d: Option<&str>, p: Option<&str>| {
            settle_auto_host_id(d.map(String::from), p.map(String::from))
        };
        assert_eq!(
            s(Some("h-10.0.0.1"), None),
            Ok(("h-10.0.0.1".into(), true, None))
        );
        assert_eq!(
            s(Some("h-10.0.0.1"), Some("h-10.0.0.1")),
            Ok(("h-10.0.0.1".into(), false, None))
        );
        let (id, pin, warn) = s(Some("h-10.0.0.9"), Some("h-10.0.0.1")).unwrap();
        assert_eq!((id.as_str(), pin), ("h-10.0.0.1", false));
        assert!(warn.unwrap().contains("h-10.0.0.9"));
        let (id, _, warn) = s(None, Some("h-10.0.0.1")).unwrap();
        assert_eq!(id, "h-10.0.0.1");
        assert!(warn.is_some());
        assert!(s(None, None).unwrap_err().contains("set host_id"));
    }
}
