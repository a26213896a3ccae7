//! `dlrs bench`: one measured point on synthetic inputs.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use dlrs_model::bench::{
    BenchModel, Build, RowFootprint, build_model, pool_batches, synth_pool, time_forward,
};
use dlrs_model::synth::{IdDist, synth_batch};
use dlrs_model::{Executor, MlpDtype, Model, RowFormat, Workspace};

use crate::args::redis::{RedisArgs, Tables};
use serde_json::json;

#[derive(Args)]
pub struct BenchArgs {
    /// a preset (rmc1, rmc2, rmc3, criteo-kaggle) built in memory, or a model directory
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// id distribution over each table's rows: uniform or zipf:S
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// timed seconds (after warm-up); at least 10 batches are timed
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// ids per table per sample (default: the preset's; 1 for a model directory)
    #[arg(long)]
    ids_per_table: Option<usize>,
    /// cap every table of a preset at this many rows
    #[arg(long)]
    rows_cap: Option<usize>,
    /// how a model directory's tables are held: mmap (page cache) or ram (huge pages); or
    /// redis://HOST:PORT[,...]: read from a Redis Cluster (`dlrs push`) behind a local cache
    #[arg(long, default_value = "mmap", value_parser = crate::args::redis::parse_tables)]
    tables: Tables,
    #[command(flatten)]
    redis: RedisArgs,
    /// row format of the tables (a preset is built in it; a model directory is converted)
    #[arg(long, value_parser = crate::parse_format)]
    dtype: Option<RowFormat>,
    /// type of the MLP weights: fp32 or bf16 (a preset is built in it; a model directory is
    /// converted)
    #[arg(long, value_parser = crate::parse_mlp_dtype)]
    mlp_dtype: Option<MlpDtype>,
    /// distinct synthetic batches cycled through (default: enough that their rows span
    /// >= 256 MB, so small batches are not served from cache; the PyTorch peer uses 8)
    #[arg(long)]
    pool: Option<usize>,
    /// hot-row cache budget for the tables (e.g. 512M, 2G; 0 = none), filled from a separate
    /// set of observed batches of the same distribution before timing
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    row_cache: usize,
    /// samples of observed traffic that fill the row cache
    #[arg(long, default_value_t = 1_000_000)]
    cache_observe: usize,
    /// print exactly one JSON object on stdout
    #[arg(long)]
    json: bool,
    /// do not report the host's limits (the FMA peak and the gather rate come from a quick
    /// probe, cached for the boot: the first bench after a boot takes a few seconds more)
    #[arg(long)]
    skip_limits: bool,
}

/// Peak resident set size (VmHWM), current anonymous huge-page bytes, and current resident
/// anonymous and file-backed (mapped model file, reclaimable page cache) bytes.
fn memory() -> (u64, u64, u64, u64) {
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    (
        field(&status, "VmHWM:"),
        field(&smaps, "AnonHugePages:"),
        field(&status, "RssAnon:"),
        field(&status, "RssFile:"),
    )
}

fn formats_name(m: &Model) -> String {
    let f = &m.config.table_formats;
    if f.iter().all(|x| *x == f[0]) {
        f[0].name().to_string()
    } else {
        f.iter().map(|x| x.name()).collect::<Vec<_>>().join(",")
    }
}

