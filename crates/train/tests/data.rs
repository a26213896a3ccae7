//! Data ingest: Criteo TSV preprocessing and hashing, bad lines with line numbers,
//! --skip-bad counting, gzip/zstd input, JSON Lines labels, shuffle and resume skipping.

use std::io::Write;
use std::path::Path;

use dlrs_model::{DlrmConfig, Sample};
use dlrs_train::data::{
    BatchStream, DataFormat, SampleReader, StreamOptions, criteo_hash, parse_criteo,
};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The Criteo shape (13 dense, 26 tables) with small tables.
fn criteo_cfg() -> DlrmConfig {
    let rows: Vec<String> = (0..26).map(|t| (10 + 7 * t).to_string()).collect();
    DlrmConfig::from_json_str(&format!(
        r#"{{"arch_mlp_bot":"13-4","arch_mlp_top":"2-1","arch_embedding_size":"{}",
            "arch_sparse_feature_size":4,"arch_interaction_op":"dot"}}"#,
        rows.join("-")
    ))
    .unwrap()
}

fn line(label: &str, dense: &[&str], cats: &[&str]) -> String {
    let mut v = vec![label.to_string()];
    v.extend(dense.iter().map(|s| s.to_string()));
    v.extend(cats.iter().map(|s| s.to_string()));
    v.join("\t")
}

fn good_line(i: usize) -> String {
    let dense: Vec<String> = (0..13)
        .map(|j| {
            if (i + j).is_multiple_of(5) {
                String::new()
            } else {
                ((i * 7 + j) as i64 - 3).to_string()
            }
        })
        .collect();
    let cats: Vec<String> = (0..26)
        .map(|t| {
            if (i + t).is_multiple_of(7) {
                String::new()
            } else {
                format!("{:08x}", (i * 2654435761 + t * 97) as u32)
            }
        })
        .collect();
    let d: Vec<&str> = dense.iter().map(String::as_str).collect();
    let c: Vec<&str> = cats.iter().map(String::as_str).collect();
    line(if i.is_multiple_of(3) { "1" } else { "0" }, &d, &c)
}

fn empty() -> Sample {
    Sample {
        dense: vec![],
        sparse: vec![],
        label: None,
    }
}

