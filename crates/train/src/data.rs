//! Labelled training data, read streaming with bounded memory.
//!
//! Two formats, told apart by the first byte of the (decompressed) content: `{` is JSON
//! Lines, anything else is Criteo TSV.
//!
//! - **JSON Lines**: the predict format with a label,
//!   `{"dense": [..], "sparse": [[ids], ..], "label": 0|1}`; ids are row indices. A missing
//!   label is an error naming the line.
//! - **Criteo TSV** (the Kaggle / Terabyte click logs): `label \t I1..I13 \t C1..C26`, that is
//!   one label, `n_dense` integer features and `n_tables` categorical features as hex
//!   strings (the column count follows the model: 1 + 13 + 26 = 40 for the Criteo shapes).
//!   Empty fields are allowed. The reference preprocessing: a dense value `x` becomes
//!   `ln(max(x, 0) + 1)` (an empty one is 0); a categorical value is hashed into its table:
//!   `id = xxh3_64_with_seed(v.to_le_bytes(), seed = table index) mod rows`, where `v` is the
//!   hex string's value as a u64 (1 to 16 hex digits, either case). An empty categorical
//!   is the "missing" category of its table: `id = xxh3_64_with_seed(b"", table index) mod rows`
//!   (the hash of the empty byte string). Each categorical gives a bag of exactly one id.
//!   That is the `hash` id map applied to the raw id `v` (an empty field is the empty
//!   string id), so a table with `index` or `hash` map gets the same rows; a table with a
//!   `collisionless` map gets the raw id `v` itself as its key (an empty field: the key of
//!   the empty string), and the model's map turns it into a row.
//! - Raw ids in JSON Lines: see `dlrs_model::batch::parse_sample`; the keys of
//!   collisionless tables travel with the batch ([`LabelledBatch::keys`]) to the trainer,
//!   which admits and inserts them, or to the evaluator, which only looks them up.
//!
//! Input compressed with gzip or zstd is recognised by its magic bytes and decompressed on
//! the fly. A bad line (malformed JSON, a wrong column count, a non-integer dense value, a
//! non-hex categorical, a label outside {0, 1}, an id out of range) is an error naming the
//! file, the line and the column or field; with `skip_bad` it is skipped and counted
//! instead (the count is reported, never silent). Blank lines are ignored.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use dlrs_model::batch::parse_sample_keys;
use dlrs_model::tables::idmap::{IdMapSpec, KeyBags, RawId, collisionless_key, hash_row};
use dlrs_model::{Batch, DlrmConfig, ModelError, Sample};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, TrainError};

/// The input format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFormat {
    /// by content: JSON Lines when the first byte is `{`, else Criteo TSV
    Auto,
    Jsonl,
    Criteo,
}

/// What is wrong with one line of data: where in the line (`column 2 (dense 0)`,
/// ``field `label` ``; empty for the line as a whole) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub field: String,
    pub msg: String,
}

impl LineError {
    fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        LineError {
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// The error of a JSON Lines sample that `parse_sample` refused.
    fn of_sample(e: ModelError) -> Self {
        match e {
            ModelError::Input { field, msg, .. } if !field.is_empty() => {
                LineError::new(format!("field `{field}`"), msg)
            }
            ModelError::Input { msg, .. } => LineError::new("", msg),
            other => LineError::new("", other.to_string()),
        }
    }
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.msg)
        } else {
            write!(f, "{}: {}", self.field, self.msg)
        }
    }
}

/// Counts bytes read from the underlying file (progress and ETA).
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

/// A zstd stream of one or more frames (ruzstd decodes one frame per decoder).
struct Zstd<R: Read> {
    src: Option<R>,
    dec: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(d) = &mut self.dec {
                let k = d.read(buf)?;
                if k > 0 || buf.is_empty() {
                    return Ok(k);
                }
                let d = self.dec.take().expect("a decoder");
                self.src = Some(d.into_inner());
            }
            let Some(mut src) = self.src.take() else {
                return Ok(0);
            };
            if src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.dec =
                Some(ruzstd::decoding::StreamingDecoder::new(src).map_err(std::io::Error::other)?);
        }
    }
}

/// Opens a file (or `-` for stdin), decompressing gzip/zstd by magic bytes. The counter
/// receives the bytes read from the file itself.
pub fn open_input(path: &Path, counter: Arc<AtomicU64>) -> Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(TrainError::io("opening", path))?)
    };
    let mut r = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: raw,
            n: counter,
        },
    );
    let head = r.fill_buf().map_err(TrainError::io("reading", path))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(r),
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(BufReader::with_capacity(
            1 << 20,
            Zstd {
                src: Some(r),
                dec: None,
            },
        ))
    } else {
        Box::new(r)
    })
}

