//! Checkpoints: a training output directory that is at every moment either the previous
//! complete checkpoint or the new one.
//!
//! `OUT/` holds `config.json` + `model.safetensors` (a model directory `dlrs predict` and
//! PyTorch load), `optimizer.safetensors` (the optimizer state, keys `{param}.{slot}`) and
//! `train_state.json` (where in the data the run is, and the settings it was run with). A
//! checkpoint is written into a sibling temp directory `.OUT.ckpt-PID` (every file fsynced),
//! which then replaces `OUT` in one step: `renameat2(RENAME_EXCHANGE)` swaps the two
//! directories atomically, and the old contents, now in the temp directory, are removed.
//! On file systems without RENAME_EXCHANGE it falls back to two renames (`OUT` ->
//! `.OUT.old-PID`, temp -> `OUT`), and [`resolve_resume`] finds `.OUT.old-*` if a crash fell
//! between them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use dlrs_model::Model;
use serde_json::{Value, json};

use crate::error::{Result, SettingChange, TrainError};
use crate::optim::Optimizer;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "train_state.json";

/// Where a run is, and the settings that must not change across a resume.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// epochs finished
    pub epoch: u64,
    /// samples of the current epoch already trained on
    pub samples_in_epoch: u64,
    /// optimizer steps taken
    pub step: u64,
    /// samples trained on over the whole run
    pub samples_total: u64,
    pub settings: Settings,
    /// the training data the run reads (`None`: stdin, or a checkpoint written before
    /// version 3 recorded it)
    pub data: Option<DataIdentity>,
}

/// Bytes of a data file's head that [`DataIdentity`] hashes.
pub const DATA_HEAD_BYTES: u64 = 1 << 20;

/// What a resume checks to know it reads the same training data: the file's size and an
/// xxh3 hash of its first [`DATA_HEAD_BYTES`] bytes (as stored: a compressed file's
/// compressed bytes). The path is recorded for the error message only, so a data file moved
/// or copied elsewhere still resumes.
#[derive(Clone, Debug, PartialEq)]
pub struct DataIdentity {
    pub path: String,
    pub bytes: u64,
    pub head_xxh3: u64,
}

impl DataIdentity {
    /// The identity of the training data at `path`; `None` for stdin (`-`) or a pipe, which
    /// cannot be checked.
    pub fn of(path: &Path) -> Result<Option<Self>> {
        use std::io::Read;
        if path.as_os_str() == "-" || std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Ok(None);
        }
        let (file, meta) =
            dlrs_model::files::open_regular(path).map_err(TrainError::io("opening", path))?;
        let mut head = Vec::with_capacity(DATA_HEAD_BYTES.min(meta.len()) as usize);
        file.take(DATA_HEAD_BYTES)
            .read_to_end(&mut head)
            .map_err(TrainError::io("reading", path))?;
        Ok(Some(DataIdentity {
            path: std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
            bytes: meta.len(),
            head_xxh3: xxhash_rust::xxh3::xxh3_64(&head),
        }))
    }

    fn to_json(&self) -> Value {
        json!({
            "path": self.path,
            "bytes": self.bytes,
            // a hex string: JSON readers that go through f64 would round a u64
            "head_xxh3": format!("{:016x}", self.head_xxh3),
            "head_bytes": DATA_HEAD_BYTES,
        })
    }

    /// Reads the `data` object of the training state at `file` (for the errors).
    fn from_json(v: &Value, file: &Path) -> Result<Self> {
        let bad = |msg: String| TrainError::checkpoint(file, msg);
        let head_bytes = v["head_bytes"]
            .as_u64()
            .ok_or_else(|| bad("field `data.head_bytes` missing".into()))?;
        if head_bytes != DATA_HEAD_BYTES {
            return Err(bad(format!(
                "field `data.head_bytes`: {head_bytes}, this dlrs hashes {DATA_HEAD_BYTES}"
            )));
        }
        Ok(DataIdentity {
            path: v["path"]
                .as_str()
                .ok_or_else(|| bad("field `data.path` missing".into()))?
                .to_string(),
            bytes: v["bytes"]
                .as_u64()
                .ok_or_else(|| bad("field `data.bytes` missing".into()))?,
            head_xxh3: v["head_xxh3"]
                .as_str()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("field `data.head_xxh3` missing or not 16 hex digits".into()))?,
        })
    }

    /// `Ok` when `now` is the same data as `self` (the checkpoint's); otherwise
    /// [`TrainError::OtherData`], saying what differs and what to do.
    pub fn check_same(&self, now: &DataIdentity, at: &TrainState) -> Result<()> {
        let mut diffs = Vec::new();
        if self.bytes != now.bytes {
            diffs.push(format!(
                "{} bytes, the checkpoint's had {}",
                now.bytes, self.bytes
            ));
        }
        if self.head_xxh3 != now.head_xxh3 {
            diffs.push(format!(
                "its first {} bytes differ (xxh3 {:016x}, the checkpoint's {:016x})",
                now.bytes.min(DATA_HEAD_BYTES),
                now.head_xxh3,
                self.head_xxh3
            ));
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(TrainError::OtherData {
            given: now.path.clone(),
            trained_on: self.path.clone(),
            differences: diffs,
            sample: at.samples_in_epoch,
            epoch: at.epoch + 1,
        })
    }
}

