//! A validated batch: dense features `[B, n_dense]` plus, per table, a jagged list of bags
//! (offsets `[B + 1]` and ids), the layout of TorchRec's `KeyedJaggedTensor` per key.
//!
//! Validation happens once, here, at the edge: dense values finite, the right number of
//! tables, offsets that start at 0 and end at the id count, every id inside its table (or,
//! through [`Batch::from_parts_ids_checked`], checked by a caller as it built the bags). The
//! kernels downstream trust it. Nothing is ever clamped or remapped.
//!
//! A batch holds its values ([`Values`]) either as its own `Vec`s or shared with the buffer
//! a caller already has (a NumPy array or a torch tensor handed over from Python), so an
//! input need not be copied to be run.

use std::ops::Deref;
use std::sync::Arc;

use serde_json::Value;

use crate::config::DlrmConfig;
use crate::error::{ModelError, Result};

/// The values of a batch's field: its own `Vec`, or a slice shared with whoever holds the
/// memory (the `Arc` keeps it alive; no copy is made). Reads go through `Deref<[T]>`;
/// [`Values::to_mut`] turns shared values into owned ones (a copy) before a write.
#[derive(Clone)]
pub enum Values<T: 'static> {
    Owned(Vec<T>),
    /// memory owned elsewhere, e.g. a Python buffer; it must not change while the batch
    /// lives (the owner's contract)
    Shared(Arc<dyn AsRef<[T]> + Send + Sync>),
}

impl<T: Clone> Values<T> {
    /// The values as a `Vec` to change, copying shared values first.
    pub fn to_mut(&mut self) -> &mut Vec<T> {
        if let Values::Shared(s) = self {
            *self = Values::Owned(s.as_ref().as_ref().to_vec());
        }
        match self {
            Values::Owned(v) => v,
            Values::Shared(_) => unreachable!("made owned above"),
        }
    }

    /// Keeps the first `n` values (shared values: a copy of those `n`).
    pub fn truncate(&mut self, n: usize) {
        match self {
            Values::Owned(v) => v.truncate(n),
            Values::Shared(s) => {
                let s = s.as_ref().as_ref();
                *self = Values::Owned(s[..n.min(s.len())].to_vec())
            }
        }
    }
}

impl<T> Deref for Values<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Values::Owned(v) => v,
            Values::Shared(s) => s.as_ref().as_ref(),
        }
    }
}

impl<T> Default for Values<T> {
    fn default() -> Self {
        Values::Owned(Vec::new())
    }
}

impl<T> From<Vec<T>> for Values<T> {
    fn from(v: Vec<T>) -> Self {
        Values::Owned(v)
    }
}

impl<T> FromIterator<T> for Values<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        Values::Owned(it.into_iter().collect())
    }
}

impl<'a, T> IntoIterator for &'a Values<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Values<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: PartialEq> PartialEq for Values<T> {
    fn eq(&self, o: &Self) -> bool {
        self[..] == o[..]
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for Values<T> {
    fn eq(&self, o: &Vec<T>) -> bool {
        self[..] == o[..]
    }
}

/// The bags of one table for a whole batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bags {
    /// `B + 1` entries, `offsets[0] = 0`, non-decreasing, `offsets[B] = ids.len()`
    pub offsets: Values<u32>,
    pub ids: Values<u32>,
}

/// A batch of samples that fits a config.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    size: usize,
    dense: Values<f32>,
    bags: Vec<Bags>,
}

/// One sample, as parsed from a JSON line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub dense: Vec<f32>,
    pub sparse: Vec<Vec<u32>>,
    /// click label (0 or 1) when the sample carries one
    pub label: Option<f32>,
}

impl Batch {
    /// Validates parts built elsewhere (a server's tensors, a generator).
    pub fn from_parts(
        cfg: &DlrmConfig,
        size: usize,
        dense: impl Into<Values<f32>>,
        bags: Vec<Bags>,
    ) -> Result<Self> {
        Self::validate(cfg, size, dense.into(), bags, true)
    }

