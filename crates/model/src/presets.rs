//! Built-in model shapes: the DeepRecSys RMC classes and the reference Criteo Kaggle recipe.

use crate::config::{DlrmConfig, Interaction, RowFormat};
use crate::error::{ModelError, Result};

/// A preset: an architecture plus the number of ids per table per sample its synthetic
/// inputs use (the "lookups" of DeepRecSys).
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub config: DlrmConfig,
    pub ids_per_table: usize,
}

/// Criteo Kaggle (day split) table sizes, as the reference DLRM's preprocessing produces.
pub const CRITEO_KAGGLE_TABLES: [usize; 26] = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
];

/// Criteo Terabyte table sizes as the MLPerf DLRM v1 recipe produces them (days 0-23,
/// `--max-ind-range=40000000`): 187,767,399 rows in all.
pub const CRITEO_TERABYTE_TABLES: [usize; 26] = [
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10, 2208,
    11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
];

const NAMES: [&str; 5] = ["rmc1", "rmc2", "rmc3", "criteo-kaggle", "criteo-terabyte"];

pub fn names() -> Vec<&'static str> {
    NAMES.to_vec()
}

fn cfg(
    bot: &[usize],
    top: &[usize],
    tables: Vec<usize>,
    dim: usize,
    op: Interaction,
) -> DlrmConfig {
    DlrmConfig {
        table_formats: vec![RowFormat::F32; tables.len()],
        bot: bot.to_vec(),
        top: top.to_vec(),
        tables,
        dim,
        interaction: op,
        interaction_itself: false,
        mlp_dtype: Default::default(),
        id_maps: Vec::new(),
    }
}

/// Looks a preset up by name.
pub fn preset(name: &str) -> Result<Preset> {
    let (config, ids_per_table, name) = match name {
        "rmc1" => (
            cfg(
                &[128, 64, 32],
                &[256, 64, 1],
                vec![4_000_000; 8],
                32,
                Interaction::Cat,
            ),
            80,
            "rmc1",
        ),
        "rmc2" => (
            cfg(
                &[256, 128, 64],
                &[128, 64, 1],
                vec![500_000; 32],
                64,
                Interaction::Cat,
            ),
            120,
            "rmc2",
        ),
        "rmc3" => (
            cfg(
                &[2560, 1024, 256, 32],
                &[512, 256, 1],
                vec![2_000_000; 10],
                32,
                Interaction::Cat,
            ),
            20,
            "rmc3",
        ),
        "criteo-kaggle" => (
            cfg(
                &[13, 512, 256, 64, 16],
                &[512, 256, 1],
                CRITEO_KAGGLE_TABLES.to_vec(),
                16,
                Interaction::Dot,
            ),
            1,
            "criteo-kaggle",
        ),
        // MLPerf DLRM v1: ~24 billion parameters, ~96 GB in fp32, ~12.8 GB in int4
        "criteo-terabyte" => (
            cfg(
                &[13, 512, 256, 128],
                &[1024, 1024, 512, 256, 1],
                CRITEO_TERABYTE_TABLES.to_vec(),
                128,
                Interaction::Dot,
            ),
            1,
            "criteo-terabyte",
        ),
        other => return Err(ModelError::UnknownPreset(other.to_string())),
    };
    config.validate().expect("presets are valid");
    Ok(Preset {
        name,
        config,
        ids_per_table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_shapes() {
        for n in names() {
            preset(n).unwrap();
        }
        let r1 = preset("rmc1").unwrap().config;
        assert_eq!(r1.interaction_width(), 32 + 8 * 32);
        assert_eq!(r1.embedding_params() * 4, 4_096_000_000);
        let r3 = preset("rmc3").unwrap().config;
        // ~6.4 MFLOP per sample, as the issue states
        assert!(
            (r3.mlp_flops_per_sample() / 1e6 - 6.4).abs() < 0.2,
            "{}",
            r3.mlp_flops_per_sample()
        );
        assert!(preset("rmc9").unwrap_err().to_string().contains("rmc1"));
        let tb = preset("criteo-terabyte").unwrap().config;
        assert_eq!(tb.tables.iter().sum::<usize>(), 187_767_399);
        assert!((tb.embedding_params() as f64 / 1e9 - 24.0).abs() < 0.1);
        let int4 = tb.with_format(crate::RowFormat::Int4);
        let bytes: usize = int4
            .tables
            .iter()
            .map(|r| r * crate::tables::EmbeddingTable::stride_for(crate::RowFormat::Int4, 128))
            .sum();
        assert!((bytes as f64 / 1e9 - 12.8).abs() < 0.1, "{bytes}");
    }
}
