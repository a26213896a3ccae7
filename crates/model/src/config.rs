//! `config.json`: a DLRM architecture with the reference implementation's flag names.
//!
//! ```json
//! {"arch_mlp_bot": "13-512-256-64-16", "arch_mlp_top": "512-256-1",
//!  "arch_embedding_size": "1460-583-10131227", "arch_sparse_feature_size": 16,
//!  "arch_interaction_op": "dot", "arch_interaction_itself": false}
//! ```
//!
//! `arch_mlp_bot` starts with the number of dense features; `arch_mlp_top` leaves out its
//! input width (the interaction width, which is prepended as the reference does).
//! Unknown fields and inconsistent values are errors naming the field.
//!
//! One field is dlrs's own: `"dlrs_embedding_dtype"`, the row format of the embedding
//! tables, either one name for all tables (`"int8"`) or one per table
//! (`["fp32", "int4", ...]`); names are `fp32`, `fp16`, `int8`, `int4`. Absent means fp32,
//! and dlrs writes the field only for models that are not all fp32, so an fp32 model's
//! config.json stays the reference's.
//!
//! Another is `"dlrs_mlp_dtype"`: `"fp32"` (absent) or `"bf16"`, the MLP weights' type. With
//! `bf16`, the weights (not the biases) are stored as BF16 tensors and the layers compute in
//! bf16 with f32 accumulation (the activations are rounded to bf16 too, as PyTorch's bf16
//! autocast does).
//!
//! A third is `"dlrs_id_map"`: how each table's raw feature ids become rows, one spec for
//! all tables (`"hash"`) or one per table (`["index", "collisionless:admit=2", ...]`):
//! `index` (absent: ids are rows), `hash`, or `collisionless[:options]` (see
//! [`crate::tables::idmap`] and docs/id-maps.md). Written only when some table is not
//! `index`.

pub use dlrs_kernels::gather::RowFormat;
use serde_json::{Map, Value, json};

pub use crate::tables::idmap::IdMapSpec;

use crate::error::{ModelError, Result};

/// How the bottom-MLP output and the pooled embeddings are joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interaction {
    /// concat(x, e_1, .., e_k)
    Cat,
    /// concat(x, lower triangle of T T^T) with T = [x, e_1, .., e_k]
    Dot,
}

impl Interaction {
    pub fn name(self) -> &'static str {
        match self {
            Interaction::Cat => "cat",
            Interaction::Dot => "dot",
        }
    }
}

/// A validated DLRM architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DlrmConfig {
    /// bottom MLP widths, first = number of dense features, last = `dim`
    pub bot: Vec<usize>,
    /// top MLP widths without the interaction width; last = 1
    pub top: Vec<usize>,
    /// rows of each embedding table
    pub tables: Vec<usize>,
    /// embedding dimension D
    pub dim: usize,
    pub interaction: Interaction,
    /// include the diagonal of T T^T (`dot` only)
    pub interaction_itself: bool,
    /// row format of each table (same length as `tables`)
    pub table_formats: Vec<RowFormat>,
    /// the MLP weights' type
    pub mlp_dtype: MlpDtype,
    /// each table's id map; empty means every table is `index` (see [`DlrmConfig::id_map`])
    pub id_maps: Vec<IdMapSpec>,
}

/// The type of the MLP weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MlpDtype {
    #[default]
    F32,
    /// bfloat16 weights, f32 accumulation
    Bf16,
}

impl MlpDtype {
    pub fn name(self) -> &'static str {
        match self {
            MlpDtype::F32 => "fp32",
            MlpDtype::Bf16 => "bf16",
        }
    }

    /// The inverse of [`MlpDtype::name`].
    pub fn parse(s: &str) -> Option<Self> {
        [MlpDtype::F32, MlpDtype::Bf16]
            .into_iter()
            .find(|d| d.name() == s)
    }
}

/// The dlrs extension field naming the MLP weights' type.
pub const MLP_DTYPE_FIELD: &str = "dlrs_mlp_dtype";

/// The dlrs extension field naming the tables' row formats.
pub const DTYPE_FIELD: &str = "dlrs_embedding_dtype";

