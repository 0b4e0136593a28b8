//! The console's query on a live event (the live tail reads Kafka, where
//! no Elasticsearch runs the query): the part of the `query_string`
//! language a log search uses, with the meaning it has there —
//!
//! - words match words of `message` (split at what is not a letter, digit
//!   or `_`, case ignored); `time*` and `t?me` are wildcards;
//! - `"a phrase"` matches consecutive words;
//! - `field:value` and `field:"a phrase"` match a field's value (exactly,
//!   or one of its words); `field:*` that the field exists;
//! - `AND` / `&&`, `OR` / `||`, `NOT` / `!`, `+term`, `-term`, parentheses;
//!   terms side by side must all match (the console's `default_operator`).
//!
//! Ranges (`[a TO b]`, `>5`), regexes, fuzzy and proximity (`~`) and boosts
//! (`^`) are refused with a message naming them ([`crate::Error::BadArgument`]),
//! so the live view never shows lines the search would not.

use crate::{Error, Result};
use serde_json::Value;

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    All,
    /// Words (one word, or a phrase) in a field (`None`: `message`).
    Words {
        field: Option<String>,
        words: Vec<String>,
    },
    Exists(String),
    Not(Box<Query>),
    And(Vec<Query>),
    Or(Vec<Query>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    And,
    Or,
    Not,
    /// A term, with its `+`/`-` and whether it was quoted.
    Term {
        sign: Option<char>,
        field: Option<String>,
        text: String,
        quoted: bool,
    },
}

fn bad(q: &str, m: impl Into<String>) -> Error {
    Error::BadArgument {
        arg: format!("query `{q}`"),
        message: m.into(),
    }
}

fn lex(q: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let cs: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                out.push(Tok::Open);
                i += 1;
                continue;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
                continue;
            }
            '&' if cs.get(i + 1) == Some(&'&') => {
                out.push(Tok::And);
                i += 2;
                continue;
            }
            '|' if cs.get(i + 1) == Some(&'|') => {
                out.push(Tok::Or);
                i += 2;
                continue;
            }
            '!' => {
                out.push(Tok::Not);
                i += 1;
                continue;
            }
            _ => {}
        }
        let sign = if matches!(c, '+' | '-') {
            i += 1;
            Some(c)
        } else {
            None
        };
        // A term: [field:] (word | "quoted")
        let mut field = None;
        let start = i;
        while i < cs.len() && !cs[i].is_whitespace() && !matches!(cs[i], '(' | ')' | '"' | ':') {
            if cs[i] == '\\' {
                i += 1;
            }
            i += 1;
        }
        if i < cs.len() && cs[i] == ':' && i > start {
            field = Some(cs[start..i].iter().collect::<String>());
            i += 1;
        } else {
            i = start;
        }
        let (text, quoted) = if cs.get(i) == Some(&'"') {
            let mut s = String::new();
            i += 1;
            loop {
                match cs.get(i) {
                    None => return Err(bad(q, "a quote is not closed")),
                    Some('"') => break,
                    Some('\\') => {
                        if let Some(n) = cs.get(i + 1) {
                            s.push(*n);
                        }
                        i += 2;
                        continue;
                    }
                    Some(c) => s.push(*c),
                }
                i += 1;
            }
            i += 1;
            if matches!(cs.get(i), Some('~')) {
                return Err(bad(
                    q,
                    "proximity (`\"…\"~N`) is not supported in the live view",
                ));
            }
            (s, true)
        } else {
            let mut s = String::new();
            while i < cs.len() && !cs[i].is_whitespace() && !matches!(cs[i], '(' | ')') {
                if cs[i] == '\\' {
                    if let Some(n) = cs.get(i + 1) {
                        s.push(*n);
                    }
                    i += 2;
                    continue;
                }
                s.push(cs[i]);
                i += 1;
            }
            if s.is_empty() {
                if field.is_some() && cs.get(i) == Some(&'(') {
                    return Err(bad(q, "field:(…) groups are not supported in the live view; write field:a OR field:b"));
                }
                return Err(bad(q, "a term is empty"));
            }
            (s, false)
        };
        if !quoted && field.is_none() && sign.is_none() {
            match text.as_str() {
                "AND" => {
                    out.push(Tok::And);
                    continue;
                }
                "OR" => {
                    out.push(Tok::Or);
                    continue;
                }
                "NOT" => {
                    out.push(Tok::Not);
                    continue;
                }
                _ => {}
            }
        }
        if !quoted {
            for (ch, what) in [
                ('[', "ranges"),
                ('{', "ranges"),
                ('>', "ranges"),
                ('<', "ranges"),
                ('/', "regular expressions"),
                ('~', "fuzzy terms"),
                ('^', "boosts"),
            ] {
                if (ch == '/' && text.starts_with('/')) || (ch != '/' && text.contains(ch)) {
                    return Err(bad(
                        q,
                        format!("{what} (`{text}`) are not supported in the live view"),
                    ));
                }
            }
        }
        out.push(Tok::Term {
            sign,
            field,
            text,
            quoted,
        });
    }
    Ok(out)
}

