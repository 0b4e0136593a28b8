//! Reading the numbered lines of the long runs (`torture`, `scale`) back
//! from Elasticsearch: every document's topic and message (a scroll, exact,
//! duplicates kept), and the `tt w=<writer> seq=<n>` id each line carries.

use crate::Stack;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Waits for the pipeline to drain: until `index` counts `total` documents
/// (settled for 5 s) with the agents' WALs empty, or the count stayed the
/// same for 30 s with the WALs empty; at most `limit`. The count includes
/// duplicates, so reaching `total` alone does not end it (lines still on
/// their way would be reported lost). `wal_empty` must say `false` for an
/// agent that does not answer. Returns the seconds it waited.
pub async fn drain(
    stack: &Stack,
    index: &str,
    total: u64,
    limit: Duration,
    mut wal_empty: impl FnMut() -> bool,
) -> f64 {
    let start = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let c = search(stack, index, json!({"size": 0, "track_total_hits": true}))
            .await
            .and_then(|v| v["hits"]["total"]["value"].as_u64())
            .unwrap_or(0);
        if c != last.0 {
            last = (c, Instant::now());
        }
        let empty = wal_empty();
        if (c >= total && empty && last.1.elapsed() > Duration::from_secs(5))
            || (empty && last.1.elapsed() > Duration::from_secs(30))
            || start.elapsed() > limit
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    start.elapsed().as_secs_f64()
}

/// The answer of a search on `index`, or `None` when it failed.
pub async fn search(stack: &Stack, index: &str, body: Value) -> Option<Value> {
    let r = stack
        .es()
        .search(elasticsearch::SearchParts::Index(&[index]))
        .body(body)
        .send()
        .await
        .ok()?;
    r.json::<Value>().await.ok()
}

/// Every document's topic (from its index `<topic>-<date>`) and `message`,
/// read with a scroll (exact, duplicates kept).
pub async fn all_messages(stack: &Stack, index: &str) -> Option<Vec<(String, String)>> {
    let es = stack.es();
    let _ = es
        .indices()
        .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[index]))
        .send()
        .await;
    async fn body(
        r: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
    ) -> Option<Value> {
        r.ok()?.json().await.ok()
    }
    let mut page = body(
        es.search(elasticsearch::SearchParts::Index(&[index]))
            .scroll("2m")
            .body(json!({"size": 5000, "_source": ["message"], "query": {"match_all": {}}}))
            .send()
            .await,
    )
    .await?;
    let mut out = Vec::new();
    loop {
        let hits = page["hits"]["hits"].as_array()?.clone();
        if hits.is_empty() {
            return Some(out);
        }
        for h in hits {
            let idx = h["_index"].as_str().unwrap_or("");
            let topic = idx.rsplit_once('-').map_or(idx, |(t, _)| t).to_string();
            out.push((
                topic,
                h["_source"]["message"].as_str().unwrap_or("").to_string(),
            ));
        }
        let id = page["_scroll_id"].as_str()?.to_string();
        page = body(
            es.scroll(elasticsearch::ScrollParts::None)
                .body(json!({"scroll": "2m", "scroll_id": id}))
                .send()
                .await,
        )
        .await?;
    }
}

/// The (writer, seq) of a line `… tt w=<writer> seq=<n> …`.
pub fn parse_id(msg: &str) -> Option<(u64, u64)> {
    let i = msg.find("tt w=")?;
    let rest = &msg[i + 5..];
    let (w, rest) = rest.split_once(" seq=")?;
    let seq: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((w.parse().ok()?, seq.parse().ok()?))
}

/// The `p` quantile (0–1) of sorted values; 0 when there are none.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_quantiles() {
        assert_eq!(parse_id("x tt w=12 seq=345 probe"), Some((12, 345)));
        assert_eq!(parse_id("tt w=1 seq=x"), None);
        assert_eq!(parse_id("nothing"), None);
        assert_eq!(pct(&[], 0.5), 0.0);
        assert_eq!(pct(&[1.0, 2.0, 3.0, 4.0], 0.5), 3.0);
        assert_eq!(pct(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
