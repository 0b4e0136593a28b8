use elasticsearch::http::transport::Transport;
use elasticsearch::indices::IndicesDeleteParts;
use elasticsearch::{CreateParts, Elasticsearch, SearchParts};
use integration::{unique, Stack};
use serde_json::{json, Value};

#[tokio::test]
async fn index_a_document_and_find_it_by_search() {
    let stack = Stack::from_env();
    let client = Elasticsearch::new(Transport::single_node(&stack.es_url).expect("ES_URL"));
    let index = unique("it-es");
    let id = common::document_id("web_log", 0, 42);
    let marker = unique("needle");

    let resp = client
        .create(CreateParts::IndexId(&index, &id))
        .body(json!({"@timestamp": "2026-11-21T04:33:32Z", "message": format!("GET / {marker}")}))
        .refresh(elasticsearch::params::Refresh::WaitFor)
        .send()
        .await
        .expect("create request");
    assert_eq!(resp.status_code().as_u16(), 201, "{:?}", resp.text().await);

    // The same id again is a conflict, not a second document: replay safety.
    let again = client
        .create(CreateParts::IndexId(&index, &id))
        .body(json!({"message": "duplicate"}))
        .send()
        .await
        .expect("second create request");
    assert_eq!(again.status_code().as_u16(), 409);

    let found: Value = client
        .search(SearchParts::Index(&[&index]))
        .body(json!({"query": {"match": {"message": marker}}}))
        .send()
        .await
        .expect("search request")
        .json()
        .await
        .expect("search body");
    assert_eq!(found["hits"]["total"]["value"], 1, "{found}");
    assert_eq!(found["hits"]["hits"][0]["_id"], id.as_str());

    let _ = client
        .indices()
        .delete(IndicesDeleteParts::Index(&[&index]))
        .send()
        .await;
}