/// Lower-cased words of `s`: runs of letters, digits and `_`.
pub fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

struct Parser<'a> {
    q: &'a str,
    toks: Vec<Tok>,
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn or(&mut self) -> Result<Query> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.i += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Query> {
        let mut parts = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::And) => {
                    self.i += 1;
                    parts.push(self.unary()?);
                }
                Some(Tok::Or | Tok::Close) | None => break,
                Some(_) => parts.push(self.unary()?),
            }
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Query::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Query> {
        match self.peek().cloned() {
            Some(Tok::Not) => {
                self.i += 1;
                Ok(Query::Not(Box::new(self.unary()?)))
            }
            Some(Tok::Open) => {
                self.i += 1;
                let q = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(bad(self.q, "a parenthesis is not closed"));
                }
                self.i += 1;
                Ok(q)
            }
            Some(Tok::Term {
                sign,
                field,
                text,
                quoted,
            }) => {
                self.i += 1;
                let field = field.filter(|f| f != "message");
                let q = if !quoted && text == "*" {
                    match field {
                        None => Query::All,
                        Some(f) => Query::Exists(f),
                    }
                } else {
                    let words = if quoted || !text.contains(['*', '?']) {
                        words(&text)
                    } else {
                        // A wildcard stays one pattern.
                        vec![text.to_lowercase()]
                    };
                    if words.is_empty() && field.is_none() {
                        return Err(bad(self.q, format!("`{text}` has no word to look for")));
                    }
                    Query::Words {
                        field,
                        words: if words.is_empty() { vec![text] } else { words },
                    }
                };
                Ok(if sign == Some('-') {
                    Query::Not(Box::new(q))
                } else {
                    q
                })
            }
            Some(Tok::Close) => Err(bad(self.q, "a `)` has no `(`")),
            Some(Tok::And | Tok::Or) => Err(bad(self.q, "AND/OR needs a term on each side")),
            None => Err(bad(self.q, "the query ends where a term was expected")),
        }
    }
}

impl Query {
    /// Parses a console query (empty or `*`: every line).
    ///
    /// # Errors
    /// [`Error::BadArgument`] naming the query and what is wrong with it.
    pub fn parse(q: &str) -> Result<Self> {
        if q.trim().is_empty() {
            return Ok(Self::All);
        }
        let mut p = Parser {
            q,
            toks: lex(q)?,
            i: 0,
        };
        let out = p.or()?;
        if p.i != p.toks.len() {
            return Err(bad(q, "a `)` has no `(`"));
        }
        Ok(out)
    }