/// Settings that define the sequence of updates: a resume must use the same.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub batch: usize,
    /// learning rate of the tables
    pub sparse_lr: f32,
    /// learning rate of the MLPs
    pub dense_lr: f32,
    pub optimizer: String,
    pub dense_optimizer: String,
    pub seed: u64,
    pub shuffle: bool,
    pub shuffle_window: usize,
}

impl TrainState {
    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        json!({
            "format": "dlrs-train-state",
            "version": 3,
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "step": self.step,
            "samples_total": self.samples_total,
            "settings": {
                "batch": s.batch,
                "sparse_lr": s.sparse_lr.to_string(),
                "dense_lr": s.dense_lr.to_string(),
                "optimizer": s.optimizer,
                "dense_optimizer": s.dense_optimizer,
                "seed": s.seed,
                "shuffle": s.shuffle,
                "shuffle_window": s.shuffle_window,
            },
            "data": self.data.as_ref().map(DataIdentity::to_json),
        })
    }

    /// Reads a training state; errors name the field (and [`STATE_FILE`], the file it is
    /// read from).
    pub fn from_json(v: &Value) -> Result<Self> {
        Self::from_json_at(v, Path::new(STATE_FILE))
    }

    /// [`from_json`](Self::from_json) of the state read from `file`.
    fn from_json_at(v: &Value, file: &Path) -> Result<Self> {
        let bad = |msg: String| TrainError::checkpoint(file, msg);
        if v["format"] != "dlrs-train-state" {
            return Err(bad("not a dlrs training state".into()));
        }
        let u = |v: &Value, k: &str| {
            v[k].as_u64()
                .ok_or_else(|| bad(format!("field `{k}` missing or not an integer")))
        };
        let st = &v["settings"];
        let s = |k: &str| {
            st[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("field `settings.{k}` missing")))
        };
        let rate = |k: &str| -> Result<f32> {
            s(k)?
                .parse()
                .map_err(|e| bad(format!("field `settings.{k}`: {e}")))
        };
        // version 1 had one `lr` for tables and MLPs
        let (sparse_lr, dense_lr) = if st.get("sparse_lr").is_some() {
            (rate("sparse_lr")?, rate("dense_lr")?)
        } else {
            let lr = rate("lr")?;
            (lr, lr)
        };
        Ok(TrainState {
            epoch: u(v, "epoch")?,
            samples_in_epoch: u(v, "samples_in_epoch")?,
            step: u(v, "step")?,
            samples_total: u(v, "samples_total")?,
            settings: Settings {
                batch: u(st, "batch")? as usize,
                sparse_lr,
                dense_lr,
                optimizer: s("optimizer")?,
                dense_optimizer: s("dense_optimizer")?,
                seed: u(st, "seed")?,
                shuffle: st["shuffle"].as_bool().ok_or_else(|| {
                    bad("field `settings.shuffle` missing or not a boolean".into())
                })?,
                shuffle_window: u(st, "shuffle_window")? as usize,
            },
            // version 3 on; null for stdin
            data: match v.get("data") {
                None | Some(Value::Null) => None,
                Some(d) => Some(DataIdentity::from_json(d, file)?),
            },
        })
    }
}

