//! CPU and memory use of the current process, from `/proc/self/stat` and `/proc/self/status`,
//! and the memory it may use (`/proc/meminfo`, or the cgroup v2 limit when lower).
//!
//! CPU is reported as a fraction of the whole machine (all cores) over the time since the
//! previous sample. On systems without `/proc` the values read as zero.

use std::time::Instant;

/// One sample of the process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessUsage {
    /// CPU used since the previous sample, as a fraction (0..1) of the whole machine.
    pub cpu: f32,
    /// The same as cores used (1.0: one core busy).
    pub cpu_cores: f32,
    /// Resident set size.
    pub memory_bytes: u64,
    /// Memory the process may use: the machine's, or its cgroup limit when lower (0: unknown).
    pub memory_total_bytes: u64,
}

/// Turns successive `/proc` readings into CPU fractions.
#[derive(Debug)]
pub struct ProcessSampler {
    ticks_per_second: f64,
    cpus: f64,
    last: Option<(Instant, u64)>,
    last_cpu: f32,
    memory_total_bytes: u64,
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessSampler {
    /// A sampler for this machine (clock ticks from `sysconf`, cores from the scheduler).
    pub fn new() -> Self {
        // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks_per_second = if ticks > 0 { ticks as f64 } else { 100.0 };
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        Self {
            ticks_per_second,
            cpus,
            last: None,
            last_cpu: 0.0,
            memory_total_bytes: memory_limit_bytes(),
        }
    }

    /// Reads `/proc` now. Samples closer than 50 ms to the previous one repeat its CPU value.
    pub fn sample(&mut self) -> ProcessUsage {
        let now = Instant::now();
        let ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat_cpu_ticks(&s));
        let memory_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_status_rss_bytes(&s))
            .unwrap_or(0);
        if let Some(ticks) = ticks {
            match self.last {
                Some((at, last_ticks)) => {
                    let elapsed = now.duration_since(at).as_secs_f64();
                    if elapsed >= 0.05 {
                        let cpu_seconds =
                            ticks.saturating_sub(last_ticks) as f64 / self.ticks_per_second;
                        self.last_cpu =
                            (cpu_seconds / (elapsed * self.cpus)).clamp(0.0, 1.0) as f32;
                        self.last = Some((now, ticks));
                    }
                }
                None => self.last = Some((now, ticks)),
            }
        }
        ProcessUsage {
            cpu: self.last_cpu,
            cpu_cores: (f64::from(self.last_cpu) * self.cpus) as f32,
            memory_bytes,
            memory_total_bytes: self.memory_total_bytes,
        }
    }
}

/// The machine's memory (`MemTotal`), or the cgroup v2 `memory.max` of this process when it
/// is set and lower; 0 when neither can be read.
fn memory_limit_bytes() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total_bytes(&s));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c),
        (m, c) => m.or(c).unwrap_or(0),
    }
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
pub fn parse_meminfo_total_bytes(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemTotal:")
}

/// A `<name> <value> kB` line's value in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut parts = line[name.len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// utime + stime (clock ticks) from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may contain spaces or parentheses itself,
/// so fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // After the comm come field 3 (state) .. ; utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` in bytes from the text of `/proc/<pid>/status`.
pub fn parse_status_rss_bytes(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 \
                    100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn parses_status_rss() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t4\n";
        assert_eq!(parse_status_rss_bytes(status), Some(2048 * 1024));
        assert_eq!(parse_status_rss_bytes("Name:\tx\n"), None);
        assert_eq!(parse_status_rss_bytes("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn parses_meminfo_and_knows_this_machines_memory() {
        let meminfo = "MemTotal:        8042140 kB\nMemFree:  100 kB\n";
        assert_eq!(parse_meminfo_total_bytes(meminfo), Some(8_042_140 * 1024));
        assert_eq!(parse_meminfo_total_bytes("MemFree: 1 kB\n"), None);
        let usage = ProcessSampler::new().sample();
        assert!(usage.memory_total_bytes > usage.memory_bytes, "{usage:?}");
    }

    #[test]
    fn samples_this_process() {
        let mut sampler = ProcessSampler::new();
        let first = sampler.sample();
        assert!(first.memory_bytes > 0, "{first:?}");
        // Burn some CPU so the second sample sees it.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 120 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let second = sampler.sample();
        assert!(second.cpu > 0.0 && second.cpu <= 1.0, "{second:?}");
    }
}