pub(crate) fn parse_bytes(s: &str) -> Result<usize, String> {
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * mul as f64) as usize)
        .ok_or_else(|| format!("`{s}`: expected a size like 512M or 2G"))
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    let dist = IdDist::parse(&a.dist)?;
    let exec = Executor::new(a.threads)?;
    let host = dlrs_machine::Host::detect();
    let t0 = Instant::now();
    let build = Build {
        rows_cap: a.rows_cap,
        format: a.dtype,
        mlp_dtype: a.mlp_dtype,
        mode: a.tables.mode(),
    };
    let BenchModel {
        mut model,
        name,
        ids_per_table: preset_ids,
    } = build_model(&a.model, &build, &exec)?;
    if let Tables::Redis(nodes) = &a.tables {
        let dir = std::path::Path::new(&a.model);
        if !dir.is_dir() {
            bail!("--tables redis://... reads a pushed model: --model must be its directory");
        }
        let tier =
            dlrs_redis::RedisTables::connect(dir, &model.config, &a.redis.options(nodes.clone()))?;
        model.remote = Some(std::sync::Arc::new(tier));
    }
    let build_s = t0.elapsed().as_secs_f64();
    let cfg = &model.config;
    let ids = a.ids_per_table.unwrap_or(preset_ids);
    let n_pool = a.pool.unwrap_or(pool_batches(cfg, a.batch, ids)).max(1);
    let pool = synth_pool(cfg, a.batch, ids, dist, n_pool, 1)?;

    let mut cache_share = None;
    if a.row_cache > 0 {
        let mut traffic = dlrs_model::tables::TrafficCounter::default();
        for i in 0..a.cache_observe.div_ceil(a.batch) {
            traffic.observe(&synth_batch(cfg, a.batch, ids, dist, 1_000_000 + i as u64)?);
        }
        cache_share = Some(model.build_row_caches(&traffic, a.row_cache)?);
    }
    let model = model;
    let cfg = &model.config;
    let mut ws = Workspace::default();
    let tier_counts = |m: &Model| m.remote.as_ref().map(|r| r.counters()).unwrap_or_default();
    let before = tier_counts(&model);
    let timing = time_forward(&model, &pool, &mut ws, &exec, a.seconds, 10)?;
    // the remote tier over warm-up and timed batches
    let tier: serde_json::Map<String, serde_json::Value> = tier_counts(&model)
        .into_iter()
        .zip(before)
        .map(|((k, v), (_, b))| (k.to_string(), json!(v - b)))
        .collect();
    let stages = timing.stages_mean();
    let lat = &timing.latencies_s;
    let total = timing.total_s();
    let (rss, huge, rss_anon, rss_file) = memory();
    let (hits, lookups) = ws.cache_counts();
    let hit_share = (lookups > 0).then(|| hits as f64 / lookups as f64);
    // bytes and cache lines a lookup reads, averaged over the tables
    let tables = &model.weights.tables;
    let RowFootprint {
        row_bytes,
        cache_lines_per_row: lines_per_row,
        row_stride,
    } = RowFootprint::of(&model);
    let rows_per_batch = (a.batch * ids * cfg.n_tables()) as f64;
    let emb_s = stages.embedding;
    let mlp_s = stages.bottom_mlp + stages.top_mlp;
    let flops = cfg.mlp_flops_per_sample() * a.batch as f64;
    let table_bytes: usize = tables.iter().map(|t| t.size_bytes()).sum();
    let rows_per_s = rows_per_batch / emb_s;
    let mlp_gflops = flops / mlp_s / 1e9;
    // bf16 MLPs on AVX512-BF16 do two multiply-adds per lane per instruction (vdpbf16ps):
    // their limit is twice the fp32 FMA peak (measured 2.00x on Zen 4)
    let mlp_peak_factor =
        if model.config.mlp_dtype == MlpDtype::Bf16 && dlrs_kernels::cpu::avx512_bf16() {
            2.0
        } else {
            1.0
        };
    // the host's limits, probed at this bench's row stride and thread count (a quick probe
    // cached for the boot; probed again if the MLPs or the gathers just beat it)
    let limits = if a.skip_limits {
        None
    } else {
        Some(dlrs_machine::quick_limits_cached_checked(
            row_stride.next_multiple_of(4),
            a.threads,
            mlp_gflops / mlp_peak_factor / a.threads as f64,
            // gathers served from DRAM only: no row cache, tables far larger than any LLC
            if hit_share.is_none() && table_bytes >= 1 << 30 {
                rows_per_s
            } else {
                0.0
            },
        )?)
    };
    let limits_json = limits.map(|(fma, gather)| {
        json!({
            "fma_gflop_per_s_per_core": fma.per_core_gflops,
            "fma_width_bits": fma.width_bits,
            "mlp_limit_gflop_per_s": fma.per_core_gflops * mlp_peak_factor * a.threads as f64,
            "gather_rows_per_s": gather.rows_per_s,
            "gather_row_bytes": gather.row_bytes,
            "gather_threads": gather.threads,
            "probe": "quick, cached per boot (dlrs probe measures afresh)",
        })
    });
    let fractions = limits.map(|(fma, gather)| {
        json!({
            "embedding": rows_per_s / gather.rows_per_s,
            "mlp": mlp_gflops / (fma.per_core_gflops * mlp_peak_factor * a.threads as f64),
        })
    });
    let report = json!({
        "engine": "dlrs",
        "tables": if model.remote.is_some() { "redis" } else if model.weights.tables.iter().any(|t| t.is_mapped()) { "mmap" } else { "ram" },
        "remote_tier": (!tier.is_empty()).then_some(&tier),
        "model": name,
        "batch": a.batch,
        "threads": a.threads,
        "dist": dist.name(),
        "ids_per_table": ids,
        "pool_batches": n_pool,
        "isa": dlrs_kernels::cpu::isa().name(),
        "host": {
            "cpu": host.cpu_line(),
            "vendor": host.vendor,
            "family": host.family,
            "model": host.model,
            "microarchitecture": host.microarchitecture,
            "isa_flags": host.isa,
            "thp": host.thp,
        },
        "limits": limits_json,
        "fraction_of_limit": fractions,
        "dtype": formats_name(&model),
        "mlp_dtype": model.config.mlp_dtype.name(),
        "row_bytes": row_bytes,
        "row_stride": row_stride,
        "cache_lines_per_row": lines_per_row,
        "embedding_bytes": table_bytes,
        "build_s": build_s,
        "samples_per_s": timing.samples_per_s(),
        "latency_ms": {"p50": timing.percentile(50.0) * 1e3, "p99": timing.percentile(99.0) * 1e3,
                       "mean": timing.mean_s() * 1e3},
        "breakdown_ms": {"embedding": emb_s * 1e3, "bottom_mlp": stages.bottom_mlp * 1e3,
                         "interaction": stages.interaction * 1e3, "top_mlp": stages.top_mlp * 1e3},
        "embedding_rows_per_s": rows_per_s,
        "embedding_gb_per_s": rows_per_batch * row_bytes / emb_s / 1e9,
        "embedding_gb_per_s_wall": rows_per_batch * row_bytes * timing.batches() as f64 / total / 1e9,
        "mlp_gflop_per_s": mlp_gflops,
        "batches": lat.len(),
        "rss_bytes": rss,
        "anon_huge_page_bytes": huge,
        "rss_anon_bytes": rss_anon,
        "rss_file_bytes": rss_file,
        "checksum": timing.checksum,
        "row_cache_bytes": model.row_cache_bytes(),
        "row_cache_observed_hit_share": cache_share,
        "row_cache_hit_share": hit_share,
    });
    if a.json {
        println!("{report}");
    } else {
        let r = &report;
        println!(
            "{} {} batch {} threads {} ({} ids/table, {}, {} batches in the pool, {})",
            name,
            formats_name(&model),
            a.batch,
            a.threads,
            ids,
            dist.name(),
            n_pool,
            r["isa"].as_str().unwrap_or("")
        );
        println!(
            "  samples/s      {:>12.0}",
            r["samples_per_s"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  latency ms     p50 {:.3}  p99 {:.3}  ({} batches)",
            r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            lat.len()
        );
        let bd = &r["breakdown_ms"];
        println!(
            "  per batch ms   embedding {:.3}  bottom MLP {:.3}  interaction {:.3}  top MLP {:.3}",
            bd["embedding"].as_f64().unwrap_or(0.0),
            bd["bottom_mlp"].as_f64().unwrap_or(0.0),
            bd["interaction"].as_f64().unwrap_or(0.0),
            bd["top_mlp"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  embedding      {:.1} M rows/s  {:.2} GB/s (stage)  {:.2} GB/s (wall)  {row_bytes:.0} B/row, {lines_per_row:.2} cache lines/row",
            rows_per_batch / emb_s / 1e6,
            r["embedding_gb_per_s"].as_f64().unwrap_or(0.0),
            r["embedding_gb_per_s_wall"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  MLPs           {:.1} GFLOP/s",
            r["mlp_gflop_per_s"].as_f64().unwrap_or(0.0)
        );
        if let Some((fma, gather)) = limits {
            println!(
                "  of the host    embedding {:.0}% of {:.1} M rows/s ({} B rows, {} threads), MLPs {:.0}% of {:.0} GFLOP/s ({} x {:.0} per core{})",
                100.0 * rows_per_s / gather.rows_per_s,
                gather.rows_per_s / 1e6,
                gather.row_bytes,
                gather.threads,
                100.0 * mlp_gflops / (fma.per_core_gflops * mlp_peak_factor * a.threads as f64),
                fma.per_core_gflops * mlp_peak_factor * a.threads as f64,
                a.threads,
                fma.per_core_gflops * mlp_peak_factor,
                if mlp_peak_factor > 1.0 {
                    ", vdpbf16ps"
                } else {
                    ""
                }
            );
        }
        println!("  host           {}", host.cpu_line());
        if let Some(share) = cache_share {
            println!(
                "  row cache      {:.2} GB: {:.1}% of the observed lookups, {:.1}% of the timed ones",
                model.row_cache_bytes() as f64 / 1e9,
                share * 100.0,
                hit_share.unwrap_or(0.0) * 100.0
            );
        }
        if !tier.is_empty() {
            let g = |k: &str| tier.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as f64;
            println!(
                "  redis tier     cache hit rate {:.1}% of {} distinct rows per batch; {:.1} commands and {:.3} ms per fetching batch ({:.0}% of batches fetched); {} zero rows, {} failed batches",
                100.0 * g("cache_hits") / g("row_lookups").max(1.0),
                (g("row_lookups") / (timing.batches() as f64).max(1.0)).round(),
                g("commands") / g("fetches").max(1.0),
                g("fetch_micros") / 1e3 / g("fetches").max(1.0),
                100.0 * g("fetches") / (timing.batches() as f64).max(1.0),
                g("zero_rows"),
                g("failed_batches"),
            );
        }
        println!(
            "  memory         peak RSS {:.2} GB (now {:.2} GB anonymous, {:.2} GB mapped file), huge pages {:.2} GB; model ready in {:.2} s",
            rss as f64 / 1e9,
            rss_anon as f64 / 1e9,
            rss_file as f64 / 1e9,
            huge as f64 / 1e9,
            build_s
        );
    }
    Ok(())
}
