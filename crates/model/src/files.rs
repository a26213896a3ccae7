//! Opening and reading the files dlrs reads whole, safely.
//!
//! The rule, for every file dlrs reads (model files, manifests, checkpoint state, optimizer
//! state, query-size files):
//!
//! - **Only regular files.** A directory, a FIFO, a socket or a device (`/dev/zero`,
//!   `/dev/urandom`, `/dev/null`) is refused with "not a regular file (a FIFO)" and so on,
//!   never read. The file is opened with `O_NONBLOCK`, so that a FIFO put in its place
//!   between the check and the open cannot block the opening thread (a plain `open(2)` of a
//!   FIFO waits for a writer forever), and the check is made on the opened descriptor.
//! - **A size bound checked before the read.** Each kind of file read whole has a documented
//!   bound ([`CONFIG_MAX_BYTES`], [`STATE_MAX_BYTES`], ...); a larger file is refused from
//!   its size alone, without reading it, and the read itself stops at the bound (a file
//!   growing meanwhile, or one whose size the kernel reports as 0, as `/proc` files do,
//!   cannot push it past).
//!
//! Large files (tables) are memory-mapped after [`open_regular`], never read whole.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest `config.json` read: 1 MiB. (The largest preset's is under 1 KiB; the bound leaves
/// room for per-table settings of thousands of tables.)
pub const CONFIG_MAX_BYTES: u64 = 1 << 20;

/// Largest `train_state.json` of a checkpoint read: 1 MiB.
pub const STATE_MAX_BYTES: u64 = 1 << 20;

/// Largest JSON header of a safetensors file read (the manifest lives in it): 100 MB, the
/// bound the safetensors format itself sets.
pub const SAFETENSORS_HEADER_MAX_BYTES: u64 = 100_000_000;

/// Largest auxiliary text file read whole (a query-size distribution, a payload list):
/// 64 MiB.
pub const TEXT_MAX_BYTES: u64 = 64 << 20;

/// What kind of file `meta` describes, for "not a regular file (a FIFO)".
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// An error saying the file is not a regular file (`io::ErrorKind::InvalidInput`).
fn not_regular(meta: &Metadata) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({})", kind(meta)),
    )
}

/// Opens `path` for reading if it is a regular file (symlinks followed), without blocking on
/// a FIFO; returns the file and its metadata as of the open. Anything else is an
/// `InvalidInput` error saying what it is.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    // a cheap refusal first, so that nothing (not even a non-blocking open) touches a device
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    // the file may have been replaced between the two looks: the descriptor decides
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    Ok((file, meta))
}

/// Reads a regular file whole if it holds at most `max` bytes; `what` names the kind of file
/// in the error ("a config.json"). The size is checked before reading, and the read stops
/// at `max` + 1 bytes whatever the size said.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> io::Result<Vec<u8>> {
    let (file, meta) = open_regular(path)?;
    // `at_least`: the size is what the read found, not what the file system said
    let too_big = |n: u64, at_least: bool| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{n} bytes{}: larger than the {} {what} may have",
                if at_least { " or more" } else { "" },
                human(max)
            ),
        )
    };
    if meta.len() > max {
        return Err(too_big(meta.len(), false));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(too_big(buf.len() as u64, true));
    }
    Ok(buf)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text_bounded(path: &Path, max: u64, what: &str) -> io::Result<String> {
    let bytes = read_bounded(path, max, what)?;
    String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// `1 MiB`, `64 MiB`, `100000000 bytes`: a bound as the docs give it.
fn human(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn err_text(r: io::Result<impl Sized>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn reads_a_small_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        std::fs::write(&p, b"{\"x\": 1}").unwrap();
        assert_eq!(
            read_text_bounded(&p, 100, "a test file").unwrap(),
            "{\"x\": 1}"
        );
        // exactly at the bound is fine, one byte over is not
        assert_eq!(read_bounded(&p, 8, "a test file").unwrap().len(), 8);
        let e = err_text(read_bounded(&p, 7, "a test file"));
        assert!(e.contains("8 bytes") && e.contains("a test file"), "{e}");
    }

    #[test]
    fn refuses_devices_directories_and_fifos_at_once() {
        let d = tempfile::tempdir().unwrap();
        for (p, what) in [
            (Path::new("/dev/zero"), "a character device"),
            (Path::new("/dev/urandom"), "a character device"),
            (Path::new("/dev/null"), "a character device"),
            (d.path(), "a directory"),
        ] {
            let e = err_text(read_bounded(p, 1 << 20, "a config.json"));
            assert_eq!(e, format!("not a regular file ({what})"), "{}", p.display());
            let e = err_text(open_regular(p));
            assert_eq!(e, format!("not a regular file ({what})"));
        }
        // a symlink to a device is the device
        let link = d.path().join("config.json");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(err_text(read_bounded(&link, 1 << 20, "x")).contains("character device"));

        // a FIFO with no writer: a plain open would block forever
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        assert_eq!(err_text(open_regular(&fifo)), "not a regular file (a FIFO)");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn refuses_a_huge_sparse_file_from_its_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        let f = File::create(&p).unwrap();
        f.set_len(4 << 30).unwrap();
        let t = Instant::now();
        let e = err_text(read_bounded(&p, CONFIG_MAX_BYTES, "a config.json"));
        assert_eq!(
            e,
            "4294967296 bytes: larger than the 1 MiB a config.json may have"
        );
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn the_read_stops_at_the_bound_when_the_size_says_less() {
        // /proc files report size 0 but have content: the read is still bounded
        let p = Path::new("/proc/self/maps");
        if p.exists() {
            let e = err_text(read_bounded(p, 16, "a test file"));
            assert!(e.contains("17 bytes or more"), "{e}");
        }
    }

    #[test]
    fn missing_files_keep_the_os_error() {
        let e = open_regular(Path::new("/nonexistent/x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