    /// [`Batch::from_parts`] for a caller that has already range-checked every id as it
    /// built the bags (the KServe parser checks them while narrowing them to `u32`): checks
    /// the dense values, the table count and the offsets, but not the ids again.
    ///
    /// Contract: every id of table `t` is below `cfg.tables[t]` (debug builds assert it).
    /// Breaking it is not undefined behaviour (the embedding kernels assert each id), but it
    /// turns what should have been a refused request into a panic in the forward pass.
    pub fn from_parts_ids_checked(
        cfg: &DlrmConfig,
        size: usize,
        dense: impl Into<Values<f32>>,
        bags: Vec<Bags>,
    ) -> Result<Self> {
        debug_assert!(
            bags.iter()
                .zip(&cfg.tables)
                .all(|(b, &rows)| dlrs_kernels::ids::ids_below_ref(&b.ids, rows)),
            "from_parts_ids_checked: an id out of range"
        );
        Self::validate(cfg, size, dense.into(), bags, false)
    }

    /// The checks of [`Batch::from_parts`]; the ids' range only with `check_ids`.
    fn validate(
        cfg: &DlrmConfig,
        size: usize,
        dense: Values<f32>,
        bags: Vec<Bags>,
        check_ids: bool,
    ) -> Result<Self> {
        let nd = cfg.n_dense();
        if dense.len() != size * nd {
            return Err(ModelError::input(
                "dense",
                format!(
                    "{} values for {size} samples of {nd} dense features",
                    dense.len()
                ),
            ));
        }
        // a check without early exit first (it vectorizes); the position only on failure
        if !dense.iter().fold(true, |ok, v| ok & v.is_finite())
            && let Some(i) = dense.iter().position(|v| !v.is_finite())
        {
            return Err(ModelError::input(
                format!("dense[{}][{}]", i / nd, i % nd),
                "not a finite number",
            ));
        }
        if bags.len() != cfg.n_tables() {
            return Err(ModelError::input(
                "sparse",
                format!("{} tables, the model has {}", bags.len(), cfg.n_tables()),
            ));
        }
        for (t, b) in bags.iter().enumerate() {
            check_offsets(t, &b.offsets, size, b.ids.len())?;
            let rows = cfg.tables[t];
            if check_ids
                && !dlrs_kernels::ids::ids_below(&b.ids, rows)
                && let Some(j) = b.ids.iter().position(|&id| id as usize >= rows)
            {
                return Err(id_out_of_range(t, &b.offsets, j, b.ids[j].into(), rows));
            }
        }
        Ok(Batch { size, dense, bags })
    }

    /// An empty batch to push samples into.
    pub fn empty(cfg: &DlrmConfig) -> Self {
        Batch {
            size: 0,
            dense: Values::default(),
            bags: vec![
                Bags {
                    offsets: vec![0].into(),
                    ids: Values::default()
                };
                cfg.n_tables()
            ],
        }
    }

    /// Appends a sample after validating it against `cfg` (errors name the field).
    pub fn push(&mut self, cfg: &DlrmConfig, s: &Sample) -> Result<()> {
        validate_sample(cfg, s)?;
        for (b, ids) in self.bags.iter_mut().zip(&s.sparse) {
            let end = b.ids.len() + ids.len();
            if end > u32::MAX as usize {
                return Err(ModelError::input(
                    "sparse",
                    "more than 2^32 ids per table in one batch",
                ));
            }
            b.ids.to_mut().extend_from_slice(ids);
            b.offsets.to_mut().push(end as u32);
        }
        self.dense.to_mut().extend_from_slice(&s.dense);
        self.size += 1;
        Ok(())
    }

    /// Replaces table `t`'s bags (the rows a collisionless map resolved), checking them
    /// as [`Batch::from_parts`] does.
    pub fn set_bags(&mut self, cfg: &DlrmConfig, t: usize, bags: Bags) -> Result<()> {
        if t >= self.bags.len() {
            return Err(ModelError::input(
                "sparse",
                format!(
                    "table {t} does not exist (the model has {})",
                    self.bags.len()
                ),
            ));
        }
        check_offsets(t, &bags.offsets, self.size, bags.ids.len())?;
        let rows = cfg.tables[t];
        if let Some(j) = bags.ids.iter().position(|&id| id as usize >= rows) {
            return Err(id_out_of_range(
                t,
                &bags.offsets,
                j,
                bags.ids[j].into(),
                rows,
            ));
        }
        self.bags[t] = bags;
        Ok(())
    }

