//! Who is asking: a session (cookie, after `POST /api/login` with a
//! configured user's password), a bearer token, or — when no user or
//! token is configured, which the config allows on loopback only — the
//! local user with the admin role.
//!
//! Writes (every method but GET/HEAD) need the admin role and, for cookie
//! sessions and the local user, the session's CSRF token in
//! `X-CSRF-Token` (a page of another origin can neither read it nor set
//! that header without a CORS preflight, which this server never allows).
//! Sessions expire `session_ttl_secs` after login.

use crate::config::{ConsoleConfig, Role};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use rand::Rng;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const COOKIE: &str = "logconsole_session";
/// The most sessions kept (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// An authenticated caller.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// `None` for bearer tokens (no cookie, so no CSRF to guard against).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

struct Session {
    principal: Principal,
    expires: Instant,
}

pub struct Auth {
    required: bool,
    users: Vec<crate::config::User>,
    tokens: Vec<crate::config::Token>,
    ttl: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    /// The local user's CSRF token (no auth configured).
    local_csrf: String,
}

/// 32 random bytes in hex.
pub fn random_token() -> String {
    let b: [u8; 32] = rand::rng().random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 401: log in first.
    Unauthenticated,
    /// 403: the role does not allow it.
    Forbidden,
    /// 403: a write without the session's CSRF token.
    Csrf,
}

impl Auth {
    pub fn new(cfg: &ConsoleConfig) -> Self {
        Self {
            required: cfg.auth_required(),
            users: cfg.console.users.clone(),
            tokens: cfg.console.tokens.clone(),
            ttl: Duration::from_secs(cfg.console.session_ttl_secs),
            sessions: Mutex::new(HashMap::new()),
            local_csrf: random_token(),
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The caller of a request with these headers.
    pub fn principal(&self, cookie: Option<&str>, bearer: Option<&str>) -> Option<Principal> {
        if !self.required {
            return Some(Principal {
                name: "local".into(),
                role: Role::Admin,
                csrf: Some(self.local_csrf.clone()),
            });
        }
        if let Some(b) = bearer {
            return self
                .tokens
                .iter()
                .find(|t| bool::from(t.token.expose().as_bytes().ct_eq(b.as_bytes())))
                .map(|t| Principal {
                    name: t.name.clone(),
                    role: t.role,
                    csrf: None,
                });
        }
        let id = cookie?;
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.get(id) {
            Some(sess) if sess.expires > now => Some(sess.principal.clone()),
            Some(_) => {
                s.remove(id);
                None
            }
            None => None,
        }
    }

    /// Checks a request: `write` for methods that change something,
    /// `csrf` the `X-CSRF-Token` header.
    ///
    /// # Errors
    /// Why it is refused.
    pub fn check(
        &self,
        who: Option<&Principal>,
        write: bool,
        csrf: Option<&str>,
    ) -> Result<(), Denied> {
        let who = who.ok_or(Denied::Unauthenticated)?;
        if !write {
            return Ok(());
        }
        if who.role < Role::Admin {
            return Err(Denied::Forbidden);
        }
        match (&who.csrf, csrf) {
            (None, _) => Ok(()),
            (Some(want), Some(got)) if bool::from(want.as_bytes().ct_eq(got.as_bytes())) => Ok(()),
            _ => Err(Denied::Csrf),
        }
    }

    /// A new session for `name` if `password` is theirs.
    pub fn login(&self, name: &str, password: &str) -> Option<(String, Principal)> {
        let user = self.users.iter().find(|u| u.name == name)?;
        let hash = PasswordHash::new(&user.password_hash).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        let principal = Principal {
            name: user.name.clone(),
            role: user.role,
            csrf: Some(random_token()),
        };
        let id = random_token();
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        s.retain(|_, v| v.expires > now);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.expires)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(
            id.clone(),
            Session {
                principal: principal.clone(),
                expires: now + self.ttl,
            },
        );
        Some((id, principal))
    }

    pub fn logout(&self, cookie: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cookie);
    }
}

/// A PHC (argon2id) hash of `password` for `console.users[].password_hash`.
///
/// # Errors
/// Hashing failed (argon2's message).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let hash = hash_password("s3cret").unwrap();
        let text = format!(
            "[console]\nsession_ttl_secs = 1\n[[console.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\nrole = \"admin\"\n[[console.users]]\nname = \"vic\"\npassword_hash = \"{hash}\"\nrole = \"viewer\"\n[[console.tokens]]\nname = \"ci\"\ntoken = \"tok-0123456789abcdef\"\nrole = \"viewer\"\n"
        );
        Auth::new(&ConsoleConfig::parse(&text, None).unwrap())
    }

    #[test]
    fn sessions_roles_csrf_and_expiry() {
        let a = auth();
        assert!(a.login("ann", "wrong").is_none());
        assert!(a.login("nobody", "s3cret").is_none());
        let (id, p) = a.login("ann", "s3cret").unwrap();
        let who = a.principal(Some(&id), None).unwrap();
        assert_eq!(who.role, Role::Admin);
        assert_eq!(a.check(Some(&who), false, None), Ok(()));
        assert_eq!(a.check(Some(&who), true, None), Err(Denied::Csrf));
        assert_eq!(a.check(Some(&who), true, Some("x")), Err(Denied::Csrf));
        assert_eq!(a.check(Some(&who), true, p.csrf.as_deref()), Ok(()));
        let (vid, vp) = a.login("vic", "s3cret").unwrap();
        let viewer = a.principal(Some(&vid), None).unwrap();
        assert_eq!(
            a.check(Some(&viewer), true, vp.csrf.as_deref()),
            Err(Denied::Forbidden)
        );
        assert_eq!(a.check(None, false, None), Err(Denied::Unauthenticated));
        let t = a.principal(None, Some("tok-0123456789abcdef")).unwrap();
        assert_eq!(t.role, Role::Viewer);
        assert!(a.principal(None, Some("tok-wrong")).is_none());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(a.principal(Some(&id), None).is_none(), "expired");
        a.logout(&vid);
        assert!(a.principal(Some(&vid), None).is_none());
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(
            cookie_value("a=1; logconsole_session=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("a=1", COOKIE), None);
    }
}
