//! CPU time and memory of a process, from Linux's /proc.

/// Clock ticks per second for /proc/PID/stat (USER_HZ; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process's command name and CPU ticks so far from /proc/PID/stat:
/// its own (user + system), and those of its children that have ended.
fn stat(pid: &str) -> Option<(String, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let (head, rest) = stat.rsplit_once(')')?;
    let command = head.split_once('(')?.1.to_owned();
    // utime, stime, cutime, cstime.
    let ticks: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, system, children_user, children_system] = ticks[..] else {
        return None;
    };
    Some((command, user + system, children_user + children_system))
}

/// User + system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat(&pid.to_string()).map(|(_, own, _)| own / TICKS_PER_SECOND)
}

/// User + system CPU seconds used so far by every process named `name`
/// (its command name, as `ps -e` shows it) other than this one, with that
/// of their children that have ended (so a PostgreSQL backend that exits
/// still counts, through the postmaster); and how many such processes run.
pub fn cpu_seconds_of_named(name: &str) -> (f64, usize) {
    let own = own_pid().to_string();
    let (mut ticks, mut count) = (0.0, 0);
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for pid in pids.filter_map(|e| e.file_name().into_string().ok()) {
        if pid == own || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some((command, used, children)) = stat(&pid)
            && command == name
        {
            ticks += used + children;
            count += 1;
        }
    }
    (ticks / TICKS_PER_SECOND, count)
}

/// A `kB` field of /proc/PID/status (VmRSS now, VmHWM the peak), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes the process has caused to be written to storage so far
/// (`write_bytes` of /proc/PID/io: the WAL, the database and checkpoints,
/// whichever thread wrote them).
pub fn disk_write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("write_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's id.
pub fn own_pid() -> u32 {
    std::process::id()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_found_by_command_name_and_the_bench_itself_is_left_out() {
        let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let (_, sleepers) = cpu_seconds_of_named("sleep");
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(sleepers >= 1);
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(cpu_seconds_of_named(own.trim()).1, 0);
        assert_eq!(cpu_seconds_of_named("no such process").1, 0);
        assert!(cpu_seconds(own_pid()).is_some_and(|s| s >= 0.0));
    }
}