    pub fn clear(&mut self) {
        self.size = 0;
        self.dense.truncate(0);
        for b in &mut self.bags {
            b.offsets.truncate(1);
            b.ids.truncate(0);
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }
    pub fn dense(&self) -> &[f32] {
        &self.dense
    }
    pub fn bags(&self) -> &[Bags] {
        &self.bags
    }
    /// Total ids over all tables.
    pub fn id_count(&self) -> usize {
        self.bags.iter().map(|b| b.ids.len()).sum()
    }
}

/// Checks table `t`'s offsets for a batch of `size` bags over `n_ids` ids: `size + 1`
/// entries, starting at 0, non-decreasing, ending at `n_ids`.
pub fn check_offsets(t: usize, offsets: &[u32], size: usize, n_ids: usize) -> Result<()> {
    if offsets.len() != size + 1 || offsets[0] != 0 {
        return Err(ModelError::input(
            format!("offsets[{t}]"),
            format!("need {} entries starting at 0", size + 1),
        ));
    }
    if offsets.windows(2).any(|w| w[0] > w[1]) || offsets[size] as usize != n_ids {
        return Err(ModelError::input(
            format!("offsets[{t}]"),
            format!("must be non-decreasing and end at the id count {n_ids}"),
        ));
    }
    Ok(())
}

/// The error of id `id`, the `j`-th of table `t` (bags as `offsets` says, already checked
/// by [`check_offsets`]), which is not below the table's `rows`: names the table and the
/// sample.
pub fn id_out_of_range(t: usize, offsets: &[u32], j: usize, id: i64, rows: usize) -> ModelError {
    let s = offsets
        .partition_point(|&o| o as usize <= j)
        .saturating_sub(1);
    ModelError::input(
        format!("sparse[{t}] of sample {s}"),
        format!("id {id} out of range for table {t} with {rows} rows"),
    )
}

fn validate_sample(cfg: &DlrmConfig, s: &Sample) -> Result<()> {
    if s.dense.len() != cfg.n_dense() {
        return Err(ModelError::input(
            "dense",
            format!(
                "{} values, the model takes {}",
                s.dense.len(),
                cfg.n_dense()
            ),
        ));
    }
    if let Some(i) = s.dense.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::input(
            format!("dense[{i}]"),
            "not a finite number",
        ));
    }
    if s.sparse.len() != cfg.n_tables() {
        return Err(ModelError::input(
            "sparse",
            format!(
                "{} tables, the model has {}",
                s.sparse.len(),
                cfg.n_tables()
            ),
        ));
    }
    for (t, ids) in s.sparse.iter().enumerate() {
        if let Some(j) = ids.iter().position(|&id| id as usize >= cfg.tables[t]) {
            return Err(ModelError::input(
                format!("sparse[{t}][{j}]"),
                format!(
                    "id {} out of range for table {t} with {} rows",
                    ids[j], cfg.tables[t]
                ),
            ));
        }
    }
    Ok(())
}

/// Parses one JSON line `{"dense": [..], "sparse": [[..], ..], "label": 0|1}` (label
/// optional) and validates it against `cfg`. Errors name the field; the caller attaches
/// the line number with [`ModelError::at_line`].
///
/// A bag of an `index` table holds rows; a bag of a `hash` table holds raw ids (integers
/// 0 ..= 2^64-1, read exactly, or strings of at most
/// [`MAX_STRING_ID_BYTES`](crate::tables::idmap::MAX_STRING_ID_BYTES) bytes), hashed to rows
/// here. Raw ids of a `collisionless` table need the model's map: use
/// [`crate::Model::parse_sample`] or [`parse_sample_keys`]; here they are an error.
pub fn parse_sample(line: &str, cfg: &DlrmConfig) -> Result<Sample> {
    let (s, keys) = parse_sample_keys(line, cfg)?;
    if let Some(t) = keys.iter().position(|k| !k.is_empty()) {
        return Err(ModelError::input(
            format!("sparse[{t}]"),
            format!(
                "table {t} has a collisionless id map: its raw ids need the model's map (this path takes rows)"
            ),
        ));
    }
    Ok(s)
}