    /// Whether the event `source` matches.
    pub fn matches(&self, source: &Value) -> bool {
        match self {
            Self::All => true,
            Self::Not(q) => !q.matches(source),
            Self::And(qs) => qs.iter().all(|q| q.matches(source)),
            Self::Or(qs) => qs.iter().any(|q| q.matches(source)),
            Self::Exists(f) => !lookup(source, f).is_null(),
            Self::Words { field, words: w } => {
                let v = lookup(source, field.as_deref().unwrap_or("message"));
                let texts: Vec<String> = match v {
                    Value::Array(a) => a.iter().map(text_of).collect(),
                    Value::Null => return false,
                    other => vec![text_of(other)],
                };
                texts.iter().any(|t| {
                    // A keyword value equal to the whole term.
                    (w.len() == 1 && t.eq_ignore_ascii_case(&w[0])) || {
                        let have = words(t);
                        contains_run(&have, w)
                    }
                })
            }
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn lookup<'a>(source: &'a Value, field: &str) -> &'a Value {
    if let Some(v) = source.get(field) {
        return v;
    }
    let mut v = source;
    for part in field.split('.') {
        v = &v[part];
    }
    v
}

/// Whether `want` occurs as consecutive words of `have` (each word of
/// `want` may be a wildcard pattern).
fn contains_run(have: &[String], want: &[String]) -> bool {
    if want.is_empty() || want.len() > have.len() {
        return false;
    }
    have.windows(want.len())
        .any(|win| win.iter().zip(want).all(|(h, w)| wildcard(w, h)))
}

/// `*` any run, `?` one character; otherwise equality.
fn wildcard(pattern: &str, s: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return pattern == s;
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    // Iterative glob with backtracking on the last `*`.
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(msg: &str) -> Value {
        json!({"message": msg, "host": {"name": "web-1"}, "log": {"flags": ["truncated"], "file": {"path": "/var/log/app.log"}},
               "fields": {"env": "prod"}, "json": {"status": 503}})
    }

    fn m(q: &str, msg: &str) -> bool {
        Query::parse(q)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .matches(&ev(msg))
    }

    #[test]
    fn words_phrases_and_wildcards() {
        assert!(m("timeout", "GET /x: Timeout after 5s"));
        assert!(!m("time", "GET /x: Timeout after 5s"));
        assert!(m("time*", "GET /x: Timeout after 5s"));
        assert!(m("t?meout", "timeout"));
        assert!(m("\"connection reset\"", "a Connection reset by peer"));
        assert!(!m("\"reset connection\"", "a Connection reset by peer"));
        assert!(m("*", "anything"));
        assert!(m("", "anything"));
    }

    #[test]
    fn terms_side_by_side_must_all_match_and_operators_work() {
        assert!(m("error db", "error in db"));
        assert!(!m("error db", "error in cache"));
        assert!(m("error OR db", "error in cache"));
        assert!(m("error AND NOT cache", "error in db"));
        assert!(!m("error -cache", "error in cache"));
        assert!(m("(db OR cache) && error", "error in cache"));
        assert!(m("!warn", "error"));
    }

    #[test]
    fn fields() {
        assert!(m("host.name:web-1", "x"));
        assert!(!m("host.name:web-2", "x"));
        assert!(m("log.flags:truncated", "x"));
        assert!(m("fields.env:prod AND json.status:503", "x"));
        assert!(m("log.file.path:\"/var/log/app.log\"", "x"));
        assert!(m("json.status:*", "x"));
        assert!(!m("json.nothing:*", "x"));
        assert!(m("message:hello", "hello world"));
    }

    #[test]
    fn what_the_live_view_cannot_do_is_refused_by_name() {
        for (q, want) in [
            ("status:[500 TO 599]", "ranges"),
            ("status:>500", "ranges"),
            ("/err.r/", "regular expressions"),
            ("eror~", "fuzzy"),
            ("error^2", "boosts"),
            ("\"a b\"~3", "proximity"),
            ("(error", "not closed"),
            ("error)", "no `(`"),
            ("\"open", "quote"),
            ("AND x", "AND/OR"),
            ("host:(a b)", "groups"),
        ] {
            let e = Query::parse(q).unwrap_err().to_string();
            assert!(e.contains(want), "{q}: {e}");
            assert!(e.contains(q), "{q}: {e}");
        }
    }

    proptest::proptest! {
        /// Never a panic on input.
        #[test]
        fn any_text_parses_or_is_refused(q in "\\PC{0,40}") {
            if let Ok(p) = Query::parse(&q) {
                let _ = p.matches(&ev("x y z"));
            }
        }
    }
}
