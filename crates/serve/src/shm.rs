//! Triton's system shared memory extension: a client registers a region of a POSIX shared
//! memory object (`/dev/shm/NAME`, key `/NAME`) under a name once, and its inference requests
//! then name the region, offset and size of each input instead of carrying the bytes (and
//! may have outputs written there instead of answered).
//!
//! A region is mapped (shared, read-write) at registration and unmapped when it is
//! unregistered and the last request using it has finished (each request holds an `Arc`).

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Most regions registered at once.
pub const MAX_REGIONS: usize = 64;

/// Where POSIX shared memory objects live (`shm_open("/NAME")` is `/dev/shm/NAME` on Linux).
const SHM_DIR: &str = "/dev/shm";

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// A registered region: `byte_size` bytes at `offset` of the object `key`, mapped.
pub struct Region {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: usize,
    map: memmap2::MmapRaw,
}

impl Region {
    /// Checks that `size` bytes at `offset` (both from a request, counted from the region's
    /// start) lie within the region; the error names `what` (the tensor).
    pub fn check_range(&self, what: &str, offset: u64, size: u64) -> Result<(), ApiError> {
        let end = offset.checked_add(size);
        if end.is_none_or(|e| e > self.byte_size as u64) {
            return Err(bad(format!(
                "{what}: parameters \"shared_memory_offset\" {offset} + \"shared_memory_byte_size\" {size} go past the end of shared memory region \"{}\" ({} bytes)",
                self.name, self.byte_size
            )));
        }
        Ok(())
    }

    /// The region's bytes `offset..offset + len`, which [`Region::check_range`] accepted.
    ///
    /// Another process (the client) may write these bytes while the server reads them: what
    /// is read from here must be treated as untrusted input that can change under the
    /// reader, i.e. read once into private memory and validated there (each id is read once
    /// and range-checked as it is narrowed into the batch, dense values are copied and then
    /// checked finite by `Batch::from_parts_ids_checked`, lengths are copied before they are
    /// summed), never trusted from a second read.
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.byte_size),
            "a range checked against the region"
        );
        // SAFETY: the range lies within the mapping (asserted above), which stays mapped
        // while `self` lives (unmapped on drop, after the last request holding the region).
        // The bytes may change concurrently (another process writes the shared object):
        // any bit pattern is a valid u8, and every caller reads each value once into private
        // memory and validates it there (see the doc comment), so a concurrent write can
        // only produce values that are then checked like any request data. A client that
        // truncates the object under the mapping makes the access fault (SIGBUS), as with
        // Triton: the extension is for trusted local clients (`--allow-client-shm`).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(offset), len) }
    }

    /// Writes `data` at `offset` of the region (a range [`Region::check_range`] accepted).
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(
            offset
                .checked_add(data.len())
                .is_some_and(|e| e <= self.byte_size),
            "a range checked against the region"
        );
        // SAFETY: within the mapping (asserted), which is writable (mapped read-write) and
        // alive while `self` is; `data` is private memory, so the two cannot overlap. The
        // client may read or write the same bytes concurrently; that only affects what the
        // client sees, never memory the server relies on.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                data.len(),
            )
        }
    }

    fn status(&self) -> RegionStatus {
        RegionStatus {
            name: self.name.clone(),
            key: self.key.clone(),
            offset: self.offset,
            byte_size: self.byte_size as u64,
        }
    }
}

