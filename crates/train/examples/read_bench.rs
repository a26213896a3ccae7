//! Ingest speed: `read_bench FILE [PRESET]`: samples/s of the reader alone (parse + hash),
//! and of the batch stream (reader thread + batching).
use std::time::Instant;

use dlrs_train::data::{BatchStream, DataFormat, SampleReader, StreamOptions};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&a[1]);
    let cfg = dlrs_model::presets::preset(a.get(2).map_or("criteo-kaggle", String::as_str))
        .unwrap()
        .config;
    let t = Instant::now();
    let mut r = SampleReader::open(path, &cfg, DataFormat::Auto, false).unwrap();
    let mut s = dlrs_model::Sample {
        dense: vec![],
        sparse: vec![],
        label: None,
    };
    let mut n = 0u64;
    while r.next_into(&mut s).unwrap() {
        n += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "reader: {n} samples in {secs:.2}s: {:.0} samples/s",
        n as f64 / secs
    );
    let t = Instant::now();
    let opts = StreamOptions {
        batch: 2048,
        format: DataFormat::Auto,
        skip_bad: false,
        shuffle: None,
        skip_samples: 0,
    };
    let mut st = BatchStream::open(path, &cfg, opts).unwrap();
    let mut n = 0u64;
    while let Some(b) = st.next_batch().unwrap() {
        n += b.labels.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "stream: {n} samples in {secs:.2}s: {:.0} samples/s",
        n as f64 / secs
    );
}
