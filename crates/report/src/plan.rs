//! How much a run measures, by [`Size`]: table caps, seconds per point, the batch sizes,
//! the co-location and search settings, and an estimate of each step's seconds for the
//! progress bar.

use dlrs_machine::ProbeOptions;

use crate::schema::Size;

/// The batch sizes of the operator breakdown (DeepRecSys's).
pub const BREAKDOWN_BATCHES: [usize; 5] = [1, 16, 64, 256, 1024];

/// The p99 targets the batching section finds the crossing batch of, ms.
pub const CROSSING_TARGETS_MS: [f64; 3] = [10.0, 25.0, 60.0];

/// The least bytes of a table capped by `--quick`: twice a 32 MiB last-level cache.
pub const QUICK_TABLE_BYTES: usize = 64 << 20;

/// Row sizes of the gather-rate probe, bytes (the tables' own strides are added).
pub const PROBE_ROW_BYTES: [usize; 3] = [64, 128, 256];

/// Everything a run's size decides.
#[derive(Clone, Debug)]
pub struct Plan {
    pub size: Size,
    pub probe: ProbeOptions,
    /// gather rates on huge pages (`true`) and on 4 KiB pages (`false`)
    pub probe_huge_pages: Vec<bool>,
    /// each table of a preset is capped at this many bytes in fp32 (`None`: full size)
    pub table_bytes_cap: Option<usize>,
    /// timed seconds of a point (at least `min_batches` batches)
    pub point_s: f64,
    pub min_batches: usize,
    pub batches: Vec<usize>,
    /// larger batches (doubling) measured for the batching section while the p99 stays
    /// under the largest target, up to this one (0: none)
    pub extend_batches_to: usize,
    pub coloc_instances: Vec<usize>,
    pub coloc_batch: usize,
    pub coloc_s: f64,
    pub bounded_targets_ms: Vec<f64>,
    /// `(max_batch, max_queue_delay_us)`; the first is the default the targets are searched
    /// with, the others are searched at `bounded_settings_target_ms`
    pub bounded_settings: Vec<(usize, u64)>,
    pub bounded_settings_target_ms: f64,
    pub step_s: f64,
    pub warmup_s: f64,
    pub drain_s: f64,
    pub max_steps: usize,
    /// distinct queries of the twin's load
    pub query_pool: usize,
    pub formats_batch: usize,
}

impl Plan {
    /// The plan of `size` on a host whose largest cache holds `llc_bytes`: `--quick` caps
    /// each table at twice that, and at least [`QUICK_TABLE_BYTES`], so that a table's rows
    /// come from DRAM as a full-size table's do.
    pub fn new(size: Size, llc_bytes: u64) -> Self {
        let full = Plan {
            size,
            probe: ProbeOptions::full(),
            probe_huge_pages: vec![true, false],
            table_bytes_cap: None,
            point_s: 3.0,
            min_batches: 10,
            batches: BREAKDOWN_BATCHES.to_vec(),
            extend_batches_to: 8192,
            coloc_instances: vec![1, 2, 4],
            coloc_batch: 256,
            coloc_s: 4.0,
            bounded_targets_ms: CROSSING_TARGETS_MS.to_vec(),
            bounded_settings: vec![(256, 500), (64, 500), (1024, 500), (256, 0), (256, 2000)],
            bounded_settings_target_ms: 25.0,
            step_s: 2.0,
            warmup_s: 0.5,
            drain_s: 2.0,
            max_steps: 8,
            query_pool: 512,
            formats_batch: 256,
        };
        match size {
            Size::Full => full,
            Size::Quick => Plan {
                probe: ProbeOptions {
                    table_bytes: 256 << 20,
                    lookups: 1 << 20,
                    reps: 2,
                },
                table_bytes_cap: Some(QUICK_TABLE_BYTES.max(2 * llc_bytes as usize)),
                point_s: 0.4,
                min_batches: 5,
                extend_batches_to: 2048,
                coloc_s: 0.6,
                bounded_settings: vec![(256, 500), (64, 500), (1024, 500)],
                step_s: 0.5,
                warmup_s: 0.1,
                drain_s: 0.3,
                max_steps: 5,
                query_pool: 256,
                ..full
            },
            Size::Tiny => Plan {
                probe: ProbeOptions {
                    table_bytes: 8 << 20,
                    lookups: 16_000,
                    reps: 1,
                },
                probe_huge_pages: vec![true, false],
                table_bytes_cap: Some(1 << 20),
                point_s: 0.0,
                min_batches: 3,
                extend_batches_to: 0,
                coloc_s: 0.05,
                bounded_targets_ms: vec![25.0],
                bounded_settings: vec![(256, 500), (64, 500)],
                step_s: 0.2,
                warmup_s: 0.0,
                drain_s: 0.3,
                max_steps: 2,
                query_pool: 16,
                ..full
            },
        }
    }

    /// The row cap that keeps an fp32 table of `dim` within the byte cap.
    pub fn rows_cap(&self, dim: usize) -> Option<usize> {
        self.table_bytes_cap.map(|b| (b / (dim.max(1) * 4)).max(1))
    }

    /// Estimated seconds of the machine section.
    pub fn est_machine_s(&self) -> f64 {
        let gb = self.probe.table_bytes as f64 / (1u64 << 30) as f64;
        let gathers = PROBE_ROW_BYTES.len() as f64 * 2.0 * self.probe_huge_pages.len() as f64;
        2.0 + gb * 3.0 * self.probe_huge_pages.len() as f64
            + gathers * (self.probe.reps + 1) as f64 * self.probe.lookups as f64 / 15e6
    }

    /// Estimated seconds of building a model of `bytes` of tables.
    pub fn est_build_s(bytes: usize) -> f64 {
        0.2 + bytes as f64 / 0.6e9
    }

    /// Estimated seconds of one measured point.
    pub fn est_point_s(&self) -> f64 {
        self.point_s + 0.3
    }

    /// Estimated seconds of one latency-bounded search.
    pub fn est_search_s(&self) -> f64 {
        self.max_steps as f64 * (self.step_s + self.warmup_s + self.drain_s * 0.3)
    }

    /// Searches per model.
    pub fn searches(&self) -> usize {
        self.bounded_targets_ms.len() + self.bounded_settings.len().saturating_sub(1)
    }
}