/// [`parse_sample`] that also takes the raw ids of collisionless tables: returns the sample
/// (whose bags of collisionless tables are empty) and, per table, the keys of its
/// collisionless map ([`collisionless_key`](crate::tables::idmap::collisionless_key);
/// empty for other tables), to be turned into rows by the model.
pub fn parse_sample_keys(line: &str, cfg: &DlrmConfig) -> Result<(Sample, Vec<Vec<u64>>)> {
    use crate::tables::idmap::{IdMapSpec, collisionless_key, hash_row, raw_id_from_json};
    let v: Value = serde_json::from_str(line)
        .map_err(|e| ModelError::input("", format!("malformed JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(ModelError::input(
            "",
            "a sample must be a JSON object with \"dense\" and \"sparse\"",
        ));
    };
    if let Some(k) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "dense" | "sparse" | "label"))
    {
        return Err(ModelError::input(
            k.clone(),
            "unknown field (a sample has dense, sparse and optional label)",
        ));
    }
    let dense_v = map
        .get("dense")
        .ok_or_else(|| ModelError::input("dense", "missing"))?;
    let Value::Array(dense_a) = dense_v else {
        return Err(ModelError::input("dense", "must be an array of numbers"));
    };
    let mut dense = Vec::with_capacity(dense_a.len());
    for (i, x) in dense_a.iter().enumerate() {
        let f = x.as_f64().ok_or_else(|| {
            ModelError::input(format!("dense[{i}]"), format!("`{x}` is not a number"))
        })?;
        let f32v = f as f32;
        if !f32v.is_finite() {
            return Err(ModelError::input(
                format!("dense[{i}]"),
                format!("{f} is not a finite f32"),
            ));
        }
        dense.push(f32v);
    }
    let sparse_v = map
        .get("sparse")
        .ok_or_else(|| ModelError::input("sparse", "missing"))?;
    let Value::Array(sparse_a) = sparse_v else {
        return Err(ModelError::input(
            "sparse",
            "must be an array with one array of ids per table",
        ));
    };
    let mut sparse = Vec::with_capacity(sparse_a.len());
    let mut keys = Vec::with_capacity(sparse_a.len());
    for (t, bag) in sparse_a.iter().enumerate() {
        let Value::Array(ids_a) = bag else {
            return Err(ModelError::input(
                format!("sparse[{t}]"),
                "must be an array of ids",
            ));
        };
        let rows = cfg.tables.get(t).copied().unwrap_or(usize::MAX);
        let spec = cfg.id_map(t);
        let mut ids = Vec::with_capacity(ids_a.len());
        let mut tkeys = Vec::new();
        for (j, x) in ids_a.iter().enumerate() {
            let field = || format!("sparse[{t}][{j}]");
            match spec {
                IdMapSpec::Index => {
                    let id = x.as_u64().ok_or_else(|| {
                        ModelError::input(
                            field(),
                            format!("`{x}` is not a non-negative integer id"),
                        )
                    })?;
                    if id >= rows as u64 {
                        return Err(ModelError::input(
                            field(),
                            format!("id {id} out of range for table {t} with {rows} rows"),
                        ));
                    }
                    ids.push(id as u32);
                }
                IdMapSpec::Hash => ids.push(hash_row(raw_id_from_json(x, t, &field)?, t, rows)),
                IdMapSpec::Collisionless(_) => {
                    tkeys.push(collisionless_key(raw_id_from_json(x, t, &field)?, t))
                }
            }
        }
        sparse.push(ids);
        keys.push(tkeys);
    }
    let label = match map.get("label") {
        None => None,
        Some(x) => match x.as_f64() {
            Some(l) if l == 0.0 || l == 1.0 => Some(l as f32),
            _ => return Err(ModelError::input("label", format!("`{x}` is not 0 or 1"))),
        },
    };
    let s = Sample {
        dense,
        sparse,
        label,
    };
    validate_sample(cfg, &s)?;
    Ok((s, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DlrmConfig {
        DlrmConfig::from_json_str(
            r#"{"arch_mlp_bot":"2-4","arch_mlp_top":"3-1","arch_embedding_size":"5-1",
                "arch_sparse_feature_size":4,"arch_interaction_op":"cat"}"#,
        )
        .unwrap()
    }

    fn err(line: &str) -> String {
        parse_sample(line, &cfg())
            .unwrap_err()
            .at_line(7)
            .to_string()
    }

    #[test]
    fn good_sample_with_empty_bag() {
        let s = parse_sample(
            r#"{"dense":[1,2.5],"sparse":[[4,0,4],[]],"label":1}"#,
            &cfg(),
        )
        .unwrap();
        assert_eq!(s.sparse, vec![vec![4, 0, 4], vec![]]);
        let mut b = Batch::empty(&cfg());
        b.push(&cfg(), &s).unwrap();
        b.push(&cfg(), &s).unwrap();
        assert_eq!(b.bags()[0].offsets, vec![0, 3, 6]);
        assert_eq!(b.bags()[1].offsets, vec![0, 0, 0]);
        assert_eq!(
            Batch::from_parts(&cfg(), 2, b.dense().to_vec(), b.bags().to_vec()).unwrap(),
            b
        );
    }

    #[test]
    fn bad_samples_name_line_and_field() {
        let cases = [
            (
                r#"{"dense":[1,2],"sparse":[[5],[]]}"#,
                "line 7: field `sparse[0][0]`: id 5 out of range",
            ),
            (
                r#"{"dense":[1,2],"sparse":[[0],[1]]}"#,
                "field `sparse[1][0]`: id 1 out of range",
            ),
            (
                r#"{"dense":[1,2],"sparse":[[-1],[]]}"#,
                "field `sparse[0][0]`: `-1` is not a non-negative",
            ),
            (
                r#"{"dense":[1,2],"sparse":[[1.5],[]]}"#,
                "field `sparse[0][0]`",
            ),
            (
                r#"{"dense":[1],"sparse":[[1],[]]}"#,
                "field `dense`: 1 values, the model takes 2",
            ),
            (r#"{"dense":[1,"a"],"sparse":[[1],[]]}"#, "field `dense[1]`"),
            (
                r#"{"dense":[1,1e39],"sparse":[[1],[]]}"#,
                "field `dense[1]`: 1000000000000000000000000000000000000000 is not a finite f32",
            ),
            (
                r#"{"dense":[1,2],"sparse":[[1]]}"#,
                "field `sparse`: 1 tables, the model has 2",
            ),
            (
                r#"{"dense":[1,2],"sparse":[[1],[]],"labl":1}"#,
                "field `labl`: unknown",
            ),
            (
                r#"{"dense":[1,2],"sparse":[[1],[]],"label":2}"#,
                "field `label`",
            ),
            (r#"{"dense":[1,2]}"#, "field `sparse`: missing"),
            (
                r#"{"dense":[1,NaN],"sparse":[[1],[]]}"#,
                "line 7: malformed JSON",
            ),
            (r#"[1]"#, "line 7: a sample must be a JSON object"),
        ];
        for (line, want) in cases {
            let got = err(line);
            assert!(
                got.starts_with("line 7") && got.contains(want),
                "{line}: got `{got}`, want `{want}`"
            );
        }
    }

    #[test]
    fn raw_ids_of_hash_and_collisionless_tables() {
        let c = DlrmConfig::from_json_str(
            r#"{"arch_mlp_bot":"2-4","arch_mlp_top":"3-1","arch_embedding_size":"5-1000-7",
                "arch_sparse_feature_size":4,"arch_interaction_op":"cat",
                "dlrs_id_map":["index","hash","collisionless"]}"#,
        )
        .unwrap();
        use crate::tables::idmap::{RawId, hash_row};
        let (a, b) = ((1u64 << 62) + 2, (1u64 << 62) + 3);
        let line = format!(
            r#"{{"dense":[1,2],"sparse":[[4],[{a},{b},"user-9",18446744073709551615],[{a},{b},"x"]]}}"#
        );
        let (s, keys) = parse_sample_keys(&line, &c).unwrap();
        assert_eq!(
            s.sparse,
            vec![
                vec![4],
                vec![
                    hash_row(RawId::Int(a), 1, 1000),
                    hash_row(RawId::Int(b), 1, 1000),
                    hash_row(RawId::Str("user-9"), 1, 1000),
                    hash_row(RawId::Int(u64::MAX), 1, 1000)
                ],
                vec![]
            ]
        );
        assert_eq!(keys[2][..2], [a, b]);
        assert_eq!(keys[2].len(), 3);
        assert!(keys[0].is_empty() && keys[1].is_empty());
        // the row-only parser refuses what it cannot resolve, naming the table
        let e = parse_sample(&line, &c).unwrap_err().to_string();
        assert!(
            e.contains("sparse[2]") && e.contains("collisionless"),
            "{e}"
        );
        for (bad, want) in [
            (r#"[[0],[-3],[]]"#, "sparse[1][0]"),
            (r#"[[0],[1.5],[]]"#, "sparse[1][0]"),
            (r#"[[0],[],[true]]"#, "sparse[2][0]"),
            (r#"[[0],[],[18446744073709551616]]"#, "sparse[2][0]"),
            (r#"[["a"],[],[]]"#, "sparse[0][0]"),
        ] {
            let line = format!(r#"{{"dense":[1,2],"sparse":{bad}}}"#);
            let e = parse_sample_keys(&line, &c).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    /// One sample's bags for `cfg()`: id 4 in table 0, none in table 1.
    fn one_sample_bags() -> Vec<Bags> {
        vec![
            Bags {
                offsets: vec![0, 1].into(),
                ids: vec![4].into(),
            },
            Bags {
                offsets: vec![0, 0].into(),
                ids: vec![].into(),
            },
        ]
    }

    #[test]
    fn from_parts_rejects_bad_offsets_and_ids() {
        let c = cfg();
        let ok = one_sample_bags;
        assert!(Batch::from_parts(&c, 1, vec![0.0, 1.0], ok()).is_ok());
        let mut b = ok();
        b[0].ids.to_mut()[0] = 5;
        assert!(
            Batch::from_parts(&c, 1, vec![0.0, 1.0], b)
                .unwrap_err()
                .to_string()
                .contains("sample 0")
        );
        let mut b = ok();
        b[0].offsets = vec![0, 2].into();
        assert!(
            Batch::from_parts(&c, 1, vec![0.0, 1.0], b)
                .unwrap_err()
                .to_string()
                .contains("offsets[0]")
        );
        assert!(
            Batch::from_parts(&c, 1, vec![0.0, f32::NAN], ok())
                .unwrap_err()
                .to_string()
                .contains("dense[0][1]")
        );
        assert!(Batch::from_parts(&c, 1, vec![0.0], ok()).is_err());
    }

    #[test]
    fn from_parts_ids_checked_checks_all_but_the_ids() {
        let c = cfg();
        let ok = one_sample_bags;
        let err = |dense: Vec<f32>, bags: Vec<Bags>| {
            Batch::from_parts_ids_checked(&c, 1, dense, bags)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            Batch::from_parts_ids_checked(&c, 1, vec![0.0, 1.0], ok()).unwrap(),
            Batch::from_parts(&c, 1, vec![0.0, 1.0], ok()).unwrap()
        );
        let mut b = ok();
        b[0].offsets = vec![0, 2].into();
        assert!(err(vec![0.0, 1.0], b).contains("offsets[0]"));
        let mut b = ok();
        b[1].offsets = vec![1, 1].into();
        assert!(err(vec![0.0, 1.0], b).contains("offsets[1]"));
        assert!(err(vec![0.0, 1.0], ok()[..1].to_vec()).contains("1 tables"));
        assert!(err(vec![0.0, f32::NAN], ok()).contains("dense[0][1]"));
        assert!(err(vec![0.0], ok()).contains("dense"));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "an id out of range")]
    fn from_parts_ids_checked_asserts_the_contract_in_debug_builds() {
        let mut bags = one_sample_bags();
        bags[0].ids[0] = 5; // table 0 has 5 rows
        let _ = Batch::from_parts_ids_checked(&cfg(), 1, vec![0.0, 1.0], bags);
    }
}
