//! A probe of sled 0.34.7's write cost, outside perch: why the store uses no sled
//! transactions and does not flush sled on the hot path (bench/README.md, session 3).
//!
//! ```sh
//! cargo bench --bench sled_probe                 # every mode, 50,000 events each
//! cargo bench --bench sled_probe -- tx 5 0       # one mode: MODE KEYS FLUSH_EVERY
//! ```
//!
//! Each "event" writes KEYS keys (the first with a 700-byte value, the others small) as
//! a transaction (`tx`), a batch (`batch`) or plain inserts (`plain`), and the store is
//! flushed every FLUSH_EVERY events (0: only sled's own 500 ms timer). It prints events/s,
//! CPU µs per event (user + system, from /proc/self/stat) and KiB written per event
//! (/proc/self/io), in a fresh directory under target/.

use std::time::Instant;

const EVENTS: u64 = 50_000;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: ")?.parse().ok())
        .unwrap_or(0)
}

fn run(mode: &str, keys: u64, flush_every: u64) {
    let dir = format!("target/sled-probe-{mode}-{keys}-{flush_every}");
    let _ = std::fs::remove_dir_all(&dir);
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(64 << 20)
        .open()
        .expect("sled opens");
    let tree = db.open_tree("t").expect("tree opens");
    let big = vec![b'x'; 700];
    let (cpu0, written0, start) = (cpu_seconds(), written_bytes(), Instant::now());
    for i in 0..EVENTS {
        let id = (u128::from(i) | (1u128 << 100)).to_be_bytes();
        let pairs: Vec<(Vec<u8>, &[u8])> = (0..keys)
            .map(|k| {
                let mut key = vec![b'a' + k as u8, b'/'];
                key.extend_from_slice(&id);
                (key, if k == 0 { &big[..] } else { &b"lane"[..] })
            })
            .collect();
        match mode {
            "tx" => tree
                .transaction(|t| {
                    for (k, v) in &pairs {
                        t.insert(k.as_slice(), *v)?;
                    }
                    Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
                })
                .expect("transaction"),
            "batch" => {
                let mut batch = sled::Batch::default();
                for (k, v) in &pairs {
                    batch.insert(k.as_slice(), *v);
                }
                tree.apply_batch(batch).expect("batch");
            }
            _ => {
                for (k, v) in &pairs {
                    tree.insert(k.as_slice(), *v).expect("insert");
                }
            }
        }
        if flush_every > 0 && i % flush_every == 0 {
            tree.flush().expect("flush");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let (cpu, written) = (cpu_seconds() - cpu0, written_bytes() - written0);
    println!(
        "{mode:5} keys/event={keys} flush_every={flush_every:2}: {:7.0} events/s, {:6.1} µs CPU/event, {:5.1} KiB written/event",
        EVENTS as f64 / seconds,
        cpu * 1e6 / EVENTS as f64,
        written as f64 / 1024.0 / EVENTS as f64
    );
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is MODE KEYS FLUSH_EVERY.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let [mode, keys, flush_every] = args.as_slice() {
        run(
            mode,
            keys.parse().unwrap_or(5),
            flush_every.parse().unwrap_or(0),
        );
        return;
    }
    for (mode, keys, flush_every) in [
        ("tx", 5, 4),
        ("batch", 5, 4),
        ("plain", 5, 4),
        ("tx", 5, 0),
        ("plain", 5, 0),
        ("plain", 1, 0),
    ] {
        run(mode, keys, flush_every);
    }
}
