//! The load's random parts: Poisson arrival times and the query-size distribution.

use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal, Normal};

use crate::error::LoadgenError;

/// Largest query (samples), as DeepRecSys caps its production-like size distribution.
pub const MAX_QUERY_SIZE: usize = 1024;

/// Most queries one measurement may schedule (bounds the schedule's and the results' memory).
pub const MAX_QUERIES: usize = 10_000_000;

/// A load step (`--step AT:FOR:FACTOR`): the rate is `factor` times `--qps` from `at_s` for
/// `for_s` seconds, then falls back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadStep {
    pub at_s: f64,
    pub for_s: f64,
    pub factor: f64,
}

impl LoadStep {
    /// `AT:FOR:FACTOR` (seconds, seconds, a positive factor).
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [at, dur, factor] = parts[..] else {
            return Err(format!("`{s}`: expected AT:FOR:FACTOR, e.g. 20:30:2"));
        };
        let num = |what: &str, v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("`{s}`: {what} `{v}` is not a non-negative number"))
        };
        let step = LoadStep {
            at_s: num("AT", at)?,
            for_s: num("FOR", dur)?,
            factor: num("FACTOR", factor)?,
        };
        if step.factor <= 0.0 {
            return Err(format!("`{s}`: FACTOR must be above 0"));
        }
        Ok(step)
    }

    /// The rate at `t` seconds for a base rate `qps`.
    pub fn rate(&self, qps: f64, t: f64) -> f64 {
        if t >= self.at_s && t < self.at_s + self.for_s {
            qps * self.factor
        } else {
            qps
        }
    }

    pub fn name(&self) -> String {
        format!("{}:{}:{}", self.at_s, self.for_s, self.factor)
    }
}

/// Arrival offsets of [`poisson_schedule`], with the rate changed by `step` when given: a
/// Poisson process at the highest rate, each arrival kept with the chance of the rate at its
/// time over that (thinning), from `seed`.
pub fn stepped_schedule(
    qps: f64,
    duration_s: f64,
    seed: u64,
    step: Option<LoadStep>,
) -> Result<Vec<f64>, LoadgenError> {
    let Some(step) = step else {
        return poisson_schedule(qps, duration_s, seed);
    };
    let peak = qps * step.factor.max(1.0);
    let all = poisson_schedule(peak, duration_s, seed)?;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x57e9_0000_0000_0002);
    Ok(all
        .into_iter()
        .filter(|&t| rng.random::<f64>() * peak < step.rate(qps, t))
        .collect())
}

/// Arrival offsets (seconds from the start) of a Poisson process of rate `qps` on
/// `[0, duration_s)`: exponential inter-arrival times of mean `1 / qps`, drawn from `seed`.
pub fn poisson_schedule(qps: f64, duration_s: f64, seed: u64) -> Result<Vec<f64>, LoadgenError> {
    if !(qps.is_finite() && qps > 0.0) {
        return Err(LoadgenError::flag(
            "--qps",
            format!("must be a positive number, got {qps}"),
        ));
    }
    if !(duration_s.is_finite() && duration_s > 0.0) {
        return Err(LoadgenError::flag(
            "--duration",
            format!("must be a positive number of seconds, got {duration_s}"),
        ));
    }
    let expected = qps * duration_s;
    if expected > MAX_QUERIES as f64 / 2.0 {
        return Err(LoadgenError::TooManyQueries {
            qps,
            duration_s,
            expected,
            max: MAX_QUERIES / 2,
        });
    }
    let exp = Exp::new(qps).expect("a positive, finite rate (checked above)");
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_a771_0000_0001);
    let mut out = Vec::with_capacity(expected as usize + 16);
    let mut t = 0.0;
    loop {
        t += exp.sample(&mut rng);
        if t >= duration_s || out.len() >= MAX_QUERIES {
            return Ok(out);
        }
        out.push(t);
    }
}

/// How many samples a query carries (`--query-size`). Every draw is rounded to an integer
/// and clamped to `1..=MAX_QUERY_SIZE`.
#[derive(Clone, Debug, PartialEq)]
pub enum QuerySize {
    /// `fixed:N`
    Fixed(usize),
    /// `normal:MU,SIGMA`: a normal of mean MU and standard deviation SIGMA
    Normal { mu: f64, sigma: f64 },
    /// `lognormal:MU,SIGMA`: `exp(N(MU, SIGMA))`, i.e. MU and SIGMA of the size's logarithm
    /// (numpy's and rand_distr's convention)
    LogNormal { mu: f64, sigma: f64 },
    /// `file:PATH`: the empirical distribution of a file of sizes (see [`QuerySize::parse`])
    File {
        path: PathBuf,
        sizes: Vec<usize>,
        cumulative: Vec<f64>,
    },
}

fn two_numbers(kind: &str, s: &str) -> Result<(f64, f64), LoadgenError> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || {
        LoadgenError::flag(
            "--query-size",
            format!("{kind}:{s}: expected {kind}:MU,SIGMA with finite MU and SIGMA >= 0"),
        )
    };
    let [mu, sigma] = parts[..] else {
        return Err(bad());
    };
    let (mu, sigma): (f64, f64) = (
        mu.parse().map_err(|_| bad())?,
        sigma.parse().map_err(|_| bad())?,
    );
    if !mu.is_finite() || !sigma.is_finite() || sigma < 0.0 {
        return Err(bad());
    }
    Ok((mu, sigma))
}

