//! Thread scheduling: priorities and time slices of the calling thread (Linux scheduling is
//! per thread). Best effort everywhere: a failure leaves the thread as it was.

/// Puts the calling thread at the lowest CPU priority (Linux scheduling is per thread): nice
/// 19 and the SCHED_IDLE policy. For background work beside serving — verifying checksums,
/// loading a new model version — so that it uses the cores the compute threads leave idle.
/// SCHED_IDLE matters as much as the nice value: a normal thread waking on a core that a
/// nice-19 thread is running waited for that thread's slice to end (up to a 4 ms tick on a
/// 250 Hz kernel; `perf sched` showed compute and HTTP threads waiting up to 9 ms behind the
/// reload's copy threads, and the queue overflowing), while a SCHED_IDLE thread is preempted
/// at once. Best effort: a failure leaves the priority as it was.
pub fn lower_thread_priority() {
    set_thread_nice(19);
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads a valid sched_param that outlives the call.
        unsafe { libc::sched_setscheduler(current_tid(), libc::SCHED_IDLE, &param) };
    }
}

/// The calling thread's id (Linux scheduling settings are per thread).
#[cfg(target_os = "linux")]
fn current_tid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and returns the caller's thread id.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// Asks the scheduler for short time slices on the calling thread: Linux's EEVDF scheduler
/// (6.12 and later) takes a SCHED_OTHER thread's `sched_runtime` as the length of slice it
/// requests, and a waking thread with a shorter slice than the running one may preempt it
/// at once (`PREEMPT_SHORT`) instead of waiting for the running thread's slice to end, which
/// on a 250 Hz kernel can be a whole 4 ms tick. For threads that wake often and run briefly
/// (a server's HTTP threads, a load generator's senders) beside long-running compute. The
/// thread is set to SCHED_OTHER (the default policy) with its nice value kept; the kernel
/// clamps the slice to 0.1-100 ms. An error (an older kernel, another OS) leaves the thread
/// as it was.
pub fn set_thread_slice(slice: std::time::Duration) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        /// `struct sched_attr` of sched_setattr(2) (SCHED_ATTR_SIZE_VER1).
        #[repr(C)]
        struct SchedAttr {
            size: u32,
            sched_policy: u32,
            sched_flags: u64,
            sched_nice: i32,
            sched_priority: u32,
            sched_runtime: u64,
            sched_deadline: u64,
            sched_period: u64,
            sched_util_min: u32,
            sched_util_max: u32,
        }
        let tid = current_tid();
        // SAFETY: getpriority takes and returns plain integers; it may return -1 as a valid
        // nice value, so errno is cleared first and checked after.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            if nice == -1 && *libc::__errno_location() != 0 {
                return Err(std::io::Error::last_os_error());
            }
            nice
        };
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            sched_flags: 0,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
            sched_deadline: 0,
            sched_period: 0,
            sched_util_min: 0,
            sched_util_max: 0,
        };
        // SAFETY: sched_setattr reads `size` bytes of a valid, initialised sched_attr that
        // outlives the call; the other arguments are plain integers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                tid,
                &attr as *const SchedAttr,
                0u32,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slice;
        Err(std::io::Error::other("time slices are set on Linux only"))
    }
}

/// [`set_thread_slice`] for a thread pool's start hook: nothing for a zero slice; a failure
/// leaves the thread as it was and is logged once per process (a warning), as `{what} not
/// applied (error)` (`what` names the option, e.g. `dlrs serve: --http-slice-us 100`).
pub fn ask_for_thread_slice(slice: std::time::Duration, what: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !slice.is_zero()
        && let Err(e) = set_thread_slice(slice)
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!("{what} not applied ({e}); the thread keeps the kernel's slice");
    }
}

/// Sets the calling thread's nice value (Linux scheduling is per thread; raising it needs no
/// privilege). Best effort: a failure leaves the priority as it was.
pub fn set_thread_nice(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes and returns plain integers.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, current_tid() as libc::id_t, nice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