/// One region in the answer of `GET /v2/systemsharedmemory[/region/{name}]/status`.
#[derive(Serialize, Debug)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// The body of `POST /v2/systemsharedmemory/region/{name}/register`.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a register request object {\"key\", \"offset\", \"byte_size\"}"
)]
pub struct RegisterRequest {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

/// The registered regions, by name.
pub struct Registry {
    /// `--allow-client-shm`: registration is refused (403) without it
    enabled: bool,
    /// held only for lookups and inserts, never across an await or a system call
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
}

impl Registry {
    pub fn new(enabled: bool) -> Self {
        Registry {
            enabled,
            regions: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Region>>> {
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The region registered as `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Region>> {
        self.map().get(name).cloned()
    }

    /// Opens the object `req.key`, checks that `req.offset + req.byte_size` fits in it, maps
    /// that range and registers it as `name`.
    pub fn register(&self, name: &str, req: RegisterRequest) -> Result<(), ApiError> {
        if !self.enabled {
            return Err(ApiError::Forbidden(
                "system shared memory is disabled on this server (start dlrs serve with --allow-client-shm to let local clients register regions)".into(),
            ));
        }
        let what = format!("shared memory region \"{name}\"");
        if name.is_empty() {
            return Err(bad("region name: must not be empty"));
        }
        let (key, offset, byte_size) = (req.key, req.offset, req.byte_size);
        let obj = key_name(&key).map_err(|why| bad(format!("{what}: key {key:?}: {why}")))?;
        // refused before the object is opened; checked again at insertion
        self.check_room(name)?;
        if byte_size == 0 {
            return Err(bad(format!("{what}: byte_size must be positive")));
        }
        let path = std::path::Path::new(SHM_DIR).join(obj);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no such shared memory object".to_string(),
                    _ if e.raw_os_error() == Some(libc::ELOOP) => {
                        "is a symbolic link (not followed)".to_string()
                    }
                    _ => format!("cannot be opened for reading and writing: {e}"),
                };
                bad(format!("{what}: key \"{key}\" ({}): {why}", path.display()))
            })?;
        let meta = file
            .metadata()
            .map_err(|e| bad(format!("{what}: key \"{key}\": {e}")))?;
        if !meta.is_file() {
            return Err(bad(format!(
                "{what}: key \"{key}\" ({}) is not a shared memory object",
                path.display()
            )));
        }
        let len = meta.len();
        if offset.checked_add(byte_size).is_none_or(|end| end > len) {
            return Err(bad(format!(
                "{what}: offset {offset} + byte_size {byte_size} go past the end of \"{key}\" ({len} bytes)"
            )));
        }
        let size = usize::try_from(byte_size)
            .map_err(|_| bad(format!("{what}: byte_size {byte_size} is too large")))?;
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(size)
            .map_raw(&file)
            .map_err(|e| bad(format!("{what}: mapping \"{key}\" failed: {e}")))?;
        let region = Arc::new(Region {
            name: name.to_string(),
            key,
            offset,
            byte_size: size,
            map,
        });
        let mut regions = self.map();
        self.room_in(&regions, name)?;
        regions.insert(name.to_string(), region);
        Ok(())
    }

    fn check_room(&self, name: &str) -> Result<(), ApiError> {
        self.room_in(&self.map(), name)
    }

    fn room_in(&self, regions: &BTreeMap<String, Arc<Region>>, name: &str) -> Result<(), ApiError> {
        if regions.contains_key(name) {
            return Err(bad(format!(
                "shared memory region \"{name}\" is already registered (unregister it first)"
            )));
        }
        if regions.len() >= MAX_REGIONS {
            return Err(bad(format!(
                "shared memory region \"{name}\": {MAX_REGIONS} regions are registered, the most this server keeps; unregister one first"
            )));
        }
        Ok(())
    }

    /// The status of every region (`None`) or of `name` (404 when it is not registered).
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, ApiError> {
        let regions = self.map();
        match name {
            None => Ok(regions.values().map(|r| r.status()).collect()),
            Some(n) => regions.get(n).map(|r| vec![r.status()]).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no system shared memory region \"{n}\" is registered"
                ))
            }),
        }
    }

    /// Unregisters `name` (`None`: every region). As Triton does, a name that is not
    /// registered is not an error. A region still used by requests in flight stays mapped
    /// until they finish.
    pub fn unregister(&self, name: Option<&str>) {
        let removed: Vec<Arc<Region>> = {
            let mut regions = self.map();
            match name {
                None => std::mem::take(&mut *regions).into_values().collect(),
                Some(n) => regions.remove(n).into_iter().collect(),
            }
        };
        // unmapped here (outside the lock), or by the last request holding one
        drop(removed);
    }
}

/// The object name of a key `/NAME`: one path component after the slash (no other `/`, not
/// `.` or `..`, no NUL, at most 255 bytes), as POSIX `shm_open` takes it.
fn key_name(key: &str) -> Result<&str, &'static str> {
    let Some(name) = key.strip_prefix('/') else {
        return Err("must be \"/NAME\" (a POSIX shared memory key starting with '/')");
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err("must be \"/NAME\" with a name after the '/'");
    }
    if name.contains('/') {
        return Err("must be \"/NAME\" with no other '/' (an object directly in /dev/shm)");
    }
    if name.contains('\0') {
        return Err("must not contain NUL");
    }
    if name.len() > 255 {
        return Err("name longer than 255 bytes");
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::key_name;

    #[test]
    fn keys_are_one_component_under_dev_shm() {
        assert_eq!(key_name("/abc"), Ok("abc"));
        assert_eq!(key_name("/a.b-c_1"), Ok("a.b-c_1"));
        for bad in [
            "abc",
            "/",
            "/.",
            "/..",
            "/a/b",
            "/../etc/passwd",
            "//x",
            "/a\0b",
            "",
        ] {
            assert!(key_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(key_name(&format!("/{}", "x".repeat(256))).is_err());
    }
}
