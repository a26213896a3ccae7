//! What the host is: CPU identity and instruction sets, cores, caches, NUMA nodes, the
//! transparent-huge-page mode and the kernel, read from `/proc` and `/sys` (Linux).

use serde::{Deserialize, Serialize};

/// The instruction-set extensions dlrs's kernels care about.
pub const ISA_FLAGS: [&str; 9] = [
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
];

/// One cache level as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`
    pub kind: String,
    pub bytes: u64,
    /// logical CPUs sharing it
    pub shared_by: u32,
}

/// The host's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// `/proc/cpuinfo`'s `model name`
    pub model_name: String,
    /// `AuthenticAMD`, `GenuineIntel`, ...
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    /// the microarchitecture when the family and model are known here (`Zen 4`), else empty
    pub microarchitecture: String,
    /// which of [`ISA_FLAGS`] the CPU has, in that order
    pub isa: Vec<String>,
    /// logical CPUs this process may run on
    pub cpus: u32,
    pub caches: Vec<Cache>,
    pub numa_nodes: u32,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`'s chosen mode (`always`, `madvise`, `never`)
    pub thp: String,
    /// `uname -r`
    pub kernel: String,
}

impl Host {
    /// The data and unified caches: `L1 32 KiB (shared by 1 CPUs), L2 1024 KiB (shared by 1
    /// CPUs), ...`.
    pub fn caches_line(&self) -> String {
        self.caches
            .iter()
            .filter(|c| c.kind != "Instruction")
            .map(|c| {
                format!(
                    "L{} {} KiB (shared by {} CPUs)",
                    c.level,
                    c.bytes >> 10,
                    c.shared_by
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads the host's identity. Fields the system does not expose are left empty or 0.
    pub fn detect() -> Host {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let first = first_cpu_fields(&cpuinfo);
        let get = |k: &str| {
            first
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let flags: Vec<String> = get("flags")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let vendor = get("vendor_id");
        let family = get("cpu family").parse().unwrap_or(0);
        let model = get("model").parse().unwrap_or(0);
        Host {
            model_name: get("model name"),
            microarchitecture: microarchitecture(&vendor, family, model).to_string(),
            vendor,
            family,
            model,
            isa: ISA_FLAGS
                .iter()
                .filter(|f| flags.iter().any(|g| g == *f))
                .map(|f| f.to_string())
                .collect(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            caches: caches(),
            numa_nodes: numa_nodes(),
            thp: thp_mode(),
            kernel: kernel_release(),
        }
    }

    /// `AMD EPYC, family 25, model 17 (Zen 4); avx2 fma f16c avx512f ...; 2 CPUs`: the line to
    /// print beside every figure measured on this host.
    pub fn cpu_line(&self) -> String {
        let arch = if self.microarchitecture.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.microarchitecture)
        };
        format!(
            "{}, family {}, model {}{arch}; {}; {} CPUs",
            self.model_name,
            self.family,
            self.model,
            self.isa.join(" "),
            self.cpus
        )
    }

    pub fn has(&self, flag: &str) -> bool {
        self.isa.iter().any(|f| f == flag)
    }
}

/// `(key, value)` pairs of the first processor block of `/proc/cpuinfo`.
fn first_cpu_fields(cpuinfo: &str) -> Vec<(String, String)> {
    cpuinfo
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The microarchitecture of an x86 CPU by vendor, family and model, for the ones dlrs has run
/// on or is likely to (AMD's family 0x17/0x19/0x1a; recent Intel server parts).
pub fn microarchitecture(vendor: &str, family: u32, model: u32) -> &'static str {
    match (vendor, family, model) {
        ("AuthenticAMD", 0x17, 0x00..=0x2f) => "Zen / Zen+",
        ("AuthenticAMD", 0x17, 0x30..=0x7f) => "Zen 2",
        ("AuthenticAMD", 0x19, 0x00..=0x0f | 0x20..=0x5f) => "Zen 3",
        ("AuthenticAMD", 0x19, 0x10..=0x1f | 0x60..=0xaf) => "Zen 4",
        ("AuthenticAMD", 0x1a, _) => "Zen 5",
        ("GenuineIntel", 6, 0x55) => "Skylake-SP / Cascade Lake",
        ("GenuineIntel", 6, 0x6a | 0x6c) => "Ice Lake-SP",
        ("GenuineIntel", 6, 0x8f) => "Sapphire Rapids",
        ("GenuineIntel", 6, 0xcf) => "Emerald Rapids",
        ("GenuineIntel", 6, 0xad | 0xae) => "Granite Rapids",
        _ => "",
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `32K`, `1024K`, `32M` as bytes.
fn size_bytes(s: &str) -> u64 {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().unwrap_or(0) * mult
}

/// CPU 0's caches from `/sys/devices/system/cpu/cpu0/cache`.
fn caches() -> Vec<Cache> {
    let mut out = Vec::new();
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let Some(level) = read_trim(&format!("{dir}/level")) else {
            break;
        };
        let shared = read_trim(&format!("{dir}/shared_cpu_list")).unwrap_or_default();
        out.push(Cache {
            level: level.parse().unwrap_or(0),
            kind: read_trim(&format!("{dir}/type")).unwrap_or_default(),
            bytes: size_bytes(&read_trim(&format!("{dir}/size")).unwrap_or_default()),
            shared_by: cpu_list_len(&shared),
        });
    }
    out
}

/// How many CPUs a list such as `0-3,8,10-11` names.
fn cpu_list_len(list: &str) -> u32 {
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => {
                b.parse::<u32>()
                    .unwrap_or(0)
                    .saturating_sub(a.parse().unwrap_or(0))
                    + 1
            }
            None => 1,
        })
        .sum()
}

fn numa_nodes() -> u32 {
    read_trim("/sys/devices/system/node/online").map_or(1, |l| cpu_list_len(&l).max(1))
}

/// The bracketed choice of `always [madvise] never`.
fn thp_mode() -> String {
    let s = read_trim("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    s.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']).to_string())
        .unwrap_or(s)
}

fn kernel_release() -> String {
    read_trim("/proc/sys/kernel/osrelease").unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_lists_and_cpuinfo() {
        assert_eq!(size_bytes("32K"), 32 << 10);
        assert_eq!(size_bytes("1024K"), 1 << 20);
        assert_eq!(size_bytes("32M"), 32 << 20);
        assert_eq!(size_bytes("x"), 0);
        assert_eq!(cpu_list_len("0-3,8,10-11"), 7);
        assert_eq!(cpu_list_len("0"), 1);
        let f = first_cpu_fields(
            "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\nprocessor\t: 1\nmodel\t: 99\n",
        );
        assert_eq!(f[2], ("cpu family".to_string(), "25".to_string()));
        assert_eq!(f.len(), 4, "only the first processor block");
        assert_eq!(microarchitecture("AuthenticAMD", 25, 17), "Zen 4");
        assert_eq!(microarchitecture("AuthenticAMD", 26, 2), "Zen 5");
        assert_eq!(
            microarchitecture("GenuineIntel", 6, 0x8f),
            "Sapphire Rapids"
        );
        assert_eq!(microarchitecture("Other", 1, 1), "");
    }

    #[test]
    fn detects_this_host() {
        let h = Host::detect();
        assert!(h.cpus >= 1);
        if std::path::Path::new("/proc/cpuinfo").exists() {
            assert!(!h.model_name.is_empty() || !h.vendor.is_empty(), "{h:?}");
            let line = h.cpu_line();
            assert!(line.contains(&format!("family {}", h.family)), "{line}");
        }
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.has("avx2"), is_x86_feature_detected!("avx2"));
    }
}
