//! Id maps: how a table's raw feature ids become rows.
//!
//! Production traffic carries raw ids (64-bit integers, or strings) from an unbounded
//! vocabulary, not row indices. Each table has an id map (`"dlrs_id_map"` in config.json,
//! docs/id-maps.md) that turns them into rows **in front of** the row sources: the batch
//! the forward pass sees holds rows, as before, so the forward pass and the kernels do not
//! change.
//!
//! | map | a raw id `x` of table `t` (of `rows` rows) goes to | state |
//! |---|---|---|
//! | `index` | row `x` (the id is the row; `x >= rows` is an input error) | none |
//! | `hash` | row `H_t(x) mod rows` | none |
//! | `collisionless[:...]` | the row the map assigned to `x`, or a miss | a [`CollisionlessMap`] |
//!
//! `H_t` is XXH3-64 seeded with the table index: `H_t(u64 x) = xxh3_64_with_seed(x as 8
//! little-endian bytes, t)` and `H_t(string s) = xxh3_64_with_seed(UTF-8 bytes of s, t)`.
//! This is exactly the hashing the Criteo TSV reader has always applied to its hex
//! categoricals (a hex value is the integer it spells; an empty field is the empty string),
//! so models trained on Criteo TSV before id maps existed keep their rows.
//!
//! A collisionless map keys on a 64-bit value: an integer id is its own key; a string id's
//! key is `H_t(s)` (two strings collide only with a 64-bit hash collision).
//!
//! What a collisionless miss (an id the map does not hold) looks up is the map's
//! [`Miss`] setting: a zero vector (the id is dropped from its bag; Monolith) or the
//! table's last row, a shared default row that no id owns (TorchRec's MCH). Either way the
//! miss gets no gradient.

pub mod collisionless;
pub mod file;

pub use collisionless::{CollisionlessMap, Resolved};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::error::{ModelError, Result};

/// The longest string id, in bytes; a longer one is an input error naming table and field.
pub const MAX_STRING_ID_BYTES: usize = 256;

/// Largest row count of a table with a collisionless map (rows are u32 in its slots, and two
/// values are the slots' markers).
pub const MAX_COLLISIONLESS_ROWS: usize = (u32::MAX - 2) as usize;

/// A raw feature id as it arrives in input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawId<'a> {
    Int(u64),
    Str(&'a str),
}

/// `H_t(x)`: the seeded 64-bit hash of raw id `x` of table `t` (see the module doc).
#[inline]
pub fn hash_id(id: RawId<'_>, table: usize) -> u64 {
    match id {
        RawId::Int(v) => xxh3_64_with_seed(&v.to_le_bytes(), table as u64),
        RawId::Str(s) => xxh3_64_with_seed(s.as_bytes(), table as u64),
    }
}

/// The row of raw id `id` in table `table` of `rows` rows under the `hash` map.
#[inline]
pub fn hash_row(id: RawId<'_>, table: usize, rows: usize) -> u32 {
    (hash_id(id, table) % rows as u64) as u32
}

/// The key of raw id `id` of table `table` in a collisionless map: an integer is its own
/// key, a string its hash `H_t`.
#[inline]
pub fn collisionless_key(id: RawId<'_>, table: usize) -> u64 {
    match id {
        RawId::Int(v) => v,
        RawId::Str(_) => hash_id(id, table),
    }
}

/// What a collisionless map's TTL counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// training steps since the id's last update
    Steps(u32),
    /// wall-clock seconds since the id's last update
    Seconds(u32),
}

/// Which ids a full collisionless map evicts to make room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Evict {
    /// least frequently used (fewest updates; ties: least recent, then lowest row)
    #[default]
    Lfu,
    /// least recently used (oldest update; ties: lowest row)
    Lru,
}

/// What an id the map does not hold looks up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Miss {
    /// a zero vector: the id is left out of its bag
    #[default]
    Zero,
    /// the table's last row, which no id owns (capacity is then `rows - 1`)
    Default,
}

