//! What the kernel says about a running process (Linux `/proc`): threads, open file
//! descriptors, peak resident memory and CPU time, so tests can check resource bounds
//! from outside the way an operator (or systemd's `TasksMax=`, `MemoryMax=`,
//! `LimitNOFILE=`) sees them.
#![allow(dead_code)]

use std::time::Duration;

fn status_field(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {field} in {path}:\n{status}"))
}

/// Threads of the process (`Threads:` in `/proc/PID/status`).
pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads")
}

/// Peak resident set size in KiB (`VmHWM:`).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM")
}

/// Open file descriptors (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/fd");
    std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .count() as u64
}

/// User plus system CPU time used so far (`utime` + `stime` of `/proc/PID/stat`).
pub fn cpu_time(pid: u32) -> Duration {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // The command name, in parentheses, may contain spaces: count fields after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("malformed {path}: {stat}"));
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    let ticks = |index: usize| -> u64 {
        fields
            .get(index - 3)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no field {index} in {path}: {stat}"))
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second)
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or(100);
    Duration::from_millis((ticks(14) + ticks(15)) * 1000 / per_second)
}

/// The largest values seen over several [`Peak::sample`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct Peak {
    pub threads: u64,
    pub fds: u64,
    pub rss_kib: u64,
}

impl Peak {
    pub fn sample(&mut self, pid: u32) {
        self.threads = self.threads.max(threads(pid));
        self.fds = self.fds.max(open_fds(pid));
        self.rss_kib = self.rss_kib.max(peak_rss_kib(pid));
    }
}