/// The raw id of a Criteo categorical value: the integer its hex string spells (1 to 16
/// digits, either case), or the empty string id for an empty field.
pub fn criteo_raw_id(field: &str) -> Result<RawId<'static>, String> {
    if field.is_empty() {
        return Ok(RawId::Str(""));
    }
    if field.len() > 16 || !field.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{field}` is not a hex string of 1 to 16 digits"));
    }
    let v = u64::from_str_radix(field, 16).map_err(|e| format!("`{field}`: {e}"))?;
    Ok(RawId::Int(v))
}

/// The row of a Criteo categorical value in a table of `rows` rows (see the module doc):
/// the `hash` id map of its raw id.
pub fn criteo_hash(field: &str, table: usize, rows: usize) -> Result<u32, String> {
    Ok(hash_row(criteo_raw_id(field)?, table, rows))
}

/// Parses one Criteo TSV line into `s` (bags of one id each). Errors name the column
/// (1-based) and what was wrong. A model with collisionless tables needs
/// [`parse_criteo_keys`].
pub fn parse_criteo(line: &str, cfg: &DlrmConfig, s: &mut Sample) -> Result<(), LineError> {
    let mut keys = Vec::new();
    parse_criteo_keys(line, cfg, s, &mut keys)?;
    if let Some(t) = keys.iter().position(|k| !k.is_empty()) {
        return Err(LineError::new(
            format!("categorical {t}"),
            "its table has a collisionless id map: the raw id needs the model's map",
        ));
    }
    Ok(())
}

/// [`parse_criteo`], with the keys of collisionless tables into `keys` (one list per
/// table, empty for the others; their bags in `s` are empty).
pub fn parse_criteo_keys(
    line: &str,
    cfg: &DlrmConfig,
    s: &mut Sample,
    keys: &mut Vec<Vec<u64>>,
) -> Result<(), LineError> {
    let nd = cfg.n_dense();
    let nt = cfg.n_tables();
    let want = 1 + nd + nt;
    let n = line.split('\t').count();
    if n != want {
        return Err(LineError::new(
            "",
            format!(
                "{n} columns, expected {want} (label, {nd} integer features, {nt} categorical features)"
            ),
        ));
    }
    let mut cols = line.split('\t');
    let label = cols.next().unwrap_or("");
    s.label = Some(match label {
        "0" => 0.0,
        "1" => 1.0,
        other => {
            return Err(LineError::new(
                "column 1 (label)",
                format!("`{other}` is not 0 or 1"),
            ));
        }
    });
    s.dense.clear();
    for j in 0..nd {
        let f = cols.next().unwrap_or("");
        let v = if f.is_empty() {
            0.0
        } else {
            let x: i64 = f.parse().map_err(|_| {
                LineError::new(
                    format!("column {} (dense {j})", j + 2),
                    format!("`{f}` is not an integer"),
                )
            })?;
            (x.max(0) as f32 + 1.0).ln()
        };
        s.dense.push(v);
    }
    s.sparse.resize_with(nt, Vec::new);
    keys.resize_with(nt, Vec::new);
    for (t, (bag, k)) in s.sparse.iter_mut().zip(keys.iter_mut()).enumerate() {
        let f = cols.next().unwrap_or("");
        let raw = criteo_raw_id(f)
            .map_err(|e| LineError::new(format!("column {} (categorical {t})", t + 2 + nd), e))?;
        bag.clear();
        k.clear();
        match cfg.id_map(t) {
            IdMapSpec::Index | IdMapSpec::Hash => bag.push(hash_row(raw, t, cfg.tables[t])),
            IdMapSpec::Collisionless(_) => k.push(collisionless_key(raw, t)),
        }
    }
    Ok(())
}

/// Reads labelled samples one at a time.
pub struct SampleReader {
    input: Box<dyn BufRead + Send>,
    path: PathBuf,
    cfg: DlrmConfig,
    format: DataFormat,
    skip_bad: bool,
    line_no: usize,
    buf: String,
    /// bad lines skipped (with `skip_bad`)
    pub skipped: u64,
    /// the first few skipped lines' errors, for the report
    pub skipped_examples: Vec<String>,
    /// bytes read from the file
    pub bytes: Arc<AtomicU64>,
    /// the keys of the collisionless tables of the last sample read (one list per table)
    pub keys: Vec<Vec<u64>>,
}

impl SampleReader {
    pub fn open(path: &Path, cfg: &DlrmConfig, format: DataFormat, skip_bad: bool) -> Result<Self> {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut input = open_input(path, Arc::clone(&bytes))?;
        let format = match format {
            DataFormat::Auto => {
                let head = input.fill_buf().map_err(TrainError::io("reading", path))?;
                match head.iter().find(|c| !c.is_ascii_whitespace()) {
                    Some(b'{') => DataFormat::Jsonl,
                    _ => DataFormat::Criteo,
                }
            }
            f => f,
        };
        Ok(SampleReader {
            input,
            path: path.to_path_buf(),
            cfg: cfg.clone(),
            format,
            skip_bad,
            line_no: 0,
            buf: String::new(),
            skipped: 0,
            skipped_examples: Vec::new(),
            bytes,
            keys: Vec::new(),
        })
    }

    pub fn format(&self) -> DataFormat {
        self.format
    }

    /// The next sample into `s`; `false` at the end of the input.
    pub fn next_into(&mut self, s: &mut Sample) -> Result<bool> {
        loop {
            self.buf.clear();
            let n = self
                .input
                .read_line(&mut self.buf)
                .map_err(|e| TrainError::BadLine {
                    path: self.path.clone(),
                    line: self.line_no + 1,
                    field: String::new(),
                    msg: format!("read error: {e}"),
                })?;
            if n == 0 {
                return Ok(false);
            }
            self.line_no += 1;
            let line = self.buf.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            let res = match self.format {
                DataFormat::Criteo => parse_criteo_keys(line, &self.cfg, s, &mut self.keys),
                _ => match parse_sample_keys(line, &self.cfg) {
                    Ok((p, _)) if p.label.is_none() => Err(LineError::new(
                        "field `label`",
                        "missing (training and evaluation data need \"label\": 0 or 1)",
                    )),
                    Ok((p, k)) => {
                        *s = p;
                        self.keys = k;
                        Ok(())
                    }
                    Err(e) => Err(LineError::of_sample(e)),
                },
            };
            match res {
                Ok(()) => return Ok(true),
                Err(LineError { field, msg }) => {
                    let err = TrainError::BadLine {
                        path: self.path.clone(),
                        line: self.line_no,
                        field,
                        msg,
                    };
                    if !self.skip_bad {
                        return Err(err);
                    }
                    self.skipped += 1;
                    if self.skipped_examples.len() < 5 {
                        self.skipped_examples.push(err.to_string());
                    }
                }
            }
        }
    }
}

/// A batch with its labels.
pub struct LabelledBatch {
    pub batch: Batch,
    pub labels: Vec<f32>,
    /// the keys of the collisionless tables, one [`KeyBags`] per table (empty when the
    /// model has none); their bags in `batch` are empty until the model resolves them
    pub keys: Vec<KeyBags>,
}

impl LabelledBatch {
    /// An empty batch for `cfg`.
    pub fn empty(cfg: &DlrmConfig, capacity: usize) -> Self {
        LabelledBatch {
            batch: Batch::empty(cfg),
            labels: Vec::with_capacity(capacity),
            keys: if cfg.has_collisionless() {
                vec![KeyBags::new(); cfg.n_tables()]
            } else {
                Vec::new()
            },
        }
    }
}

/// How a stream of batches is read.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub batch: usize,
    pub format: DataFormat,
    pub skip_bad: bool,
    /// buffered shuffle: `(seed, window)`; `None` keeps file order
    pub shuffle: Option<(u64, usize)>,
    /// samples (after shuffling) to drop before the first batch: a resumed epoch
    pub skip_samples: u64,
}

/// Progress counters shared with the reader thread.
#[derive(Default)]
pub struct StreamStats {
    pub bytes: Arc<AtomicU64>,
    pub skipped: AtomicU64,
    pub samples: AtomicU64,
}

/// Batches read by a background thread (bounded queue of a few batches: memory stays
/// bounded, parsing overlaps training).
pub struct BatchStream {
    rx: Receiver<Result<LabelledBatch>>,
    handle: Option<JoinHandle<Vec<String>>>,
    pub stats: Arc<StreamStats>,
    /// total bytes of the input file, when known (for the progress bar)
    pub file_bytes: Option<u64>,
    /// errors of the first skipped lines, filled when the stream ends
    pub skipped_examples: Vec<String>,
}

impl BatchStream {
    pub fn open(path: &Path, cfg: &DlrmConfig, opts: StreamOptions) -> Result<Self> {
        assert!(opts.batch > 0, "batch size must be positive");
        let mut reader = SampleReader::open(path, cfg, opts.format, opts.skip_bad)?;
        let stats = Arc::new(StreamStats {
            bytes: Arc::clone(&reader.bytes),
            ..Default::default()
        });
        let file_bytes = std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let (tx, rx) = sync_channel(4);
        let cfg = cfg.clone();
        let st = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("dlrs-reader".into())
            .spawn(move || {
                let _ = produce(&mut reader, &cfg, &opts, &tx, &st);
                reader.skipped_examples
            })
            .map_err(TrainError::SpawnReader)?;
        Ok(BatchStream {
            rx,
            handle: Some(handle),
            stats,
            file_bytes,
            skipped_examples: Vec::new(),
        })
    }

    /// The next batch; `None` at the end.
    pub fn next_batch(&mut self) -> Result<Option<LabelledBatch>> {
        match self.rx.recv() {
            Ok(r) => r.map(Some),
            Err(_) => {
                if let Some(h) = self.handle.take() {
                    self.skipped_examples = h.join().map_err(|_| TrainError::ReaderPanicked)?;
                }
                Ok(None)
            }
        }
    }

    pub fn skipped(&self) -> u64 {
        self.stats.skipped.load(Ordering::Relaxed)
    }
}

/// The reader thread: samples -> (shuffle buffer) -> skip -> batches -> channel.
fn produce(
    reader: &mut SampleReader,
    cfg: &DlrmConfig,
    opts: &StreamOptions,
    tx: &SyncSender<Result<LabelledBatch>>,
    st: &StreamStats,
) -> std::result::Result<(), ()> {
    let mut cur = LabelledBatch::empty(cfg, opts.batch);
    let mut skip = opts.skip_samples;
    let path = reader.path.clone();
    let keyed = cfg.has_collisionless();
    let mut emit = |(s, keys): &(Sample, Vec<Vec<u64>>),
                    cur: &mut LabelledBatch|
     -> std::result::Result<(), ()> {
        if skip > 0 {
            skip -= 1;
            return Ok(());
        }
        let mut pushed = cur.batch.push(cfg, s);
        if keyed && pushed.is_ok() {
            for (kb, k) in cur.keys.iter_mut().zip(keys) {
                if let Err(e) = kb.push(k) {
                    pushed = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = pushed {
            // parse_criteo / parse_sample validated already: a bug if reached
            let _ = tx.send(Err(TrainError::Batch {
                path: path.clone(),
                err: e,
            }));
            return Err(());
        }
        cur.labels.push(s.label.unwrap_or(0.0));
        if cur.labels.len() == opts.batch {
            let full = std::mem::replace(cur, LabelledBatch::empty(cfg, opts.batch));
            tx.send(Ok(full)).map_err(|_| ())?;
        }
        Ok(())
    };
    let mut rng = opts.shuffle.map(|(seed, _)| SmallRng::seed_from_u64(seed));
    let window = opts.shuffle.map_or(0, |(_, w)| w.max(1));
    let mut pool: Vec<(Sample, Vec<Vec<u64>>)> = Vec::new();
    let mut s = (
        Sample {
            dense: Vec::new(),
            sparse: Vec::new(),
            label: None,
        },
        Vec::new(),
    );
    loop {
        let more = match reader.next_into(&mut s.0) {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Err(e));
                return Err(());
            }
        };
        st.skipped.store(reader.skipped, Ordering::Relaxed);
        if !more {
            break;
        }
        st.samples.fetch_add(1, Ordering::Relaxed);
        if keyed {
            std::mem::swap(&mut s.1, &mut reader.keys);
        }
        match &mut rng {
            None => emit(&s, &mut cur)?,
            Some(rng) => {
                if pool.len() < window {
                    pool.push(s.clone());
                } else {
                    let k = rng.random_range(0..window);
                    emit(&pool[k], &mut cur)?;
                    pool[k] = s.clone();
                }
            }
        }
    }
    if let Some(rng) = &mut rng {
        // drain the window in a random order (Fisher-Yates)
        for i in (1..pool.len()).rev() {
            let j = rng.random_range(0..=i);
            pool.swap(i, j);
        }
        for p in &pool {
            emit(p, &mut cur)?;
        }
    }
    if skip > 0 {
        // a resumed epoch asked to skip more samples than the data holds: it is not the data
        // the checkpoint was trained on
        let _ = tx.send(Err(TrainError::DataTooShort {
            path,
            held: opts.skip_samples - skip,
            skip: opts.skip_samples,
        }));
        return Err(());
    }
    if !cur.labels.is_empty() {
        tx.send(Ok(cur)).map_err(|_| ())?;
    }
    Ok(())
}