impl Settings {
    /// [`TrainError::SettingsChanged`] naming each setting that differs from the
    /// checkpoint's.
    pub fn check_same(&self, ckpt: &Settings) -> Result<()> {
        let mut diffs = Vec::new();
        let mut cmp = |flag: &'static str, given: String, checkpoint: String| {
            if given != checkpoint {
                diffs.push(SettingChange {
                    flag,
                    given,
                    checkpoint,
                });
            }
        };
        cmp("batch", self.batch.to_string(), ckpt.batch.to_string());
        if self.sparse_lr == self.dense_lr && ckpt.sparse_lr == ckpt.dense_lr {
            // one rate on both sides: name the flag that sets both
            cmp("lr", self.sparse_lr.to_string(), ckpt.sparse_lr.to_string());
        } else {
            cmp(
                "sparse-lr",
                self.sparse_lr.to_string(),
                ckpt.sparse_lr.to_string(),
            );
            cmp(
                "dense-lr",
                self.dense_lr.to_string(),
                ckpt.dense_lr.to_string(),
            );
        }
        cmp("optimizer", self.optimizer.clone(), ckpt.optimizer.clone());
        cmp(
            "dense-optimizer",
            self.dense_optimizer.clone(),
            ckpt.dense_optimizer.clone(),
        );
        cmp("seed", self.seed.to_string(), ckpt.seed.to_string());
        cmp(
            "shuffle",
            self.shuffle.to_string(),
            ckpt.shuffle.to_string(),
        );
        if self.shuffle {
            cmp(
                "shuffle-window",
                self.shuffle_window.to_string(),
                ckpt.shuffle_window.to_string(),
            );
        }
        if !diffs.is_empty() {
            return Err(TrainError::SettingsChanged { changed: diffs });
        }
        Ok(())
    }
}

fn sibling(out: &Path, tag: &str) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| TrainError::checkpoint(out, "not a directory path"))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.join(format!(
        ".{}.{tag}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Atomically swaps two directory entries (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both paths are valid NUL-terminated C strings that outlive the call; the
    // syscall only reads them. AT_FDCWD resolves relative paths against the working directory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes a complete checkpoint to `out` (replacing the previous one atomically).
pub fn write(out: &Path, model: &Model, opt: &Optimizer, state: &TrainState) -> Result<()> {
    let tmp = sibling(out, "ckpt")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(TrainError::io("removing", &tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(TrainError::io("creating", &tmp))?;
    model.save(&tmp)?;
    opt.save(model, &tmp.join(OPTIMIZER_FILE))?;
    let state_file = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(&state.to_json())
        .map_err(|e| TrainError::checkpoint(&state_file, e.to_string()))?
        + "\n";
    dlrs_model::weights::atomic_write_bytes(&state_file, text.as_bytes())?;
    fsync_dir(&tmp).map_err(TrainError::io("fsync", &tmp))?;
    let parent = tmp.parent().expect("a sibling has a parent").to_path_buf();
    if out.exists() {
        match exchange(&tmp, out) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                let old = sibling(out, "old")?;
                std::fs::rename(out, &old).map_err(TrainError::io("renaming", out))?;
                std::fs::rename(&tmp, out).map_err(TrainError::io("renaming", &tmp))?;
                fsync_dir(&parent).map_err(TrainError::io("fsync", &parent))?;
                std::fs::remove_dir_all(&old).map_err(TrainError::io("removing", &old))?;
                return Ok(());
            }
            Err(err) => {
                return Err(TrainError::Exchange {
                    out: out.to_path_buf(),
                    tmp,
                    err,
                });
            }
        }
        fsync_dir(&parent).map_err(TrainError::io("fsync", &parent))?;
        // `tmp` now holds the previous checkpoint
        std::fs::remove_dir_all(&tmp).map_err(TrainError::io("removing", &tmp))?;
    } else {
        std::fs::rename(&tmp, out).map_err(|err| TrainError::Rename {
            from: tmp.clone(),
            to: out.to_path_buf(),
            err,
        })?;
        fsync_dir(&parent).map_err(TrainError::io("fsync", &parent))?;
    }
    Ok(())
}

/// Removes temp directories a killed run left beside `out` (`.OUT.ckpt-*`).
pub fn clean_stale(out: &Path) {
    let (Some(name), parent) = (
        out.file_name(),
        out.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    ) else {
        return;
    };
    let prefix = format!(".{}.ckpt-", name.to_string_lossy());
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The directory to resume from: `dir` itself, or, when a crash fell between the two
/// renames of the fallback path and `dir` is missing, the `.DIR.old-*` it left.
pub fn resolve_resume(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    if !dir.exists()
        && let (Some(name), parent) = (
            dir.file_name(),
            dir.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
    {
        let prefix = format!(".{}.old-", name.to_string_lossy());
        if let Ok(rd) = std::fs::read_dir(parent) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix)
                    && e.path().join(STATE_FILE).is_file()
                {
                    return Ok(e.path());
                }
            }
        }
    }
    Err(TrainError::checkpoint(
        dir,
        format!("not a training checkpoint (no {STATE_FILE})"),
    ))
}

/// Reads `train_state.json` of a checkpoint directory.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join(STATE_FILE);
    let text = dlrs_model::files::read_text_bounded(
        &p,
        dlrs_model::files::STATE_MAX_BYTES,
        "a train_state.json",
    )
    .map_err(TrainError::io("reading", &p))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(&p, format!("not JSON: {e}")))?;
    TrainState::from_json_at(&v, &p)
}
