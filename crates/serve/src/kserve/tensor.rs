//! Tensor data into typed values: an input's `data` (flat or nested JSON numbers), its
//! binary data (little-endian, read in place) or its bytes in system shared memory, checked
//! against its shape and datatype.

use std::fmt;

use serde::de::{self, DeserializeSeed, Visitor};
use serde_json::value::RawValue;

use super::bad;
use super::shm_ref::ShmRef;
use crate::error::ApiError;

/// How errors name input `index` called `name`: `inputs[i] "name"`.
pub(super) fn input_label(index: usize, name: &str) -> String {
    format!("inputs[{index}] \"{name}\"")
}

/// An element type of a tensor.
pub(super) trait Elem: Sized + Copy {
    const DATATYPE: &'static str;
    const SIZE: usize;
    fn from_i64(v: i64) -> Result<Self, String>;
    fn from_u64(v: u64) -> Result<Self, String>;
    fn from_f64(v: f64) -> Result<Self, String>;
    fn from_le(b: &[u8]) -> Self;
}

impl Elem for f32 {
    const DATATYPE: &'static str = "FP32";
    const SIZE: usize = 4;
    fn from_i64(v: i64) -> Result<Self, String> {
        Ok(v as f32)
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        Ok(v as f32)
    }
    /// Values beyond f32's range become infinite here and are refused as not finite by
    /// `Batch::from_parts_ids_checked`, which names the sample and feature.
    fn from_f64(v: f64) -> Result<Self, String> {
        Ok(v as f32)
    }
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes(b.try_into().expect("4 bytes"))
    }
}

fn integral(v: f64, dt: &str) -> Result<i64, String> {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Ok(v as i64)
    } else {
        Err(format!("{v} is not an {dt} integer"))
    }
}

impl Elem for i32 {
    const DATATYPE: &'static str = "INT32";
    const SIZE: usize = 4;
    fn from_i64(v: i64) -> Result<Self, String> {
        i32::try_from(v).map_err(|_| format!("{v} is out of range for INT32"))
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        i32::try_from(v).map_err(|_| format!("{v} is out of range for INT32"))
    }
    fn from_f64(v: f64) -> Result<Self, String> {
        Self::from_i64(integral(v, Self::DATATYPE)?)
    }
    fn from_le(b: &[u8]) -> Self {
        i32::from_le_bytes(b.try_into().expect("4 bytes"))
    }
}

impl Elem for i64 {
    const DATATYPE: &'static str = "INT64";
    const SIZE: usize = 8;
    fn from_i64(v: i64) -> Result<Self, String> {
        Ok(v)
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        i64::try_from(v).map_err(|_| format!("{v} is out of range for INT64"))
    }
    fn from_f64(v: f64) -> Result<Self, String> {
        integral(v, Self::DATATYPE)
    }
    fn from_le(b: &[u8]) -> Self {
        i64::from_le_bytes(b.try_into().expect("8 bytes"))
    }
}

/// Deserializes tensor data, flat or nested to any depth, into one flat vector.
struct Flat<'v, T> {
    out: &'v mut Vec<T>,
    depth: u32,
}

impl<'de, T: Elem> DeserializeSeed<'de> for Flat<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<T: Elem> Flat<'_, T> {
    fn push<E: de::Error>(self, v: Result<T, String>) -> Result<(), E> {
        let i = self.out.len();
        self.out
            .push(v.map_err(|m| E::custom(format!("data element {i}: {m}")))?);
        Ok(())
    }
    fn not_a_number<E: de::Error>(self, what: fmt::Arguments<'_>) -> Result<(), E> {
        Err(E::custom(format!(
            "data element {}: {what} is not a number",
            self.out.len()
        )))
    }
}