/// The settings of a collisionless map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollisionlessSpec {
    /// occurrences before an id gets a row: 1 (at first sight) ..= 15 (the admission
    /// filter's counters saturate at 15)
    pub admit: u8,
    pub ttl: Option<Ttl>,
    pub evict: Evict,
    pub miss: Miss,
}

impl Default for CollisionlessSpec {
    fn default() -> Self {
        CollisionlessSpec {
            admit: 1,
            ttl: None,
            evict: Evict::Lfu,
            miss: Miss::Zero,
        }
    }
}

impl CollisionlessSpec {
    /// The ids a table of `rows` rows holds: every row, or all but the default row.
    pub fn capacity(&self, rows: usize) -> usize {
        match self.miss {
            Miss::Zero => rows,
            Miss::Default => rows - 1,
        }
    }
}

/// A table's id map (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdMapSpec {
    #[default]
    Index,
    Hash,
    Collisionless(CollisionlessSpec),
}

impl IdMapSpec {
    /// Parses `index`, `hash`, or `collisionless[:admit=K,ttl=N|Ns,evict=lfu|lru,miss=zero|default]`
    /// (`ttl=N` counts training steps, `ttl=Ns` seconds). The error says what is wrong.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        match s {
            "index" => return Ok(IdMapSpec::Index),
            "hash" => return Ok(IdMapSpec::Hash),
            _ => {}
        }
        let Some(rest) = s.strip_prefix("collisionless") else {
            if s.starts_with("qr") {
                return Err(format!(
                    "`{s}`: the quotient-remainder map (qr) is not supported yet (known: index, hash, collisionless[:...])"
                ));
            }
            return Err(format!(
                "`{s}` is not an id map (known: index, hash, collisionless[:admit=K,ttl=N|Ns,evict=lfu|lru,miss=zero|default])"
            ));
        };
        let mut c = CollisionlessSpec::default();
        let opts = match rest {
            "" => "",
            r => r
                .strip_prefix(':')
                .ok_or_else(|| format!("`{s}`: options follow a `:`"))?,
        };
        let mut seen: Vec<&str> = Vec::new();
        for kv in opts.split(',').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("`{kv}` in `{s}` is not key=value"))?;
            if seen.contains(&k) {
                return Err(format!("`{k}` given twice in `{s}`"));
            }
            seen.push(k);
            let bad = |what: &str| format!("`{kv}` in `{s}`: {what}");
            match k {
                "admit" => {
                    c.admit = v
                        .parse::<u8>()
                        .ok()
                        .filter(|a| (1..=15).contains(a))
                        .ok_or_else(|| bad("admit is an occurrence count 1..=15"))?
                }
                "ttl" => {
                    let (n, secs) = match v.strip_suffix('s') {
                        Some(n) => (n, true),
                        None => (v, false),
                    };
                    let n = n.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                        bad("ttl is a positive count of steps, or of seconds with an `s`")
                    })?;
                    c.ttl = Some(if secs { Ttl::Seconds(n) } else { Ttl::Steps(n) });
                }
                "evict" => {
                    c.evict = match v {
                        "lfu" => Evict::Lfu,
                        "lru" => Evict::Lru,
                        _ => return Err(bad("evict is lfu or lru")),
                    }
                }
                "miss" => {
                    c.miss = match v {
                        "zero" => Miss::Zero,
                        "default" => Miss::Default,
                        _ => return Err(bad("miss is zero or default")),
                    }
                }
                _ => return Err(bad("unknown option (admit, ttl, evict, miss)")),
            }
        }
        Ok(IdMapSpec::Collisionless(c))
    }

    /// The spec's text, which [`IdMapSpec::parse`] reads back (options at their defaults
    /// are left out).
    pub fn name(&self) -> String {
        match self {
            IdMapSpec::Index => "index".into(),
            IdMapSpec::Hash => "hash".into(),
            IdMapSpec::Collisionless(c) => {
                let mut opts = Vec::new();
                if c.admit != 1 {
                    opts.push(format!("admit={}", c.admit));
                }
                match c.ttl {
                    Some(Ttl::Steps(n)) => opts.push(format!("ttl={n}")),
                    Some(Ttl::Seconds(n)) => opts.push(format!("ttl={n}s")),
                    None => {}
                }
                if c.evict != Evict::Lfu {
                    opts.push("evict=lru".into());
                }
                if c.miss != Miss::Zero {
                    opts.push("miss=default".into());
                }
                if opts.is_empty() {
                    "collisionless".into()
                } else {
                    format!("collisionless:{}", opts.join(","))
                }
            }
        }
    }

    /// The collisionless settings, if this is a collisionless map.
    pub fn collisionless(&self) -> Option<&CollisionlessSpec> {
        match self {
            IdMapSpec::Collisionless(c) => Some(c),
            _ => None,
        }
    }

    /// Whether ids are raw (anything but `index`).
    pub fn takes_raw_ids(&self) -> bool {
        !matches!(self, IdMapSpec::Index)
    }

    /// Checks the spec against its table's row count; errors name the table.
    pub fn check_rows(&self, table: usize, rows: usize) -> std::result::Result<(), String> {
        if let IdMapSpec::Collisionless(c) = self {
            if rows > MAX_COLLISIONLESS_ROWS {
                return Err(format!(
                    "table {table}: a collisionless map holds at most {MAX_COLLISIONLESS_ROWS} rows, the table has {rows}"
                ));
            }
            if c.miss == Miss::Default && rows < 2 {
                return Err(format!(
                    "table {table}: miss=default needs a second row beside the default row"
                ));
            }
        }
        Ok(())
    }
}

