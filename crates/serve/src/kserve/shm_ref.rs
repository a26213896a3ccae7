//! The system shared memory extension's tensor parameters: `shared_memory_region`,
//! `shared_memory_byte_size` and `shared_memory_offset` name a range of a registered region
//! that holds an input's bytes or receives an output's.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::bad;
use crate::error::ApiError;
use crate::shm::{Region, Registry};

const REGION: &str = "shared_memory_region";
const SIZE: &str = "shared_memory_byte_size";
const OFFSET: &str = "shared_memory_offset";

/// A tensor's bytes in a registered system shared memory region: the parameters
/// `shared_memory_region`, `shared_memory_byte_size` and `shared_memory_offset` (default 0),
/// checked to lie within the region. Holds the region: it stays mapped while the request
/// lives, even if it is unregistered meanwhile.
#[derive(Clone)]
pub struct ShmRef {
    pub region: Arc<Region>,
    pub offset: usize,
    pub size: usize,
    /// whether the request gave `shared_memory_offset` (echoed in the answer as given)
    pub offset_given: bool,
}

impl fmt::Debug for ShmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmRef")
            .field("region", &self.region.name)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish()
    }
}

impl ShmRef {
    /// The shared memory range `params` name for tensor `label` (`None` when they name
    /// none). Errors name the tensor and the parameter: a missing or mistyped parameter, a
    /// region that is not registered, a range past the region's end.
    pub(super) fn from_parameters(
        params: &Option<Map<String, Value>>,
        label: &str,
        shm: &Registry,
    ) -> Result<Option<ShmRef>, ApiError> {
        let Some(p) = params else { return Ok(None) };
        let (region, size, offset) = (p.get(REGION), p.get(SIZE), p.get(OFFSET));
        if region.is_none() && size.is_none() && offset.is_none() {
            return Ok(None);
        }
        let name = match region {
            Some(Value::String(n)) => n,
            Some(v) => {
                return Err(bad(format!(
                    "{label}: parameter \"{REGION}\" must be a region name (a string), got {v}"
                )));
            }
            None => {
                return Err(bad(format!(
                    "{label}: parameter \"{}\" without \"{REGION}\"",
                    if size.is_some() { SIZE } else { OFFSET }
                )));
            }
        };
        let int = |key: &str, v: &Value| {
            v.as_u64().ok_or_else(|| {
                bad(format!(
                    "{label}: parameter \"{key}\" must be a non-negative integer, got {v}"
                ))
            })
        };
        let size = match size {
            Some(v) => int(SIZE, v)?,
            None => {
                return Err(bad(format!(
                    "{label}: parameter \"{REGION}\" needs \"{SIZE}\" too"
                )));
            }
        };
        let offset_given = offset.is_some();
        let offset = offset.map(|v| int(OFFSET, v)).transpose()?.unwrap_or(0);
        let region = shm.get(name).ok_or_else(|| {
            bad(format!(
                "{label}: parameter \"{REGION}\": no system shared memory region \"{name}\" is registered"
            ))
        })?;
        region.check_range(label, offset, size)?;
        // within the region, whose size is a usize
        Ok(Some(ShmRef {
            region,
            offset: offset as usize,
            size: size as usize,
            offset_given,
        }))
    }

    /// The parameters naming this range, as a response output carries them.
    pub fn parameters(&self) -> Value {
        let mut p = serde_json::json!({
            "shared_memory_region": self.region.name,
            "shared_memory_byte_size": self.size,
        });
        if self.offset_given {
            p[OFFSET] = Value::from(self.offset);
        }
        p
    }

    /// The range's bytes, read in place (another process may change them meanwhile: see
    /// [`Region::bytes`]).
    pub(super) fn bytes(&self) -> &[u8] {
        self.region.bytes(self.offset, self.size)
    }

    /// Writes `data` at the start of the range (which the caller checked holds it).
    pub fn write(&self, data: &[u8]) {
        assert!(data.len() <= self.size, "the range holds the data");
        self.region.write(self.offset, data);
    }
}
