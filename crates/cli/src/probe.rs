//! `dlrs probe`: the host and its measured limits (FMA peak, row-gather rate per row size,
//! DRAM latency, sequential bandwidth), as a table or one JSON object.

use anyhow::{Context, Result};
use clap::Args;
use dlrs_machine::{Host, ProbeOptions, Report, SCHEMA_VERSION};

#[derive(Args)]
pub struct ProbeArgs {
    /// a few seconds (1 GiB table, 3 repetitions) instead of about a minute (4 GiB, 5
    /// repetitions, and the gather rate on 4 KiB pages too)
    #[arg(long)]
    quick: bool,
    /// row sizes of the gather rate, in bytes (multiples of 4)
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    row_bytes: Vec<usize>,
    /// thread counts of the gather rate (default: 1 and all CPUs)
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// print exactly one JSON object on stdout
    #[arg(long)]
    json: bool,
}

pub fn run(a: ProbeArgs) -> Result<()> {
    if let Some(b) = a.row_bytes.iter().find(|b| **b == 0 || **b % 4 != 0) {
        anyhow::bail!("--row-bytes {b}: row sizes must be positive multiples of 4");
    }
    let host = Host::detect();
    let mut threads = a.threads.clone();
    if threads.is_empty() {
        threads = vec![1, host.cpus as usize];
    }
    threads.sort_unstable();
    threads.dedup();
    if threads.contains(&0) {
        anyhow::bail!("--threads: thread counts must be positive");
    }
    let (opts, huge) = if a.quick {
        (ProbeOptions::quick(), vec![true])
    } else {
        (ProbeOptions::full(), vec![true, false])
    };
    let limits = dlrs_machine::measure_with(&opts, &a.row_bytes, &threads, &huge)
        .context("probing the machine")?;
    let report = Report {
        schema: SCHEMA_VERSION,
        host,
        limits,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let (h, l) = (&report.host, &report.limits);
    println!("host        {}", h.cpu_line());
    println!("caches      {}", h.caches_line());
    println!(
        "system      {} NUMA node(s), transparent huge pages: {}, kernel {}",
        h.numa_nodes, h.thp, h.kernel
    );
    println!(
        "FMA peak    {:.1} GFLOP/s per core, {:.1} on {} threads ({}-bit registers)",
        l.fma.per_core_gflops, l.fma.all_threads_gflops, l.fma.threads, l.fma.width_bits
    );
    for g in &l.gather {
        println!(
            "gather      {:<38} {:>7.1} M rows/s  {:>6.2} GB/s",
            g.describe(),
            g.rows_per_s / 1e6,
            g.gb_per_s
        );
    }
    if let Some(ns) = l.dram_latency_ns {
        println!("DRAM        {ns:.0} ns a dependent load");
    }
    for s in &l.seq_read {
        println!(
            "read        {:.1} GB/s sequential, {} thread(s)",
            s.gb_per_s, s.threads
        );
    }
    println!(
        "(table {} MiB, {} lookups a thread, median of {} repetitions)",
        opts.table_bytes >> 20,
        opts.lookups,
        opts.reps
    );
    Ok(())
}