/// One `--id-map [TABLES=]SPEC` flag: the tables it sets (`None`: all) and the spec.
/// `TABLES` is a comma-separated list of table indices or ranges `a-b` (inclusive); the
/// prefix is recognised only when everything before the first `=` is digits, commas and
/// dashes, so `collisionless:admit=2` is a spec for all tables.
pub fn parse_id_map_flag(s: &str) -> std::result::Result<(Option<Vec<usize>>, IdMapSpec), String> {
    let (tables, spec) = match s.split_once('=') {
        Some((pre, rest))
            if !pre.is_empty()
                && pre
                    .bytes()
                    .all(|c| c.is_ascii_digit() || c == b',' || c == b'-') =>
        {
            let mut ts = Vec::new();
            for part in pre.split(',') {
                let bad = || format!("`{part}` in `{s}` is not a table index or range a-b");
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b): (usize, usize) =
                            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                        if a > b {
                            return Err(bad());
                        }
                        ts.extend(a..=b);
                    }
                    None => ts.push(part.parse().map_err(|_| bad())?),
                }
            }
            (Some(ts), rest)
        }
        _ => (None, s),
    };
    Ok((tables, IdMapSpec::parse(spec)?))
}

/// Applies `--id-map` flags, in order (a later one overrides), to `cfg`'s maps; checks the
/// tables named exist and the result is valid.
pub fn apply_id_map_flags(cfg: crate::DlrmConfig, flags: &[String]) -> Result<crate::DlrmConfig> {
    if flags.is_empty() {
        return Ok(cfg);
    }
    let n = cfg.n_tables();
    let mut maps: Vec<IdMapSpec> = (0..n).map(|t| *cfg.id_map(t)).collect();
    for f in flags {
        let (tables, spec) = parse_id_map_flag(f).map_err(|e| ModelError::input("--id-map", e))?;
        match tables {
            None => maps.iter_mut().for_each(|m| *m = spec),
            Some(ts) => {
                for t in ts {
                    if t >= n {
                        return Err(ModelError::input(
                            "--id-map",
                            format!("`{f}`: table {t} does not exist (the model has {n})"),
                        ));
                    }
                    maps[t] = spec;
                }
            }
        }
    }
    let cfg = cfg.with_id_maps(maps);
    cfg.validate()?;
    Ok(cfg)
}

