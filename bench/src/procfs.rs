//! Readings from `/proc`: a process's resident memory and CPU time, and the
//! kernel's TCP socket memory.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on
/// every Linux build in practice).
const USER_HZ: f64 = 100.0;

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time of `pid` so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11, 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// CPU time of `pid` and its live children (PostgreSQL's backends are
/// children of its postmaster), in seconds.
pub fn tree_cpu_secs(pid: u32) -> Option<f64> {
    let own = cpu_secs(pid)?;
    let children: f64 = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&c| parent(c) == Some(pid))
        .filter_map(cpu_secs)
        .sum();
    Some(own + children)
}

/// [`tree_cpu_secs`], but only this process's own time for this process.
fn usage(pid: u32) -> Option<f64> {
    if pid == std::process::id() {
        cpu_secs(pid)
    } else {
        tree_cpu_secs(pid)
    }
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// CPU time used by each process of a stack over an interval.
#[derive(Debug)]
pub struct CpuMeter {
    start: Instant,
    procs: Vec<(String, u32, f64)>,
}

impl CpuMeter {
    /// Starts measuring `procs` (role, pid; a pid counts with its children,
    /// except this process: the stack it started is its children, and is
    /// measured by role).
    pub fn start(procs: &[(String, u32)]) -> CpuMeter {
        let procs = procs.iter().filter_map(|(r, p)| Some((r.clone(), *p, usage(*p)?))).collect();
        CpuMeter { start: Instant::now(), procs }
    }

    /// Wall-clock seconds so far and, per role, CPU seconds used since the
    /// start (processes of one role summed).
    pub fn read(&self) -> (f64, Vec<(String, f64)>) {
        let mut by_role: Vec<(String, f64)> = Vec::new();
        for (role, pid, before) in &self.procs {
            let used = usage(*pid).map_or(0.0, |now| (now - before).max(0.0));
            match by_role.iter_mut().find(|(r, _)| r == role) {
                Some((_, t)) => *t += used,
                None => by_role.push((role.clone(), used)),
            }
        }
        (self.start.elapsed().as_secs_f64(), by_role)
    }
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The kernel's TCP socket figures from `/proc/net/sockstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockStat {
    /// Sockets in use.
    pub inuse: u64,
    /// Socket buffer memory in pages (`mem`).
    pub mem_pages: u64,
}

/// Reads `/proc/net/sockstat`'s `TCP:` line.
pub fn sockstat() -> Option<SockStat> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    parse_sockstat(&text)
}

/// Reads `/proc/net/sockstat`'s `UDP:` line.
pub fn sockstat_udp() -> Option<SockStat> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    parse_line(&text, "UDP:")
}

fn parse_sockstat(text: &str) -> Option<SockStat> {
    parse_line(text, "TCP:")
}

fn parse_line(text: &str, prefix: &str) -> Option<SockStat> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)?.parse().ok());
    Some(SockStat { inuse: field("inuse")?, mem_pages: field("mem")? })
}

/// UDP datagrams the kernel dropped because a socket's receive buffer was
/// full (`RcvbufErrors` in `/proc/net/snmp`, machine-wide, since boot).
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    parse_snmp(&text, "Udp:", "RcvbufErrors")
}

fn parse_snmp(text: &str, prefix: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|w| w == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The page size the kernel counts socket memory in (4 KiB on x86-64).
pub const PAGE_BYTES: u64 = 4096;

/// CPU used by each of `pids` over `window`, as a fraction of one core.
pub async fn cpu_over(pids: &[u32], window: Duration) -> Vec<f64> {
    let before: Vec<Option<f64>> = pids.iter().map(|p| cpu_secs(*p)).collect();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let wall = t0.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| match (b, cpu_secs(*p)) {
            (Some(b), Some(a)) => (a - b) / wall,
            _ => f64::NAN,
        })
        .collect()
}

/// The pid of a process whose command line contains `needle` (e.g. a
/// nats-server's store directory), other than this one.
pub fn find_pid(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        (pid != me && cmd.contains(needle)).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_sockstat() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_secs(me).unwrap() >= 0.0);
        assert!(open_fds(me).unwrap() > 0);
        let s = parse_sockstat("sockets: used 5\nTCP: inuse 3 orphan 0 tw 1 alloc 4 mem 7\nUDP: inuse 0 mem 0\n");
        assert_eq!(s, Some(SockStat { inuse: 3, mem_pages: 7 }));
        assert!(sockstat().is_some());
        let snmp = "Udp: InDatagrams RcvbufErrors\nUdp: 10 3\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 0\n";
        assert_eq!(parse_snmp(snmp, "Udp:", "RcvbufErrors"), Some(3));
        assert_eq!(parse_line("UDP: inuse 2 mem 9\n", "UDP:"), Some(SockStat { inuse: 2, mem_pages: 9 }));
    }
}