#[test]
fn criteo_preprocessing_and_hash() {
    let cfg = criteo_cfg();
    let mut dense = vec!["5", "-3", "", "0"];
    dense.extend(["1"; 9]);
    let mut cats = vec!["68fd1e64", "", "68FD1E64", "0"];
    cats.extend(["a"; 22]);
    let mut s = empty();
    parse_criteo(&line("1", &dense, &cats), &cfg, &mut s).unwrap();
    assert_eq!(s.label, Some(1.0));
    assert_eq!(s.dense[0], (6.0f32).ln());
    assert_eq!(s.dense[1], 0.0, "negatives clamp to 0");
    assert_eq!(s.dense[2], 0.0, "empty is 0");
    assert_eq!(s.dense[3], 0.0);
    assert_eq!(s.dense[4], (2.0f32).ln());
    // the documented hash
    let v = 0x68fd1e64u64;
    assert_eq!(
        s.sparse[0],
        vec![(xxh3_64_with_seed(&v.to_le_bytes(), 0) % 10) as u32]
    );
    assert_eq!(
        s.sparse[1],
        vec![(xxh3_64_with_seed(b"", 1) % 17) as u32],
        "empty = hash of the empty string"
    );
    assert_eq!(
        s.sparse[2],
        vec![(xxh3_64_with_seed(&v.to_le_bytes(), 2) % 24) as u32],
        "case does not matter"
    );
    assert_eq!(
        s.sparse[3],
        vec![(xxh3_64_with_seed(&0u64.to_le_bytes(), 3) % 31) as u32]
    );
    assert_eq!(criteo_hash("68fd1e64", 0, 10).unwrap(), s.sparse[0][0]);
    // the same value in another table hashes independently (seeded by the table index)
    assert_ne!(
        (0..50)
            .map(|i| criteo_hash(&format!("{i:x}"), 0, 1 << 20).unwrap())
            .collect::<Vec<_>>(),
        (0..50)
            .map(|i| criteo_hash(&format!("{i:x}"), 1, 1 << 20).unwrap())
            .collect::<Vec<_>>()
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn read_all(
    path: &Path,
    cfg: &DlrmConfig,
    skip_bad: bool,
) -> dlrs_train::Result<(Vec<Sample>, u64)> {
    let mut r = SampleReader::open(path, cfg, DataFormat::Auto, skip_bad)?;
    let mut out = vec![];
    let mut s = empty();
    while r.next_into(&mut s)? {
        out.push(s.clone());
    }
    Ok((out, r.skipped))
}

#[test]
fn bad_criteo_lines_name_their_line_numbers() {
    let cfg = criteo_cfg();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.tsv");
    let good = good_line(1);
    let cases: Vec<(String, &str)> = vec![
        (
            good.rsplit_once('\t').unwrap().0.to_string(),
            "39 columns, expected 40",
        ),
        (good.replacen("\t", "\t\t", 1), "41 columns, expected 40"),
        (
            format!("2{}", &good[1..]),
            "column 1 (label): `2` is not 0 or 1",
        ),
        (
            format!("{}\tzz12", good.rsplit_once('\t').unwrap().0),
            "column 40 (categorical 25): `zz12` is not a hex",
        ),
        (
            line("0", &["x"; 13], &["1"; 26]),
            "column 2 (dense 0): `x` is not an integer",
        ),
        (
            line("0", &["1.5"; 13], &["1"; 26]),
            "`1.5` is not an integer",
        ),
        (
            line("0", &["1"; 13], &["12345678901234567"; 26]),
            "column 15 (categorical 0)",
        ),
        (
            line("", &["1"; 13], &["1"; 26]),
            "column 1 (label): `` is not 0 or 1",
        ),
    ];
    for (bad, want) in &cases {
        // the bad line is line 4, after three good ones
        write(
            &p,
            &format!(
                "{}\n{}\n{}\n{bad}\n{}\n",
                good_line(1),
                good_line(2),
                good_line(3),
                good_line(4)
            ),
        );
        let err = read_all(&p, &cfg, false).unwrap_err().to_string();
        assert!(
            err.contains("bad.tsv: line 4: ") && err.contains(want),
            "got `{err}`, want line 4 and `{want}`"
        );
        let (ok, skipped) = read_all(&p, &cfg, true).unwrap();
        assert_eq!((ok.len(), skipped), (4, 1), "{want}");
    }
}

#[test]
fn skip_bad_counts_through_the_batch_stream() {
    let cfg = criteo_cfg();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.tsv");
    let mut text = String::new();
    for i in 0..50 {
        text += &if i % 10 == 3 {
            "1\t2\t3\n".to_string()
        } else {
            good_line(i) + "\n"
        };
    }
    write(&p, &text);
    let opts = StreamOptions {
        batch: 8,
        format: DataFormat::Auto,
        skip_bad: true,
        shuffle: None,
        skip_samples: 0,
    };
    let mut st = BatchStream::open(&p, &cfg, opts.clone()).unwrap();
    let mut n = 0;
    while let Some(b) = st.next_batch().unwrap() {
        n += b.labels.len();
    }
    assert_eq!((n, st.skipped()), (45, 5));
    assert_eq!(st.skipped_examples.len(), 5);
    assert!(
        st.skipped_examples[0].contains("line 4: 3 columns"),
        "{}",
        st.skipped_examples[0]
    );
    // without skip_bad the stream stops with the error of line 4
    let mut st = BatchStream::open(
        &p,
        &cfg,
        StreamOptions {
            skip_bad: false,
            ..opts
        },
    )
    .unwrap();
    let err = loop {
        match st.next_batch() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error"),
            Err(e) => break e.to_string(),
        }
    };
    assert!(err.contains("mixed.tsv: line 4: 3 columns"), "{err}");
}

#[test]
fn gzip_and_zstd_inputs_read_like_plain() {
    let cfg = criteo_cfg();
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..300).map(|i| good_line(i) + "\n").collect();
    let plain = dir.path().join("d.tsv");
    write(&plain, &text);
    let (want, _) = read_all(&plain, &cfg, false).unwrap();
    assert_eq!(want.len(), 300);

    let gz = dir.path().join("d.tsv.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(read_all(&gz, &cfg, false).unwrap().0, want);

    // zstd, two frames (as concatenated or parallel-compressed files have)
    let (a, b) = text.split_at(text.len() / 2);
    let mut z = ruzstd::encoding::compress_to_vec(
        a.as_bytes(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    z.extend(ruzstd::encoding::compress_to_vec(
        b.as_bytes(),
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    let zp = dir.path().join("d.tsv.zst");
    std::fs::write(&zp, z).unwrap();
    assert_eq!(read_all(&zp, &cfg, false).unwrap().0, want);
}

#[test]
fn jsonl_needs_labels() {
    let cfg = DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot":"2-3","arch_mlp_top":"1","arch_embedding_size":"5-4","arch_sparse_feature_size":3,"arch_interaction_op":"dot"}"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.jsonl");
    write(
        &p,
        "{\"dense\":[1,2],\"sparse\":[[1],[]],\"label\":1}\n\n{\"dense\":[1,2],\"sparse\":[[4,4],[3]],\"label\":0}\n{\"dense\":[1,2],\"sparse\":[[1],[2]]}\n",
    );
    let err = read_all(&p, &cfg, false).unwrap_err().to_string();
    assert!(
        err.contains("s.jsonl: line 4: field `label`: missing"),
        "{err}"
    );
    write(&p, "{\"dense\":[1,2],\"sparse\":[[5],[]],\"label\":1}\n");
    let err = read_all(&p, &cfg, false).unwrap_err().to_string();
    assert!(
        err.contains("line 1: field `sparse[0][0]`: id 5 out of range"),
        "{err}"
    );
    write(&p, "{\"dense\":[1,2],\"sparse\":[[4],[]],\"label\":0.5}\n");
    assert!(
        read_all(&p, &cfg, false)
            .unwrap_err()
            .to_string()
            .contains("line 1: field `label`")
    );
}

fn stream_labels(p: &Path, cfg: &DlrmConfig, shuffle: Option<(u64, usize)>, skip: u64) -> Vec<f32> {
    // label carries the sample index: dense[0] is the index
    let opts = StreamOptions {
        batch: 7,
        format: DataFormat::Auto,
        skip_bad: false,
        shuffle,
        skip_samples: skip,
    };
    let mut st = BatchStream::open(p, cfg, opts).unwrap();
    let mut out = vec![];
    while let Some(b) = st.next_batch().unwrap() {
        out.extend(b.batch.dense().chunks(2).map(|c| c[0]));
    }
    out
}

#[test]
fn shuffle_is_a_seeded_permutation_and_skip_resumes_it() {
    let cfg = DlrmConfig::from_json_str(
        r#"{"arch_mlp_bot":"2-3","arch_mlp_top":"1","arch_embedding_size":"5","arch_sparse_feature_size":3,"arch_interaction_op":"cat"}"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.jsonl");
    let text: String = (0..100)
        .map(|i| {
            format!(
                "{{\"dense\":[{i},0],\"sparse\":[[1]],\"label\":{}}}\n",
                i % 2
            )
        })
        .collect();
    write(&p, &text);
    let in_order = stream_labels(&p, &cfg, None, 0);
    assert_eq!(
        in_order,
        (0..100).map(|i| i as f32).collect::<Vec<_>>(),
        "file order without --shuffle"
    );
    let a = stream_labels(&p, &cfg, Some((9, 16)), 0);
    let b = stream_labels(&p, &cfg, Some((9, 16)), 0);
    let c = stream_labels(&p, &cfg, Some((10, 16)), 0);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, in_order);
    let mut sorted = a.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, in_order);
    assert_eq!(stream_labels(&p, &cfg, Some((9, 16)), 30), a[30..].to_vec());
    assert_eq!(stream_labels(&p, &cfg, None, 30), in_order[30..].to_vec());
}