/// The dlrs extension field naming the tables' id maps.
pub const ID_MAP_FIELD: &str = "dlrs_id_map";

const FIELDS: [&str; 9] = [
    "arch_mlp_bot",
    "arch_mlp_top",
    "arch_embedding_size",
    "arch_sparse_feature_size",
    "arch_interaction_op",
    "arch_interaction_itself",
    DTYPE_FIELD,
    MLP_DTYPE_FIELD,
    ID_MAP_FIELD,
];

/// Ids are stored as u32, so a table holds at most 2^32 rows.
pub const MAX_TABLE_ROWS: usize = 1 << 32;

fn widths(field: &str, v: &Value) -> Result<Vec<usize>> {
    let parse = |s: &str| -> Result<usize> {
        s.trim()
            .parse::<usize>()
            .map_err(|_| ModelError::config(field, format!("`{s}` is not a non-negative integer")))
    };
    let out = match v {
        Value::String(s) => s.split('-').map(parse).collect::<Result<Vec<_>>>()?,
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_u64().map(|n| n as usize).ok_or_else(|| {
                    ModelError::config(field, format!("`{x}` is not a non-negative integer"))
                })
            })
            .collect::<Result<Vec<_>>>()?,
        other => {
            return Err(ModelError::config(
                field,
                format!("expected a string like \"13-512-64\", got {other}"),
            ));
        }
    };
    if let Some(i) = out.iter().position(|&w| w == 0) {
        return Err(ModelError::config(
            field,
            format!("entry {i} is 0; every width/size must be positive"),
        ));
    }
    Ok(out)
}

