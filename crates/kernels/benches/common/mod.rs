//! Helpers shared by the kernel benches.

/// Fills a buffer with cheap pseudo-random values in [-1, 1) (a xorshift generator, since the
/// tables are large).
pub fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = huge_vec::<f32>(0);
    v.reserve_exact(n);
    advise_huge_pages(&mut v);
    v.extend((0..n).map(|_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }));
    v
}

/// `n` zeros, backed by transparent huge pages where the kernel allows (as the runtime backs its
/// tables), so random reads miss the TLB as seldom as the engine's do.
#[allow(dead_code)]
pub fn huge_vec<T: Copy + Default>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(&mut v);
    v.resize(n, T::default());
    v
}

/// Asks for huge pages over `v`'s capacity (a hint; harmless where THP is off).
fn advise_huge_pages<T>(v: &mut Vec<T>) {
    const HUGE: usize = 2 << 20;
    let bytes = v.capacity() * std::mem::size_of::<T>();
    #[cfg(target_os = "linux")]
    {
        let start = v.as_mut_ptr() as usize;
        let (aligned, end) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        if end > aligned {
            // SAFETY: the range lies inside the vector's allocation; madvise only changes how
            // the kernel backs it.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// The processor's name (`model name` of /proc/cpuinfo) and its ISA paths.
#[allow(dead_code)]
pub fn processor() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| "unknown processor".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let isas: Vec<&str> = streamrec_kernels::cpu::Isa::supported()
        .iter()
        .map(|i| i.name())
        .collect();
    format!("{name}, {cores} cores, ISA paths {}", isas.join(" "))
}