impl QuerySize {
    /// Parses `fixed:N`, `normal:MU,SIGMA`, `lognormal:MU,SIGMA` or `file:PATH`.
    ///
    /// A size file holds one entry per line: `N` (one observed query of N samples) or
    /// `N WEIGHT` (N samples with relative frequency WEIGHT); blank lines and lines starting
    /// with `#` are skipped, commas count as spaces. Sizes above [`MAX_QUERY_SIZE`] are
    /// capped when drawn.
    pub fn parse(s: &str) -> Result<Self, LoadgenError> {
        let bad = |msg: &str| LoadgenError::flag("--query-size", format!("{s}: {msg}"));
        if let Some(n) = s.strip_prefix("fixed:") {
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| bad("expected fixed:N with N >= 1"))?;
            if n < 1 {
                return Err(bad("a query has at least 1 sample"));
            }
            return Ok(QuerySize::Fixed(n.min(MAX_QUERY_SIZE)));
        }
        if let Some(rest) = s.strip_prefix("normal:") {
            let (mu, sigma) = two_numbers("normal", rest)?;
            return Ok(QuerySize::Normal { mu, sigma });
        }
        if let Some(rest) = s.strip_prefix("lognormal:") {
            let (mu, sigma) = two_numbers("lognormal", rest)?;
            return Ok(QuerySize::LogNormal { mu, sigma });
        }
        if let Some(path) = s.strip_prefix("file:") {
            return Self::from_file(Path::new(path));
        }
        Err(LoadgenError::flag(
            "--query-size",
            format!("`{s}`: expected fixed:N, normal:MU,SIGMA, lognormal:MU,SIGMA or file:PATH"),
        ))
    }

    fn from_file(path: &Path) -> Result<Self, LoadgenError> {
        let text = dlrs_model::files::read_text_bounded(
            path,
            dlrs_model::files::TEXT_MAX_BYTES,
            "a query-size file",
        )
        .map_err(|source| LoadgenError::ReadSizes {
            path: path.to_path_buf(),
            source,
        })?;
        let mut sizes = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |msg: String| LoadgenError::Sizes {
                path: path.to_path_buf(),
                line: Some(i + 1),
                msg,
            };
            let fields: Vec<&str> = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|f| !f.is_empty())
                .collect();
            let (n, w) = match fields[..] {
                [n] => (n, "1"),
                [n, w] => (n, w),
                _ => return Err(bad(format!("expected `N` or `N WEIGHT`, got `{line}`"))),
            };
            let n: usize = n
                .parse()
                .map_err(|_| bad(format!("`{n}` is not a query size (an integer >= 1)")))?;
            if n < 1 {
                return Err(bad(format!("a query has at least 1 sample, got {n}")));
            }
            let w: f64 = w
                .parse()
                .map_err(|_| bad(format!("`{w}` is not a weight")))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(bad(format!("weight {w} must be finite and >= 0")));
            }
            if w == 0.0 {
                continue;
            }
            total += w;
            sizes.push(n.min(MAX_QUERY_SIZE));
            cumulative.push(total);
        }
        if total <= 0.0 {
            return Err(LoadgenError::Sizes {
                path: path.to_path_buf(),
                line: None,
                msg: "no query sizes (one `N` or `N WEIGHT` per line)".into(),
            });
        }
        Ok(QuerySize::File {
            path: path.to_path_buf(),
            sizes,
            cumulative,
        })
    }

    /// The `--query-size` text this was parsed from (files by path).
    pub fn name(&self) -> String {
        match self {
            QuerySize::Fixed(n) => format!("fixed:{n}"),
            QuerySize::Normal { mu, sigma } => format!("normal:{mu},{sigma}"),
            QuerySize::LogNormal { mu, sigma } => format!("lognormal:{mu},{sigma}"),
            QuerySize::File { path, .. } => format!("file:{}", path.display()),
        }
    }

    /// One query size, in `1..=MAX_QUERY_SIZE`.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let clamp = |x: f64| -> usize {
            if x.is_nan() {
                1
            } else {
                x.round().clamp(1.0, MAX_QUERY_SIZE as f64) as usize
            }
        };
        match self {
            QuerySize::Fixed(n) => *n,
            QuerySize::Normal { mu, sigma } => clamp(
                Normal::new(*mu, *sigma)
                    .expect("sigma >= 0 checked")
                    .sample(rng),
            ),
            QuerySize::LogNormal { mu, sigma } => clamp(
                LogNormal::new(*mu, *sigma)
                    .expect("sigma >= 0 checked")
                    .sample(rng),
            ),
            QuerySize::File {
                sizes, cumulative, ..
            } => {
                let total = *cumulative.last().expect("at least one size");
                let u = rng.random::<f64>() * total;
                let i = cumulative.partition_point(|&c| c <= u).min(sizes.len() - 1);
                sizes[i]
            }
        }
    }

    /// `n` sizes from `seed`.
    pub fn draw(&self, n: usize, seed: u64) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..n).map(|_| self.sample(&mut rng)).collect()
    }
}

impl std::str::FromStr for QuerySize {
    type Err = LoadgenError;
    fn from_str(s: &str) -> Result<Self, LoadgenError> {
        Self::parse(s)
    }
}