impl DlrmConfig {
    /// Reads and validates a `config.json` file: a regular file of at most
    /// [`CONFIG_MAX_BYTES`](crate::files::CONFIG_MAX_BYTES) (anything else is refused before
    /// it is read); config errors name the file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text =
            crate::files::read_text_bounded(path, crate::files::CONFIG_MAX_BYTES, "a config.json")
                .map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            ModelError::Config { field, msg } => ModelError::Config {
                field,
                msg: format!("{msg} (in {})", path.display()),
            },
            other => other,
        })
    }

    /// Parses and validates config.json text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| ModelError::config("<json>", e.to_string()))?;
        let Value::Object(map) = v else {
            return Err(ModelError::config(
                "<json>",
                "config.json must be a JSON object",
            ));
        };
        Self::from_map(&map)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self> {
        let mut unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| !FIELDS.contains(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(ModelError::config(
                unknown.join(", "),
                format!("unknown field (known: {})", FIELDS.join(", ")),
            ));
        }
        let get = |f: &str| map.get(f).ok_or_else(|| ModelError::config(f, "missing"));
        let bot = widths("arch_mlp_bot", get("arch_mlp_bot")?)?;
        let top = widths("arch_mlp_top", get("arch_mlp_top")?)?;
        let tables = widths("arch_embedding_size", get("arch_embedding_size")?)?;
        let dim_v = get("arch_sparse_feature_size")?;
        // a JSON number, as the reference's `--arch-sparse-feature-size` is an int: a string
        // such as "8" is refused rather than guessed at
        let dim = match dim_v {
            Value::Number(n) => n.as_u64().map(|d| d as usize),
            _ => None,
        }
        .ok_or_else(|| {
            ModelError::config(
                "arch_sparse_feature_size",
                format!("expected a positive integer (a JSON number), got {dim_v}"),
            )
        })?;
        let op = get("arch_interaction_op")?;
        let interaction = match op.as_str() {
            Some("dot") => Interaction::Dot,
            Some("cat") => Interaction::Cat,
            _ => {
                return Err(ModelError::config(
                    "arch_interaction_op",
                    format!("expected \"dot\" or \"cat\", got {op}"),
                ));
            }
        };
        let interaction_itself = match map.get("arch_interaction_itself") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(ModelError::config(
                    "arch_interaction_itself",
                    format!("expected true or false, got {other}"),
                ));
            }
        };
        let parse_fmt = |v: &Value| -> Result<RowFormat> {
            v.as_str().and_then(RowFormat::parse).ok_or_else(|| {
                ModelError::config(
                    DTYPE_FIELD,
                    format!("`{v}` is not a row format (fp32, fp16, int8, int4)"),
                )
            })
        };
        let table_formats = match map.get(DTYPE_FIELD) {
            None | Some(Value::Null) => vec![RowFormat::F32; tables.len()],
            Some(Value::Array(a)) => {
                if a.len() != tables.len() {
                    return Err(ModelError::config(
                        DTYPE_FIELD,
                        format!("{} formats for {} tables", a.len(), tables.len()),
                    ));
                }
                a.iter().map(parse_fmt).collect::<Result<Vec<_>>>()?
            }
            Some(v) => vec![parse_fmt(v)?; tables.len()],
        };
        let mlp_dtype = match map.get(MLP_DTYPE_FIELD) {
            None | Some(Value::Null) => MlpDtype::F32,
            Some(v) => v.as_str().and_then(MlpDtype::parse).ok_or_else(|| {
                ModelError::config(
                    MLP_DTYPE_FIELD,
                    format!("`{v}`: expected \"fp32\" or \"bf16\""),
                )
            })?,
        };
        let parse_map = |t: Option<usize>, v: &Value| -> Result<IdMapSpec> {
            let at = t.map_or_else(String::new, |t| format!("table {t}: "));
            let s = v.as_str().ok_or_else(|| {
                ModelError::config(
                    ID_MAP_FIELD,
                    format!("{at}`{v}` is not an id map spec string"),
                )
            })?;
            IdMapSpec::parse(s).map_err(|e| ModelError::config(ID_MAP_FIELD, format!("{at}{e}")))
        };
        let id_maps = match map.get(ID_MAP_FIELD) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => {
                if a.len() != tables.len() {
                    return Err(ModelError::config(
                        ID_MAP_FIELD,
                        format!("{} id maps for {} tables", a.len(), tables.len()),
                    ));
                }
                a.iter()
                    .enumerate()
                    .map(|(t, v)| parse_map(Some(t), v))
                    .collect::<Result<Vec<_>>>()?
            }
            Some(v) => vec![parse_map(None, v)?; tables.len()],
        };
        let c = DlrmConfig {
            bot,
            top,
            tables,
            dim,
            interaction,
            interaction_itself,
            table_formats,
            mlp_dtype,
            id_maps,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks that the fields agree with each other.
    pub fn validate(&self) -> Result<()> {
        if self.bot.len() < 2 {
            return Err(ModelError::config(
                "arch_mlp_bot",
                "needs the dense feature count and at least one layer width",
            ));
        }
        if self.bot.contains(&0) {
            return Err(ModelError::config(
                "arch_mlp_bot",
                "widths must be positive",
            ));
        }
        if self.top.is_empty() || self.top.contains(&0) {
            return Err(ModelError::config(
                "arch_mlp_top",
                "needs positive layer widths",
            ));
        }
        if *self.top.last().unwrap() != 1 {
            return Err(ModelError::config(
                "arch_mlp_top",
                format!(
                    "the last top layer must have width 1 (the click logit), got {}",
                    self.top.last().unwrap()
                ),
            ));
        }
        if self.tables.is_empty() {
            return Err(ModelError::config(
                "arch_embedding_size",
                "needs at least one table",
            ));
        }
        if let Some(t) = self
            .tables
            .iter()
            .position(|&r| r == 0 || r > MAX_TABLE_ROWS)
        {
            return Err(ModelError::config(
                "arch_embedding_size",
                format!(
                    "table {t} has {} rows; tables hold 1 ..= 2^32 rows",
                    self.tables[t]
                ),
            ));
        }
        if self.dim == 0 {
            return Err(ModelError::config(
                "arch_sparse_feature_size",
                "must be positive",
            ));
        }
        let bot_out = *self.bot.last().unwrap();
        if bot_out != self.dim {
            return Err(ModelError::config(
                "arch_sparse_feature_size",
                format!(
                    "is {} but the last bottom MLP width (arch_mlp_bot) is {bot_out}; they must be equal",
                    self.dim
                ),
            ));
        }
        if self.table_formats.len() != self.tables.len() {
            return Err(ModelError::config(
                DTYPE_FIELD,
                "needs one row format per table",
            ));
        }
        if !self.id_maps.is_empty() && self.id_maps.len() != self.tables.len() {
            return Err(ModelError::config(
                ID_MAP_FIELD,
                format!(
                    "{} id maps for {} tables",
                    self.id_maps.len(),
                    self.tables.len()
                ),
            ));
        }
        for (t, m) in self.id_maps.iter().enumerate() {
            m.check_rows(t, self.tables[t])
                .map_err(|e| ModelError::config(ID_MAP_FIELD, e))?;
        }
        if self.interaction_itself && self.interaction == Interaction::Cat {
            return Err(ModelError::config(
                "arch_interaction_itself",
                "applies only to arch_interaction_op \"dot\"",
            ));
        }
        Ok(())
    }

    /// Table `t`'s id map (`index` when the config names none).
    pub fn id_map(&self, t: usize) -> &IdMapSpec {
        static INDEX: IdMapSpec = IdMapSpec::Index;
        self.id_maps.get(t).unwrap_or(&INDEX)
    }

    /// Whether some table takes raw ids through a collisionless map (whose state the model
    /// holds: such ids need the model, not only the config, to become rows).
    pub fn has_collisionless(&self) -> bool {
        self.id_maps.iter().any(|m| m.collisionless().is_some())
    }

    /// Sets the id maps (`maps` empty or one per table); checked by [`DlrmConfig::validate`].
    pub fn with_id_maps(mut self, maps: Vec<IdMapSpec>) -> Self {
        self.id_maps = if maps.iter().all(|m| *m == IdMapSpec::Index) {
            Vec::new()
        } else {
            maps
        };
        self
    }

    /// Number of dense features per sample.
    pub fn n_dense(&self) -> usize {
        self.bot[0]
    }

    pub fn n_tables(&self) -> usize {
        self.tables.len()
    }

    /// Width of the bottom output plus pooled embeddings, `[x, e_1..e_k]` per sample.
    pub fn features_width(&self) -> usize {
        self.dim * (self.tables.len() + 1)
    }

    /// Width of the top MLP input.
    pub fn interaction_width(&self) -> usize {
        match self.interaction {
            Interaction::Cat => self.features_width(),
            Interaction::Dot => {
                self.dim
                    + dlrs_kernels::interaction::pair_count(
                        self.tables.len() + 1,
                        self.interaction_itself,
                    )
            }
        }
    }

    /// Top MLP widths with the interaction width prepended.
    pub fn top_full(&self) -> Vec<usize> {
        let mut v = vec![self.interaction_width()];
        v.extend_from_slice(&self.top);
        v
    }

    /// Multiply-adds per sample in the MLPs, times two.
    pub fn mlp_flops_per_sample(&self) -> f64 {
        self.bottom_mlp_flops_per_sample() + self.top_mlp_flops_per_sample()
    }

    /// Multiply-adds per sample in the bottom MLP, times two.
    pub fn bottom_mlp_flops_per_sample(&self) -> f64 {
        layer_flops(&self.bot)
    }

    /// Multiply-adds per sample in the top MLP (from the interaction's width), times two.
    pub fn top_mlp_flops_per_sample(&self) -> f64 {
        layer_flops(&self.top_full())
    }

    /// Embedding parameters (all tables).
    pub fn embedding_params(&self) -> u128 {
        self.tables
            .iter()
            .map(|&r| r as u128 * self.dim as u128)
            .sum()
    }

    fn dash(v: &[usize]) -> String {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Sets every table's row format.
    pub fn with_format(mut self, fmt: RowFormat) -> Self {
        self.table_formats = vec![fmt; self.tables.len()];
        self
    }

    /// Sets the MLP weights' type.
    pub fn with_mlp_dtype(mut self, dtype: MlpDtype) -> Self {
        self.mlp_dtype = dtype;
        self
    }

    /// config.json text (the reference flags, plus the row formats when not all fp32).
    pub fn to_json_string(&self) -> String {
        let mut v = json!({
            "arch_mlp_bot": Self::dash(&self.bot),
            "arch_mlp_top": Self::dash(&self.top),
            "arch_embedding_size": Self::dash(&self.tables),
            "arch_sparse_feature_size": self.dim,
            "arch_interaction_op": self.interaction.name(),
            "arch_interaction_itself": self.interaction_itself,
        });
        if self.table_formats.iter().any(|f| *f != RowFormat::F32) {
            let first = self.table_formats[0];
            v[DTYPE_FIELD] = if self.table_formats.iter().all(|f| *f == first) {
                json!(first.name())
            } else {
                json!(
                    self.table_formats
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                )
            };
        }
        if self.mlp_dtype != MlpDtype::F32 {
            v[MLP_DTYPE_FIELD] = json!(self.mlp_dtype.name());
        }
        if self.id_maps.iter().any(|m| *m != IdMapSpec::Index) {
            let first = self.id_maps[0];
            v[ID_MAP_FIELD] = if self.id_maps.iter().all(|m| *m == first) {
                json!(first.name())
            } else {
                json!(self.id_maps.iter().map(|m| m.name()).collect::<Vec<_>>())
            };
        }
        serde_json::to_string_pretty(&v).expect("a JSON value serializes") + "\n"
    }
}

/// Two FLOPs per multiply-add of the layers `widths[0] -> widths[1] -> ...`.
fn layer_flops(widths: &[usize]) -> f64 {
    widths.windows(2).map(|p| 2.0 * (p[0] * p[1]) as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"arch_mlp_bot": "13-512-256-64-16", "arch_mlp_top": "512-256-1",
        "arch_embedding_size": "1460-583-10131227", "arch_sparse_feature_size": 16,
        "arch_interaction_op": "dot", "arch_interaction_itself": false}"#;

    #[test]
    fn parses_reference_flags() {
        let c = DlrmConfig::from_json_str(OK).unwrap();
        assert_eq!(c.bot, vec![13, 512, 256, 64, 16]);
        assert_eq!(c.tables, vec![1460, 583, 10131227]);
        assert_eq!(c.interaction_width(), 16 + 6); // 4 features -> 6 pairs
        assert_eq!(c.top_full(), vec![22, 512, 256, 1]);
        assert_eq!(DlrmConfig::from_json_str(&c.to_json_string()).unwrap(), c);
    }

    fn err(text: &str) -> String {
        DlrmConfig::from_json_str(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            err(&OK.replace("\"arch_interaction_itself\": false", "\"arch_foo\": 1"))
                .contains("`arch_foo`")
        );
        assert!(
            err(&OK.replace(
                "\"arch_sparse_feature_size\": 16",
                "\"arch_sparse_feature_size\": 8"
            ))
            .contains("arch_sparse_feature_size")
        );
        // the schema's number is a number: "16" as a string is refused, not parsed
        assert_eq!(
            err(&OK.replace(
                "\"arch_sparse_feature_size\": 16",
                "\"arch_sparse_feature_size\": \"16\""
            )),
            "config: field `arch_sparse_feature_size`: expected a positive integer (a JSON number), got \"16\""
        );
        assert!(err(&OK.replace("512-256-1", "512-256-2")).contains("arch_mlp_top"));
        assert!(err(&OK.replace("\"dot\"", "\"sum\"")).contains("arch_interaction_op"));
        assert!(err(&OK.replace("1460-583", "1460-x")).contains("arch_embedding_size"));
        assert!(err(&OK.replace("1460-583", "1460-0")).contains("arch_embedding_size"));
        assert!(
            err(&OK.replace("\"arch_mlp_bot\": \"13-512-256-64-16\",", ""))
                .contains("`arch_mlp_bot`: missing")
        );
        assert!(err("[1]").contains("JSON object"));
        assert!(err("{").contains("<json>"));
    }

    #[test]
    fn row_formats_one_or_per_table() {
        let all = DlrmConfig::from_json_str(&OK.replace(
            "\"arch_interaction_itself\": false",
            "\"dlrs_embedding_dtype\": \"int8\"",
        ))
        .unwrap();
        assert_eq!(all.table_formats, vec![RowFormat::Int8; 3]);
        assert!(
            all.to_json_string()
                .contains("\"dlrs_embedding_dtype\": \"int8\"")
        );
        let per = OK.replace(
            "\"arch_interaction_itself\": false",
            "\"dlrs_embedding_dtype\": [\"fp32\", \"int4\", \"fp16\"]",
        );
        let per = DlrmConfig::from_json_str(&per).unwrap();
        assert_eq!(
            per.table_formats,
            vec![RowFormat::F32, RowFormat::Int4, RowFormat::F16]
        );
        assert_eq!(
            DlrmConfig::from_json_str(&per.to_json_string()).unwrap(),
            per
        );
        let fp32 = DlrmConfig::from_json_str(OK).unwrap();
        assert!(!fp32.to_json_string().contains("dlrs_embedding_dtype"));
        assert!(
            err(&OK.replace(
                "\"arch_interaction_itself\": false",
                "\"dlrs_embedding_dtype\": \"int3\""
            ))
            .contains("dlrs_embedding_dtype")
        );
        assert!(
            err(&OK.replace(
                "\"arch_interaction_itself\": false",
                "\"dlrs_embedding_dtype\": [\"int8\"]"
            ))
            .contains("1 formats for 3 tables")
        );
    }

    #[test]
    fn mlp_dtype_round_trips_and_is_checked() {
        let bf16 = OK.replace(
            "\"arch_interaction_itself\": false",
            "\"dlrs_mlp_dtype\": \"bf16\"",
        );
        let c = DlrmConfig::from_json_str(&bf16).unwrap();
        assert_eq!(c.mlp_dtype, MlpDtype::Bf16);
        assert_eq!(DlrmConfig::from_json_str(&c.to_json_string()).unwrap(), c);
        let fp32 = DlrmConfig::from_json_str(OK).unwrap();
        assert_eq!(fp32.mlp_dtype, MlpDtype::F32);
        assert!(!fp32.to_json_string().contains("dlrs_mlp_dtype"));
        assert!(
            err(&OK.replace(
                "\"arch_interaction_itself\": false",
                "\"dlrs_mlp_dtype\": \"fp8\""
            ))
            .contains("`dlrs_mlp_dtype`")
        );
    }

    #[test]
    fn id_maps_one_or_per_table_and_errors_name_the_table() {
        let with = |v: &str| {
            OK.replace(
                "\"arch_interaction_itself\": false",
                &format!("\"dlrs_id_map\": {v}"),
            )
        };
        let all = DlrmConfig::from_json_str(&with("\"hash\"")).unwrap();
        assert_eq!(all.id_maps, vec![IdMapSpec::Hash; 3]);
        assert_eq!(
            DlrmConfig::from_json_str(&all.to_json_string()).unwrap(),
            all
        );
        assert!(all.to_json_string().contains("\"dlrs_id_map\": \"hash\""));
        let per = DlrmConfig::from_json_str(&with(
            "[\"index\", \"collisionless:admit=2,ttl=5\", \"hash\"]",
        ))
        .unwrap();
        assert_eq!(*per.id_map(0), IdMapSpec::Index);
        assert_eq!(per.id_map(1).collisionless().unwrap().admit, 2);
        assert!(per.has_collisionless());
        assert_eq!(
            DlrmConfig::from_json_str(&per.to_json_string()).unwrap(),
            per
        );
        let plain = DlrmConfig::from_json_str(OK).unwrap();
        assert!(!plain.to_json_string().contains("dlrs_id_map"));
        assert_eq!(*plain.id_map(2), IdMapSpec::Index);
        assert!(err(&with("[\"hash\"]")).contains("1 id maps for 3 tables"));
        let e = err(&with("[\"index\", \"hash\", \"collisionless:admit=99\"]"));
        assert!(
            e.contains("`dlrs_id_map`") && e.contains("table 2") && e.contains("1..=15"),
            "{e}"
        );
        assert!(err(&with("7")).contains("not an id map spec"));
        let one_row = OK.replace("1460-583-10131227", "1460-1-5").replace(
            "\"arch_interaction_itself\": false",
            "\"dlrs_id_map\": \"collisionless:miss=default\"",
        );
        assert!(err(&one_row).contains("table 1: miss=default"));
    }

    #[test]
    fn itself_only_with_dot() {
        let cat = OK.replace("\"dot\"", "\"cat\"").replace(
            "\"arch_interaction_itself\": false",
            "\"arch_interaction_itself\": true",
        );
        assert!(err(&cat).contains("arch_interaction_itself"));
    }
}
