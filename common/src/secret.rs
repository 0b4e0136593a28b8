//! Secrets in configs: never printed (issue #14 item 4).
//!
//! - [`Secret`] holds a password or key: its `Debug`, `Display` and
//!   `Serialize` all give `***`, so a config printed (`--check-config`, a
//!   `?cfg` in a log line, a panic message) shows no secret. Only
//!   [`Secret::expose`] gives the value, at the point it is handed to a
//!   client.
//! - [`redact_settings`] masks pass-through client settings (librdkafka's
//!   `[kafka.producer]`/`[kafka.consumer]` maps) by an **allow-list**: a
//!   value is shown only when its key is known to hold no secret
//!   ([`SAFE_SETTINGS`]); `ssl.key.pem`, `sasl.oauthbearer.config` or a key
//!   this list does not know yet are masked.
//! - [`redact_url`] masks the `user:password@` part of URLs and of
//!   comma-separated address lists.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// What a masked value is shown as.
pub const MASK: &str = "***";

/// A secret string (see the module docs).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the client that needs it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// Pass-through client settings (a TOML table of strings), read like a map;
/// `Debug` shows them through [`redact_settings`], so a printed config
/// holds no secret from them.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub BTreeMap<String, String>);

impl std::ops::Deref for Settings {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Settings {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Settings {
    /// The settings as they may be shown ([`redact_settings`]).
    pub fn redacted(&self) -> Self {
        Self(redact_settings(&self.0))
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(redact_settings(&self.0)).finish()
    }
}

/// librdkafka settings whose values are never secret: shown as they are
/// (URL credentials inside them still masked). Every other key's value is
/// masked.
pub const SAFE_SETTINGS: &[&str] = &[
    "api.version.request",
    "auto.offset.reset",
    "batch.num.messages",
    "batch.size",
    "broker.address.family",
    "client.id",
    "client.rack",
    "compression.codec",
    "compression.type",
    "debug",
    "enable.ssl.certificate.verification",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "group.instance.id",
    "heartbeat.interval.ms",
    "isolation.level",
    "linger.ms",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "message.max.bytes",
    "metadata.max.age.ms",
    "partition.assignment.strategy",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "receive.message.max.bytes",
    "reconnect.backoff.max.ms",
    "reconnect.backoff.ms",
    "retry.backoff.ms",
    "sasl.kerberos.principal",
    "sasl.kerberos.service.name",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "security.protocol",
    "session.timeout.ms",
    "socket.keepalive.enable",
    "socket.timeout.ms",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.cipher.suites",
    "ssl.endpoint.identification.algorithm",
    "ssl.key.location",
    "statistics.interval.ms",
    "topic.metadata.refresh.interval.ms",
];

/// `settings` as they may be shown: values of keys outside [`SAFE_SETTINGS`]
/// masked, URL credentials masked in the rest.
pub fn redact_settings(settings: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    settings
        .iter()
        .map(|(k, v)| {
            let shown = if SAFE_SETTINGS.contains(&k.as_str()) {
                redact_url(v)
            } else {
                MASK.to_string()
            };
            (k.clone(), shown)
        })
        .collect()
}

/// `text` with the `user:password@` (or `token@`) part of every URL, and of
/// every item of a comma-separated address list, replaced by `***@`.
pub fn redact_url(text: &str) -> String {
    text.split(',')
        .map(|item| {
            let (scheme, rest) = match item.find("://") {
                Some(i) => item.split_at(i + 3),
                None => ("", item),
            };
            // The authority ends at the first '/', '?' or '#'.
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => {
                    let lead = rest[..at].len() - rest[..at].trim_start().len();
                    format!("{scheme}{}{MASK}{}", &rest[..lead], &rest[at..])
                }
                None => item.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown() {
        #[derive(Debug, Serialize, Deserialize)]
        struct C {
            password: Secret,
        }
        let c: C = toml::from_str("password = \"hunter2\"").unwrap();
        assert_eq!(c.password.expose(), "hunter2");
        for shown in [
            format!("{c:?}"),
            format!("{}", c.password),
            toml::to_string(&c).unwrap(),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn settings_are_masked_unless_known_safe() {
        let m: BTreeMap<String, String> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "p1"),
            ("ssl.key.pem", "-----BEGIN p2"),
            ("sasl.oauthbearer.config", "secret=p3"),
            ("some.future.key", "p4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = redact_settings(&m);
        assert_eq!(r["security.protocol"], "SASL_SSL");
        for k in [
            "sasl.password",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
            "some.future.key",
        ] {
            assert_eq!(r[k], MASK, "{k}");
        }
    }

    #[test]
    fn url_credentials_are_masked() {
        assert_eq!(
            redact_url("https://elastic:pw@es.local:9200/x"),
            "https://***@es.local:9200/x"
        );
        assert_eq!(
            redact_url("u:p@k1:9092,k2:9092, tok@k3:9092"),
            "***@k1:9092,k2:9092, ***@k3:9092"
        );
        assert_eq!(redact_url("http://127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
    }
}
