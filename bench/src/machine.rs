//! What the run was made on: CPU, memory, kernel, toolchain, commit, server versions and
//! load, read from /proc and from the tools themselves.

use std::process::Command;

use crate::results::Machine;
use crate::servers::Binaries;

/// Describes this machine now (the load after the run is filled in at the end).
pub fn describe(binaries: &Binaries) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown".to_string(), |(_, name)| name.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .map_or("unknown".to_string(), |line| line["MemTotal:".len()..].trim().to_string());
    let versions = vec![
        ("mini-pubsub".to_string(), output(binaries.mini_pubsub.as_os_str(), &["--version"])),
        ("nats-server".to_string(), output(binaries.nats_server.as_os_str(), &["--version"])),
        ("redis-server".to_string(), output(binaries.redis_server.as_os_str(), &["--version"])),
    ];
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        rustc: output("rustc".as_ref(), &["--version"]),
        commit: output("git".as_ref(), &["rev-parse", "--short", "HEAD"]),
        date: output("date".as_ref(), &["-u", "+%Y-%m-%d %H:%M UTC"]),
        versions,
        load_before: load_average(),
        load_after: String::new(),
        wall_seconds: 0.0,
    }
}

/// The first three fields of /proc/loadavg.
pub fn load_average() -> String {
    let text = read_trimmed("/proc/loadavg");
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or("unknown".to_string(), |s| s.trim().to_string())
}

/// The first line a command prints, or "unknown".
fn output(program: &std::ffi::OsStr, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {
            String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("unknown").trim().to_string()
        }
        _ => "unknown".to_string(),
    }
}
