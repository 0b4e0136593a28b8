//! logconsole's config: the control library's `[etcd]`, `[kafka]` and
//! `[elasticsearch]` (as logctl reads them, `${ENV}` included) and
//! `[console]`:
//!
//! ```toml
//! [console]
//! listen = "127.0.0.1:8480"   # any other address needs users or tokens
//! group = "logtransfer"       # the transfer group whose lag is shown
//! session_ttl_secs = 43200
//! [[console.users]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$…"   # logconsole hash-password
//! role = "admin"                       # or "viewer"
//! [[console.tokens]]
//! name = "grafana"
//! token = "${CONSOLE_TOKEN}"           # sent as `Authorization: Bearer …`
//! role = "viewer"
//! ```

use common::ConfigError;
use control::config::{ControlConfig, EsConfig, EtcdConfig, KafkaConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What a user or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Search, context, live tail, fleet, read collect entries.
    Viewer,
    /// Also write collect entries (edit, roll back).
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// A PHC string (`$argon2id$…`), as `logconsole hash-password` prints.
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub token: common::Secret,
    pub role: Role,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    pub listen: String,
    pub group: String,
    pub session_ttl_secs: u64,
    pub users: Vec<User>,
    pub tokens: Vec<Token>,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8480".into(),
            group: control::lag::DEFAULT_GROUP.into(),
            session_ttl_secs: 12 * 3600,
            users: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    etcd: EtcdConfig,
    kafka: KafkaConfig,
    elasticsearch: EsConfig,
    console: ConsoleSection,
}

/// The whole config, checked.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub control: ControlConfig,
    pub console: ConsoleSection,
    pub listen: SocketAddr,
}

impl ConsoleConfig {
    /// The file's config (or, without one, the control library's defaults
    /// and environment), with `listen` replacing `console.listen` if given.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or a value is unusable (named):
    /// a non-loopback `listen` without users or tokens, a bad password
    /// hash, an empty or short token, a name given twice.
    pub fn load(path: Option<&Path>, listen: Option<&str>) -> Result<Self, ConfigError> {
        let (file, at) = match path {
            Some(p) => (common::load_config::<File>(p)?, p.to_path_buf()),
            None => {
                let c = ControlConfig::from_env(|k| std::env::var(k).ok());
                (
                    File {
                        etcd: c.etcd,
                        kafka: c.kafka,
                        elasticsearch: c.elasticsearch,
                        console: ConsoleSection::default(),
                    },
                    PathBuf::from("(defaults)"),
                )
            }
        };
        Self::from_file(file, &at, listen)
    }

    /// Parses and checks `text` (tests).
    ///
    /// # Errors
    /// As [`ConsoleConfig::load`].
    pub fn parse(text: &str, listen: Option<&str>) -> Result<Self, ConfigError> {
        let at = Path::new("logconsole.toml");
        let file: File = common::config::parse_config(at, text, |_| None)?;
        Self::from_file(file, at, listen)
    }

    fn from_file(mut file: File, at: &Path, listen: Option<&str>) -> Result<Self, ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: at.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let control = ControlConfig {
            etcd: file.etcd,
            kafka: file.kafka,
            elasticsearch: file.elasticsearch,
        };
        control.validate(at)?;
        if let Some(l) = listen {
            file.console.listen = l.to_string();
        }
        let c = &file.console;
        let addr: SocketAddr = c.listen.parse().map_err(|e| {
            bad(
                "console.listen",
                format!(
                    "`{}`: {e} (expected IP:PORT such as 127.0.0.1:8480)",
                    c.listen
                ),
            )
        })?;
        if !addr.ip().is_loopback() && c.users.is_empty() && c.tokens.is_empty() {
            return Err(bad(
                "console.listen",
                format!(
                    "{addr} is not a loopback address: configure console.users or console.tokens so that only they can read the logs"
                ),
            ));
        }
        if c.session_ttl_secs == 0 {
            return Err(bad("console.session_ttl_secs", "must be above 0".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in c.users.iter().enumerate() {
            if u.name.is_empty() || !names.insert(u.name.clone()) {
                return Err(bad(
                    &format!("console.users[{i}].name"),
                    format!("`{}` is empty or given twice", u.name),
                ));
            }
            argon2::PasswordHash::new(&u.password_hash).map_err(|e| {
                bad(
                    &format!("console.users[{i}].password_hash"),
                    format!("not a PHC hash ({e}); make one with `logconsole hash-password`"),
                )
            })?;
        }
        for (i, t) in c.tokens.iter().enumerate() {
            if t.token.expose().len() < 16 {
                return Err(bad(
                    &format!("console.tokens[{i}].token"),
                    "must be at least 16 characters".into(),
                ));
            }
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(bad(
                    &format!("console.tokens[{i}].name"),
                    format!(
                        "`{}` is empty or given twice (users and tokens share names)",
                        t.name
                    ),
                ));
            }
        }
        Ok(Self {
            control,
            console: file.console,
            listen: addr,
        })
    }

    /// Whether requests must be authenticated.
    pub fn auth_required(&self) -> bool {
        !self.console.users.is_empty() || !self.console.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_open_elsewhere_auth_is_required() {
        let c = ConsoleConfig::parse("", None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8480");
        assert!(!c.auth_required());
        let e = ConsoleConfig::parse("", Some("0.0.0.0:8480"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("console.listen") && e.contains("loopback"),
            "{e}"
        );
        let with_token =
            "[[console.tokens]]\nname = \"t\"\ntoken = \"0123456789abcdef0\"\nrole = \"viewer\"\n";
        let c = ConsoleConfig::parse(with_token, Some("0.0.0.0:8480")).unwrap();
        assert!(c.auth_required());
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("[console]\nlisten = \"nope\"\n", "console.listen"),
            (
                "[[console.users]]\nname = \"a\"\npassword_hash = \"plain\"\nrole = \"admin\"\n",
                "console.users[0].password_hash",
            ),
            (
                "[[console.tokens]]\nname = \"a\"\ntoken = \"short\"\nrole = \"admin\"\n",
                "console.tokens[0].token",
            ),
            (
                "[console]\nsession_ttl_secs = 0\n",
                "console.session_ttl_secs",
            ),
            ("[console]\nrole = 1\n", "role"),
        ] {
            let e = ConsoleConfig::parse(text, None).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
