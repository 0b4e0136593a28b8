//! Never-panic: any bytes as a config file give a parsed table or an error
//! naming the file (the agent's and the transfer's typed configs go through
//! the same loader).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = Path::new("fuzz.toml");
        let lookup = |k: &str| (k == "SET").then(|| "v".to_string());
        let _ = common::config::interpolate(text, &lookup);
        match common::config::parse_config::<toml::Table>(path, text, lookup) {
            Ok(_) => {}
            Err(e) => assert!(e.to_string().contains("fuzz.toml")),
        }
    }
});