/// The keys of one collisionless table for a batch, in bags (the layout of
/// [`crate::Bags`]: `offsets[B + 1]` into `keys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyBags {
    pub offsets: Vec<u32>,
    pub keys: Vec<u64>,
}

impl KeyBags {
    /// No bags yet.
    pub fn new() -> Self {
        KeyBags {
            offsets: vec![0],
            keys: Vec::new(),
        }
    }

    /// Appends one bag.
    pub fn push(&mut self, keys: &[u64]) -> Result<()> {
        let end = self.keys.len() + keys.len();
        if end > u32::MAX as usize {
            return Err(ModelError::input(
                "sparse",
                "more than 2^32 ids per table in one batch",
            ));
        }
        self.keys.extend_from_slice(keys);
        self.offsets.push(end as u32);
        Ok(())
    }

    /// Number of bags.
    pub fn bags(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// Parses one raw id of table `table` from JSON: a non-negative integer up to 2^64 - 1
/// (read exactly, never through a float) or a string of at most [`MAX_STRING_ID_BYTES`].
/// `field` names the place in errors.
pub fn raw_id_from_json<'a>(
    v: &'a serde_json::Value,
    table: usize,
    field: &dyn Fn() -> String,
) -> Result<RawId<'a>> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(RawId::Int).ok_or_else(|| {
            ModelError::input(
                field(),
                format!(
                    "`{v}` is not a raw id of table {table} (an integer 0 ..= 2^64-1, or a string)"
                ),
            )
        }),
        serde_json::Value::String(s) => {
            if s.len() > MAX_STRING_ID_BYTES {
                return Err(ModelError::input(
                    field(),
                    format!(
                        "a string id of {} bytes for table {table}; the longest is {MAX_STRING_ID_BYTES}",
                        s.len()
                    ),
                ));
            }
            Ok(RawId::Str(s))
        }
        other => Err(ModelError::input(
            field(),
            format!(
                "`{other}` is not a raw id of table {table} (an integer 0 ..= 2^64-1, or a string)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_errors_say_why() {
        for s in [
            "index",
            "hash",
            "collisionless",
            "collisionless:admit=3",
            "collisionless:admit=2,ttl=100,evict=lru,miss=default",
            "collisionless:ttl=3600s",
        ] {
            let p = IdMapSpec::parse(s).unwrap();
            assert_eq!(p.name(), s);
            assert_eq!(IdMapSpec::parse(&p.name()).unwrap(), p);
        }
        let c = IdMapSpec::parse("collisionless:miss=default,admit=5").unwrap();
        assert_eq!(
            c.collisionless().unwrap(),
            &CollisionlessSpec {
                admit: 5,
                ttl: None,
                evict: Evict::Lfu,
                miss: Miss::Default
            }
        );
        for (bad, want) in [
            ("hashh", "is not an id map"),
            ("qr:4", "not supported yet"),
            ("collisionless:admit=0", "1..=15"),
            ("collisionless:admit=16", "1..=15"),
            ("collisionless:ttl=0", "positive"),
            ("collisionless:ttl=-1", "positive"),
            ("collisionless:evict=fifo", "lfu or lru"),
            ("collisionless:miss=one", "zero or default"),
            ("collisionless:foo=1", "unknown option"),
            ("collisionless:admit", "key=value"),
            ("collisionless:admit=1,admit=2", "twice"),
            ("collisionlessx", "options follow"),
        ] {
            let e = IdMapSpec::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn id_map_flags_name_tables_or_all() {
        assert_eq!(parse_id_map_flag("hash").unwrap(), (None, IdMapSpec::Hash));
        let (t, s) = parse_id_map_flag("collisionless:admit=2").unwrap();
        assert_eq!((t, s.collisionless().unwrap().admit), (None, 2));
        let (t, s) = parse_id_map_flag("0,3-5=collisionless:ttl=9").unwrap();
        assert_eq!(t, Some(vec![0, 3, 4, 5]));
        assert!(s.collisionless().is_some());
        assert!(parse_id_map_flag("5-3=hash").unwrap_err().contains("range"));
        assert!(
            parse_id_map_flag("1=foo")
                .unwrap_err()
                .contains("not an id map")
        );
        let cfg = crate::presets::preset("rmc1").map(|p| p.config);
        if let Ok(cfg) = cfg {
            let n = cfg.n_tables();
            let c = apply_id_map_flags(cfg.clone(), &["hash".into(), "0=index".into()]).unwrap();
            assert_eq!(*c.id_map(0), IdMapSpec::Index);
            assert_eq!(*c.id_map(n - 1), IdMapSpec::Hash);
            let e = apply_id_map_flags(cfg, &[format!("{n}=hash")])
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not exist"), "{e}");
        }
    }

    #[test]
    fn hash_is_the_criteo_readers_hash() {
        // the values the Criteo reader has always used: xxh3 of the value's LE bytes (and of
        // b"" for an empty field), seeded with the table index
        let v = u64::from_str_radix("68fd1e64", 16).unwrap();
        assert_eq!(
            hash_id(RawId::Int(v), 3),
            xxh3_64_with_seed(&v.to_le_bytes(), 3)
        );
        assert_eq!(hash_id(RawId::Str(""), 5), xxh3_64_with_seed(b"", 5));
        assert_eq!(
            hash_row(RawId::Int(v), 3, 1000) as u64,
            xxh3_64_with_seed(&v.to_le_bytes(), 3) % 1000
        );
        // stable across versions: pinned values
        assert_eq!(hash_id(RawId::Int(0), 0), 0xc77b3abb6f87acd9);
        assert_eq!(hash_id(RawId::Str("abc"), 1), xxh3_64_with_seed(b"abc", 1));
    }

    #[test]
    fn big_ids_differing_in_the_lowest_bit_stay_apart() {
        let a = (1u64 << 60) + 2;
        let b = a + 1;
        for t in 0..4 {
            assert_ne!(hash_id(RawId::Int(a), t), hash_id(RawId::Int(b), t));
            assert_ne!(
                collisionless_key(RawId::Int(a), t),
                collisionless_key(RawId::Int(b), t)
            );
        }
        let line: serde_json::Value = serde_json::from_str(
            "[18446744073709551615, 18446744073709551614, 9007199254740993, 9007199254740992]",
        )
        .unwrap();
        let ids: Vec<_> = line
            .as_array()
            .unwrap()
            .iter()
            .map(|v| raw_id_from_json(v, 0, &|| "x".into()).unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![
                RawId::Int(u64::MAX),
                RawId::Int(u64::MAX - 1),
                RawId::Int((1 << 53) + 1),
                RawId::Int(1 << 53)
            ]
        );
    }

    #[test]
    fn bad_raw_ids_name_table_and_field() {
        let field = || "sparse[2][0]".to_string();
        for (text, want) in [
            ("-1", "is not a raw id of table 2"),
            ("1.5", "is not a raw id of table 2"),
            ("18446744073709551616", "is not a raw id of table 2"),
            ("true", "is not a raw id of table 2"),
            ("[1]", "is not a raw id of table 2"),
        ] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let e = raw_id_from_json(&v, 2, &field).unwrap_err().to_string();
            assert!(
                e.contains("sparse[2][0]") && e.contains(want),
                "{text}: {e}"
            );
        }
        let long = serde_json::Value::String("x".repeat(MAX_STRING_ID_BYTES + 1));
        let e = raw_id_from_json(&long, 2, &field).unwrap_err().to_string();
        assert!(
            e.contains("the longest is 256") && e.contains("table 2"),
            "{e}"
        );
        let ok = serde_json::Value::String("x".repeat(MAX_STRING_ID_BYTES));
        assert!(raw_id_from_json(&ok, 2, &field).is_ok());
    }
}