impl<'de, T: Elem> Visitor<'de> for Flat<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} numbers (flat or nested)", T::DATATYPE)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.not_a_number(format_args!("{v:?}"))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.not_a_number(format_args!("{v}"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.not_a_number(format_args!("null"))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.not_a_number(format_args!("an object"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= 16 {
            return Err(de::Error::custom("data nested deeper than 16 levels"));
        }
        let (out, depth) = (self.out, self.depth + 1);
        while seq
            .next_element_seed(Flat {
                out: &mut *out,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One input's header, checked, with where its data is.
pub(super) struct Input<'a> {
    /// its place in the request's `inputs`
    pub index: usize,
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub data: Data<'a>,
}

/// Where an input's data is.
pub(super) enum Data<'a> {
    /// `data`, in the JSON
    Json(&'a RawValue),
    /// its part of the binary data after the JSON (`binary_data_size`)
    Binary(&'a [u8]),
    /// a range of a registered shared memory region
    Shm(ShmRef),
}

impl Input<'_> {
    /// How errors name it: `inputs[i] "name"`.
    pub fn label(&self) -> String {
        input_label(self.index, self.name)
    }
    fn count(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn shape_str(&self) -> String {
        format!("{:?}", self.shape)
    }

    /// The values, decoded from JSON or read in place from the binary data or the shared
    /// memory region (whose bytes another process may change meanwhile: see
    /// [`Region::bytes`](crate::shm::Region::bytes); every value is read once, into the
    /// batch).
    pub fn values<T: Elem>(&self) -> Result<Values<'_, T>, ApiError> {
        let n = self.count();
        let (bytes, param) = match &self.data {
            Data::Binary(bytes) => (*bytes, "binary_data_size"),
            Data::Shm(r) => (r.bytes(), "shared_memory_byte_size"),
            Data::Json(raw) => return self.decode(raw, n),
        };
        if bytes.len() != n * T::SIZE {
            return Err(bad(format!(
                "{}: {param} {} bytes for shape {} of {} ({} bytes expected)",
                self.label(),
                bytes.len(),
                self.shape_str(),
                T::DATATYPE,
                n * T::SIZE
            )));
        }
        Ok(Values::Le(bytes, std::marker::PhantomData))
    }

    /// The values of JSON `data`.
    fn decode<T: Elem>(&self, raw: &RawValue, n: usize) -> Result<Values<'_, T>, ApiError> {
        let mut out = Vec::with_capacity(n.min(raw.get().len() / 2 + 1));
        let mut de = serde_json::Deserializer::from_str(raw.get());
        Flat {
            out: &mut out,
            depth: 0,
        }
        .deserialize(&mut de)
        .map_err(|e| bad(format!("{}: {e}", self.label())))?;
        if out.len() != n {
            return Err(bad(format!(
                "{}: {} values in \"data\" for shape {} ({n} expected)",
                self.label(),
                out.len(),
                self.shape_str()
            )));
        }
        Ok(Values::Decoded(out))
    }
}

/// A tensor's values: decoded from JSON, or little-endian binary data read in place (ids go
/// from the request body straight into the batch, with no intermediate copy).
pub(super) enum Values<'a, T> {
    Decoded(Vec<T>),
    Le(&'a [u8], std::marker::PhantomData<T>),
}

impl<T: Elem> Values<'_, T> {
    pub fn len(&self) -> usize {
        match self {
            Values::Decoded(v) => v.len(),
            Values::Le(b, _) => b.len() / T::SIZE,
        }
    }
    #[inline]
    pub fn get(&self, i: usize) -> T {
        match self {
            Values::Decoded(v) => v[i],
            Values::Le(b, _) => T::from_le(&b[i * T::SIZE..(i + 1) * T::SIZE]),
        }
    }
    pub fn into_vec(self) -> Vec<T> {
        match self {
            Values::Decoded(v) => v,
            Values::Le(b, _) => b.chunks_exact(T::SIZE).map(T::from_le).collect(),
        }
    }
}

impl Values<'_, i64> {
    /// Appends ids `range` to `dst` as u32, written straight into its spare capacity (no
    /// zeroing first; the caller reserves each table's ids once, or this grows `dst`).
    /// `Err(Some(k))` when id `k` (an index into these values) is negative or not below
    /// `rows`; `dst` is then unchanged. The binary data goes through `narrow_ids_le_uninit`,
    /// which vectorizes the check into the copy and reads each id once for both, so the ids
    /// appended are the ids checked even from shared memory. `Err(None)`: an id was out of
    /// range when copied but no longer is when looked for (shared memory that its client
    /// changed meanwhile).
    pub fn push_ids(
        &self,
        range: std::ops::Range<usize>,
        rows: u64,
        dst: &mut Vec<u32>,
    ) -> Result<(), Option<usize>> {
        let (start, end) = (range.start, range.end);
        let n = end - start;
        dst.reserve(n);
        let out = &mut dst.spare_capacity_mut()[..n];
        let ok = match self {
            Values::Decoded(v) => {
                let mut ok = true;
                for (d, &id) in out.iter_mut().zip(&v[start..end]) {
                    ok &= (id as u64) < rows;
                    d.write(id as u32);
                }
                ok
            }
            Values::Le(b, _) => {
                dlrs_kernels::ids::narrow_ids_le_uninit(&b[start * 8..end * 8], rows, out)
            }
        };
        if ok {
            // SAFETY: `out`, the `n` elements after `dst.len()`, lies within the capacity
            // and is initialized: the loop zips it with `n` values and writes each, and
            // `narrow_ids_le_uninit` initializes all of its `dst`.
            unsafe { dst.set_len(dst.len() + n) };
            return Ok(());
        }
        Err((start..end).find(|&k| (self.get(k) as u64) >= rows))
    }
}
