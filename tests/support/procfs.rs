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

/// The TCP ports the process listens on (its socket inodes, looked up in
/// `/proc/net/tcp` and `/proc/net/tcp6` in state LISTEN), sorted.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let fd_dir = format!("/proc/{pid}/fd");
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(&fd_dir)
        .unwrap_or_else(|e| panic!("read {fd_dir}: {e}"))
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 (HEX_IP:HEX_PORT), st field 3 (0A = LISTEN),
            // inode field 9.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1]
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .unwrap_or_else(|| panic!("bad local address in {table}: {line}"));
                ports.push(port);
            }
        }
    }
    ports.sort_unstable();
    ports
}
