//! The etcd collect-entry parser: any bytes as an etcd value are accepted
//! or refused as a whole, never a panic. What is accepted validates entry
//! by entry, stays inside `allowed_roots` (no `..`, a literal directory
//! under a root), and round-trips: serialised and parsed again it gives the
//! same entries. A refusal names the etcd key.
#![no_main]
use agent::collect::{self, CollectEntry};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path, PathBuf};

const KEY: &str = "/logagent/collect/fuzz-host";

fuzz_target!(|data: &[u8]| {
    let roots = [PathBuf::from("/var/log"), PathBuf::from("/srv/app/logs")];
    let entries = match collect::parse(KEY, data, &roots) {
        Ok(e) => e,
        Err(e) => {
            assert!(e.to_string().contains(KEY), "{e}");
            return;
        }
    };
    for e in &entries {
        assert_eq!(collect::validate(e, &roots), Ok(()));
        let path = Path::new(&e.path);
        assert!(path.is_absolute(), "{}", e.path);
        assert!(
            !path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir)),
            "{}",
            e.path
        );
        assert!(collect::within_roots(&e.path, &roots), "{}", e.path);
        assert!(agent::config::valid_topic(&e.topic), "{}", e.topic);
    }
    let again = serde_json::to_vec(&entries).expect("entries serialise");
    let back: Vec<CollectEntry> = collect::parse(KEY, &again, &roots)
        .unwrap_or_else(|e| panic!("accepted entries re-parse: {e}"));
    assert_eq!(back, entries);
    // Merging a list with itself keeps each (path, topic) once.
    let merged = collect::merge(&[&entries, &entries]);
    assert!(merged.len() <= entries.len());
});
