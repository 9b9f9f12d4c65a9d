//! Handing memory back while loading.

/// Gives the allocator's free memory back to the system. Loading frees far more than it keeps
/// (the decoded protobuf, tract's parse-time copies of the weights, the graphs before
/// optimization: ~25 MB for the small model), but glibc's malloc keeps freed chunks for reuse
/// (its mmap threshold rises after the first large free, so later large buffers come from the
/// brk heap); without this the freed memory stays private RSS for the life of the process.
pub(super) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only returns free memory to the kernel; it is thread-safe
        // (takes each arena's lock) and has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}
