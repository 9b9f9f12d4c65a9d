//! CPU time clocks for benchmarks and timing tests: on a shared host, CPU time varies far less
//! than wall time. std has no CPU clock, so this is a direct `clock_gettime` (glibc) call.

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

fn read(clock: i32) -> Option<f64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; an unknown clock id only returns an error.
    let ok = unsafe { clock_gettime(clock, &mut ts) } == 0;
    ok.then_some(ts.sec as f64 + ts.nsec as f64 * 1e-9)
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), seconds; `None` off Linux.
pub fn thread_s() -> Option<f64> {
    read(3)
}

/// CPU time of the whole process (`CLOCK_PROCESS_CPUTIME_ID`), seconds; `None` off Linux.
pub fn process_s() -> Option<f64> {
    read(2)
}
