//! The Redis sink (issue #20): each route names a key, a stream (`XADD`,
//! trimmed to about `maxlen` entries when set) or a list (`RPUSH`).
//!
//! ```text
//! <key>                  stream entries {kafka: "<topic>/<partition>/<offset>", doc: <JSON>}, or list items <JSON>
//! <key>:offsets          hash "<topic>/<partition>" -> the last offset written
//! <key>:deadletter       the same, for dead letters (Redis refuses no entry;
//! <key>:deadletter:offsets   a dead letter only comes from a refusal upstream)
//! ```
//!
//! A batch is one Lua script: for each document, in order, it skips an
//! offset at or below the partition's last written one (a replay after a
//! crash), else appends it and moves the last offset on — the appends and
//! the offsets change together, atomically (what a MULTI/EXEC would give,
//! with the check inside it). With `appendfsync always` (the stack's
//! setting; set it on production servers too) the reply comes after the
//! append-only file is synced, so the offsets are committed only once the
//! entries are durable. A failure (server down, connection lost, no answer
//! in 30 s, no connection in 10 s) fails the batch as a whole; the pipeline
//! retries it with backoff until it goes through. Keys of one route hash to one slot only on a single server
//! (no Redis Cluster).

use crate::bulk::Outcome;
use crate::doc::Doc;
use crate::Error;
use common::secret::redact_url as redact;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

/// What a route's key holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    #[default]
    Stream,
    List,
}

const SCRIPT: &str = r"
-- KEYS[1] the stream or list, KEYS[2] its hash of last offsets.
-- ARGV[1] 'stream' or 'list', ARGV[2] maxlen (0: no trimming), then per
-- document: '<topic>/<partition>', offset, the document.
local kind, maxlen = ARGV[1], tonumber(ARGV[2])
local last, written = {}, 0
for i = 3, #ARGV, 3 do
  local field, off, doc = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local l = last[field]
  if l == nil then l = tonumber(redis.call('HGET', KEYS[2], field) or '-1') end
  if off > l then
    local at = field .. '/' .. ARGV[i + 1]
    if kind == 'list' then
      redis.call('RPUSH', KEYS[1], doc)
    elseif maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'kafka', at, 'doc', doc)
    else
      redis.call('XADD', KEYS[1], '*', 'kafka', at, 'doc', doc)
    end
    l = off
    written = written + 1
  end
  last[field] = l
end
for field, l in pairs(last) do redis.call('HSET', KEYS[2], field, l) end
return written
";

/// One route's key on one server.
pub struct RedisSink {
    client: redis::Client,
    conn: OnceCell<redis::aio::ConnectionManager>,
    key: String,
    kind: DataType,
    maxlen: u64,
    script: redis::Script,
}

impl RedisSink {
    /// Nothing connects until the first write.
    ///
    /// # Errors
    /// The URL does not parse, or the key is empty.
    pub fn new(url: &str, key: &str, kind: DataType, maxlen: u64) -> Result<Self, Error> {
        if key.is_empty() {
            return Err(Error::Setup("a Redis route needs a key".into()));
        }
        let client = redis::Client::open(url)
            .map_err(|e| Error::Setup(format!("redis.url: {}", redact(&e.to_string()))))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            key: key.to_string(),
            kind,
            maxlen,
            script: redis::Script::new(SCRIPT),
        })
    }

    fn failed(&self, e: &redis::RedisError) -> Error {
        Error::Sink(format!("redis {}: {}", self.key, redact(&e.to_string())))
    }

    async fn append(&self, docs: &[&Doc], key: &str) -> Result<(), Error> {
        if docs.is_empty() {
            return Ok(());
        }
        let conn = self
            .conn
            .get_or_try_init(|| {
                // Bounded: a server that is down fails the write within
                // seconds (the pipeline retries it), it does not hang.
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(std::time::Duration::from_secs(10))
                    .set_response_timeout(std::time::Duration::from_secs(30))
                    .set_max_delay(2000);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .map_err(|e| self.failed(&e))?;
        let mut inv = self.script.key(key);
        inv.key(format!("{key}:offsets"))
            .arg(match self.kind {
                DataType::Stream => "stream",
                DataType::List => "list",
            })
            .arg(self.maxlen);
        for d in docs {
            inv.arg(format!("{}/{}", d.topic, d.partition))
                .arg(d.offset)
                .arg(&d.source[..]);
        }
        let mut conn = conn.clone();
        let _written: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(())
    }
}

impl crate::sink::Sink for RedisSink {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn write<'a>(&'a self, docs: &'a [Doc]) -> BoxFuture<'a, Result<Vec<Outcome>, Error>> {
        Box::pin(async move {
            let (letters, rows): (Vec<&Doc>, Vec<&Doc>) = docs.iter().partition(|d| d.dead_letter);
            self.append(&rows, &self.key).await?;
            self.append(&letters, &format!("{}:deadletter", self.key))
                .await?;
            Ok(vec![Outcome::Written; docs.len()])
        })
    }
}
