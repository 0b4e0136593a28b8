//! Prints every checkpoint of a store: `cargo run -p checkpoint --example
//! dump -- <data_dir>/checkpoints` (the agent must be stopped).
fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: dump <checkpoints dir>");
        std::process::exit(2);
    };
    let (store, report) = match checkpoint::Store::open(&dir, std::time::Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{dir}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("{report:?}");
    let mut rows: Vec<_> = store.iter().collect();
    rows.sort_by(|a, b| a.1.path.cmp(&b.1.path).then(a.0.inode.cmp(&b.0.inode)));
    for (id, s) in rows {
        println!(
            "dev={} ino={} fp={:#x} path={} durable={} acked={} size={} wal_seq={} seen={}",
            id.device,
            id.inode,
            id.fingerprint,
            s.path,
            s.durable_offset,
            s.acked_offset,
            s.size,
            s.wal_seq,
            s.last_seen_ms
        );
    }
}
