//! Loading a TOML config file: strict parsing (unknown keys are errors that
//! name the key), then `${VAR}` / `${VAR:-default}` interpolation from the
//! environment inside string values.
//!
//! Interpolation happens after TOML parsing, on string values only: comments
//! are left alone and an environment value can never inject TOML syntax.
//! `$${` stands for a literal `${`. A variable that is unset and has no default
//! is an error naming the variable and the key, so a typo never silently
//! becomes an empty value.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: `{key}`: environment variable `{var}` is not set (write ${{{var}:-default}} to give a default)")]
    MissingEnv {
        path: PathBuf,
        key: String,
        var: String,
    },
    #[error("{path}: `{key}`: unterminated `${{` (expected `${{NAME}}` or `${{NAME:-default}}`)")]
    Unterminated { path: PathBuf, key: String },
    #[error("{path}: invalid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Whether `name` is a legal Kafka topic name (1–249 of `[a-zA-Z0-9._-]`,
/// not `.` or `..`).
pub fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a Kafka `bootstrap.servers` list: comma-separated `host:port`,
/// optionally `protocol://host:port` (plaintext, ssl, sasl_plaintext,
/// sasl_ssl), an IPv6 host in brackets. The error names the entry at fault.
///
/// # Errors
/// What is wrong with the first bad entry.
pub fn check_brokers(list: &str) -> Result<(), String> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.iter().all(|e| e.is_empty()) {
        return Err("must list at least one host:port".into());
    }
    for e in entries {
        let rest = match e.split_once("://") {
            Some((proto, rest)) => {
                let p = proto.to_ascii_lowercase();
                if !matches!(
                    p.as_str(),
                    "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
                ) {
                    return Err(format!(
                        "`{e}`: unknown protocol `{proto}` (plaintext, ssl, sasl_plaintext, sasl_ssl)"
                    ));
                }
                rest
            }
            None => e,
        };
        check_host_port(rest).map_err(|m| format!("`{e}`: {m}"))?;
    }
    Ok(())
}

/// Checks an endpoint URL: `http://` or `https://`, a host and a port.
///
/// # Errors
/// What is wrong with it.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "`{url}` is not a URL (expected http://host:port or https://host:port)"
        ));
    };
    if !matches!(scheme, "http" | "https") {
        return Err(format!("`{url}`: scheme `{scheme}` is not http or https"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    check_host_port(host_port).map_err(|m| format!("`{url}`: {m}"))
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed `[` in an IPv6 address".to_string())?;
        (
            h,
            p.strip_prefix(':')
                .ok_or("expected `:port` after the address")?,
        )
    } else {
        s.rsplit_once(':').ok_or("expected host:port")?
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(format!("`{host}` is not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{port}` is not a port (1-65535)")),
    }
}

/// Why interpolating one string failed (pure helper).
#[derive(Debug, PartialEq, Eq)]
pub enum InterpolateError {
    MissingEnv { var: String },
    Unterminated,
}

/// Replaces `${NAME}` and `${NAME:-default}` using `lookup`.
///
/// # Errors
/// A variable that `lookup` does not know and that has no default, or a `${`
/// without its closing brace.
pub fn interpolate(
    text: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(InterpolateError::Unterminated);
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(InterpolateError::MissingEnv {
                    var: name.to_string(),
                })
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Interpolates every string inside `value`; on failure returns the dotted key.
fn interpolate_value(
    value: &mut toml::Value,
    key: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), (String, InterpolateError)> {
    match value {
        toml::Value::String(s) => {
            *s = interpolate(s, lookup).map_err(|e| (key.to_string(), e))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{key}[{i}]"), lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                interpolate_value(v, &sub, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses config text (already read from `path`) into `T`.
///
/// # Errors
/// See [`ConfigError`]; every variant names the file, and all but syntax
/// errors (which give the line) name the key.
pub fn parse_config<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let mut value: toml::Value = toml::from_str::<toml::Table>(text)
        .map(toml::Value::Table)
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    interpolate_value(&mut value, "", &lookup).map_err(|(key, e)| match e {
        InterpolateError::MissingEnv { var } => ConfigError::MissingEnv {
            path: path.to_path_buf(),
            key,
            var,
        },
        InterpolateError::Unterminated => ConfigError::Unterminated {
            path: path.to_path_buf(),
            key,
        },
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid {
            path: path.to_path_buf(),
            key: if key == "." {
                "(top level)".into()
            } else {
                key
            },
            message: first_line(&e.into_inner().to_string()),
        }
    })
}

/// serde's TOML errors append "in `table`" lines; the key path already says it.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_string()
}

/// Reads and parses the config file at `path`, interpolating from the process
/// environment.
///
/// # Errors
/// See [`ConfigError`].
pub fn load_config<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_config(path, &text, |k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_lists_are_checked_entry_by_entry() {
        for ok in [
            "127.0.0.1:9092",
            "k1:9092, k2:9093",
            "SSL://kafka.example:9093",
            "[::1]:9092",
        ] {
            assert_eq!(check_brokers(ok), Ok(()), "{ok}");
        }
        for bad in [
            "::not a broker::",
            "",
            "kafka",
            "kafka:0",
            "kafka:x",
            "ftp://k:1",
            "k:9092,bad host:1",
        ] {
            assert!(check_brokers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_urls_need_http_and_a_port() {
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd.example:2379",
            "http://u:p@h:1/x",
        ] {
            assert_eq!(check_endpoint_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://127.0.0.1:2379",
            "127.0.0.1:2379",
            "http://",
            "http://h",
            "http://h:99999",
        ] {
            assert!(check_endpoint_url(bad).is_err(), "{bad}");
        }
    }
    use serde::Deserialize;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOST" => Some("web-1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        assert_eq!(
            interpolate("a=${HOST} b=${NOPE:-x} c=${EMPTY}", &env).unwrap(),
            "a=web-1 b=x c="
        );
    }

    #[test]
    fn escapes_and_plain_dollars_are_kept() {
        assert_eq!(
            interpolate("p=$$${HOST} q=$5", &env).unwrap(),
            "p=$${HOST} q=$5"
        );
        assert_eq!(interpolate("$${HOST}", &env).unwrap(), "${HOST}");
    }

    #[test]
    fn missing_variable_names_it_and_its_key() {
        let err = parse_config::<toml::Table>(
            Path::new("x.toml"),
            "# ${NOT_IN_COMMENTS}\na = 1\n[t]\nlist = [\"ok\", \"${NOPE}\"]\n",
            env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`t.list[1]`") && err.contains("`NOPE`"),
            "{err}"
        );
        assert_eq!(
            interpolate("z=${HOST", &env),
            Err(InterpolateError::Unterminated)
        );
    }

    #[test]
    fn environment_values_cannot_inject_toml() {
        let t: toml::Table = parse_config(Path::new("x.toml"), "a = \"${EVIL}\"\n", |_| {
            Some("x\"\nb = \"y".into())
        })
        .unwrap();
        assert_eq!(t["a"].as_str(), Some("x\"\nb = \"y"));
        assert!(t.get("b").is_none());
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse_config::<Sample>(
            Path::new("x.toml"),
            "name = 'a'\n[inner]\nport = 1\nprot = 2\n",
            env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x.toml"), "{err}");
        assert!(err.contains("`inner.prot`"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn interpolation_never_panics(s in ".*") {
            let _ = interpolate(&s, &env);
        }

        #[test]
        fn text_without_dollar_is_unchanged(s in "[^$]*") {
            proptest::prop_assert_eq!(interpolate(&s, &env).unwrap(), s);
        }
    }
}
