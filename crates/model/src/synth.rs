//! Synthetic inputs for benchmarks: standard-normal dense features and a fixed number of
//! ids per table per sample, drawn uniformly or from a Zipf law.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal, Zipf};

use crate::batch::{Bags, Batch};
use crate::config::DlrmConfig;
use crate::error::{ModelError, Result};

/// How ids are drawn over a table's rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IdDist {
    Uniform,
    /// Zipf with exponent `s` over ranks 1..=rows; rank r maps to row
    /// `((r - 1) * 2654435761) mod rows`, so hot rows are spread over the table rather than
    /// packed at its start (the same mapping as the PyTorch peer's bench).
    Zipf(f64),
}

impl IdDist {
    /// Parses `uniform` or `zipf:S`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "uniform" {
            return Ok(IdDist::Uniform);
        }
        if let Some(e) = s.strip_prefix("zipf:")
            && let Ok(v) = e.parse::<f64>()
            && v.is_finite()
            && v > 0.0
        {
            return Ok(IdDist::Zipf(v));
        }
        Err(ModelError::input(
            "dist",
            format!("`{s}`: expected `uniform` or `zipf:S` with S > 0"),
        ))
    }

    pub fn name(&self) -> String {
        match self {
            IdDist::Uniform => "uniform".into(),
            IdDist::Zipf(s) => format!("zipf:{s}"),
        }
    }
}

fn draw(
    rng: &mut SmallRng,
    rows: usize,
    dist: IdDist,
    zipf: Option<&Zipf<f64>>,
    out: &mut Vec<u32>,
    k: usize,
) {
    match dist {
        IdDist::Uniform => out.extend((0..k).map(|_| rng.random_range(0..rows as u64) as u32)),
        IdDist::Zipf(_) => {
            let z = zipf.expect("a Zipf sampler for zipf ids");
            out.extend((0..k).map(|_| {
                let rank = (z.sample(rng) as u64).clamp(1, rows as u64) - 1;
                ((rank as u128 * 2654435761u128) % rows as u128) as u32
            }))
        }
    }
}

/// A batch of `size` samples with exactly `ids_per_table` ids in every bag.
pub fn synth_batch(
    cfg: &DlrmConfig,
    size: usize,
    ids_per_table: usize,
    dist: IdDist,
    seed: u64,
) -> Result<Batch> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dense: Vec<f32> = (0..size * cfg.n_dense())
        .map(|_| rng.sample(StandardNormal))
        .collect();
    let mut bags = Vec::with_capacity(cfg.n_tables());
    for &rows in &cfg.tables {
        let zipf = match dist {
            IdDist::Zipf(s) => Some(
                Zipf::new(rows as f64, s).map_err(|e| ModelError::input("dist", e.to_string()))?,
            ),
            IdDist::Uniform => None,
        };
        let mut ids = Vec::with_capacity(size * ids_per_table);
        draw(
            &mut rng,
            rows,
            dist,
            zipf.as_ref(),
            &mut ids,
            size * ids_per_table,
        );
        let offsets = (0..=size).map(|b| (b * ids_per_table) as u32).collect();
        bags.push(Bags {
            offsets,
            ids: ids.into(),
        });
    }
    Batch::from_parts(cfg, size, dense, bags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let cfg = preset("rmc2").unwrap().config;
        let b = synth_batch(&cfg, 64, 120, IdDist::Zipf(1.05), 1).unwrap();
        let ids = &b.bags()[0].ids;
        let top = ids.iter().filter(|&&i| i == 0).count();
        assert!(
            top > ids.len() / 50,
            "rank 1 should be hot: {top} of {}",
            ids.len()
        );
        let u = synth_batch(&cfg, 64, 120, IdDist::Uniform, 1).unwrap();
        assert_eq!(u.bags()[3].ids.len(), 64 * 120);
        assert!(IdDist::parse("zipf:0").is_err() && IdDist::parse("zipf").is_err());
        assert_eq!(IdDist::parse("zipf:1.05").unwrap(), IdDist::Zipf(1.05));
    }
}
