//! Never-panic: any bytes as an agent config file give a config or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = Path::new("fuzz.toml");
        let parsed: Result<agent::config::AgentConfig, _> =
            common::config::parse_config(path, text, |k| (k == "SET").then(|| "v".to_string()));
        if let Ok(cfg) = parsed {
            let _ = cfg.validate(path);
            let _ = cfg.to_redacted_toml();
        }
    }
});
