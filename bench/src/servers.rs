//! The three servers as child processes: each on a free 127.0.0.1 port with a fresh
//! temporary directory, stopped by its own pid (SIGTERM, then SIGKILL after a bound) when
//! its [`ServerProcess`] is dropped, whatever ended the run. Also reads a process's CPU time
//! and memory from /proc.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::plan::{Class, System};

/// How long a server may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often startup and exit are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub mini_pubsub: PathBuf,
    /// An earlier build, for [`System::OursBaseline`].
    pub baseline: Option<PathBuf>,
    pub nats_server: PathBuf,
    pub redis_server: PathBuf,
}

/// A running server. Dropping it stops the process (and removes its directory).
pub struct ServerProcess {
    pub system: System,
    pub addr: SocketAddr,
    child: Child,
    /// Kept for its lifetime: the directory is removed on drop, after the process stops.
    dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `system` configured for `class`, and waits until it accepts connections.
    pub fn start(system: System, class: Class, binaries: &Binaries) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("bench-{}-", system.id())).tempdir()?;
        let log_path = dir.path().join("server.log");
        let log = File::create(&log_path)?;
        let (mut command, port) = match system {
            System::Ours => (ours_command(&binaries.mini_pubsub, class, dir.path()), None),
            System::OursBaseline => {
                let binary = binaries.baseline.as_ref().context("mini-pubsub-baseline needs --baseline-bin")?;
                (ours_command(binary, class, dir.path()), None)
            }
            System::OursRecorded => {
                let mut command = ours_command(&binaries.mini_pubsub, class, dir.path());
                command.arg("--record").arg(dir.path().join("recording"));
                (command, None)
            }
            System::Nats => {
                let port = free_port()?;
                (nats_command(&binaries.nats_server, port, dir.path()), Some(port))
            }
            System::Redis => {
                let port = free_port()?;
                (redis_command(&binaries.redis_server, class, port, dir.path()), Some(port))
            }
        };
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
        // From here the guard owns the child: an early return stops it.
        let mut server = ServerProcess { system, addr: SocketAddr::from(([127, 0, 0, 1], 0)), child, dir };
        server.addr = match port {
            None => server.wait_for_startup_line(&log_path)?,
            Some(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                server.wait_until_accepting(addr)?;
                addr
            }
        };
        Ok(server)
    }

    /// The process id, for /proc readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far (its last lines), for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// mini-pubsub prints `listening on ADDR` once it is bound to the port it picked.
    fn wait_for_startup_line(&mut self, log_path: &Path) -> anyhow::Result<SocketAddr> {
        let started = Instant::now();
        while started.elapsed() < STARTUP_TIMEOUT {
            let text = std::fs::read_to_string(log_path).unwrap_or_default();
            if let Some(addr) = listening_addr(&text) {
                return Ok(addr);
            }
            self.check_running()?;
            std::thread::sleep(POLL_INTERVAL);
        }
        bail!("{} printed no `listening on` line within {STARTUP_TIMEOUT:?}: {}", self.system, self.log_tail())
    }

    fn wait_until_accepting(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < STARTUP_TIMEOUT {
            if TcpStream::connect_timeout(&addr, POLL_INTERVAL).is_ok() {
                return Ok(());
            }
            self.check_running()?;
            std::thread::sleep(POLL_INTERVAL);
        }
        bail!("{} did not accept connections on {addr} within {STARTUP_TIMEOUT:?}: {}", self.system, self.log_tail())
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited at startup ({status}): {}", self.system, self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with our own child's pid, which we have not reaped yet, so it
            // cannot name another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        eprintln!("  {} (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it", self.system, self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ours_command(binary: &Path, class: Class, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command.args(["serve", "--listen", "127.0.0.1:0", "--log-filter", "warn,mini_pubsub=info"]);
    // The client library gives every message an idempotency key. On one partition a batch
    // of them is one dedupe entry, but round-robin over 4 partitions (the group case) keeps
    // every key apart, and 100 000 entries (the default bound) last that case under a second.
    command.args(["--dedupe-keys-max", "10000000"]);
    match class {
        Class::Memory => command.args(["--storage", "memory"]),
        Class::NoFsync | Class::Fsync => {
            let fsync = if class == Class::Fsync { "always" } else { "never" };
            command.args(["--storage", "file", "--fsync", fsync]).arg("--data-dir").arg(dir.join("data"))
        }
    };
    command
}

fn nats_command(binary: &Path, port: u16, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(dir);
    command
}

fn redis_command(binary: &Path, class: Class, port: u16, dir: &Path) -> Command {
    let mut command = Command::new(binary);
    command.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"]).arg(dir);
    command.args(["--save", "", "--protected-mode", "no", "--daemonize", "no"]);
    match class {
        Class::Memory => command.args(["--appendonly", "no"]),
        Class::NoFsync => command.args(["--appendonly", "yes", "--appendfsync", "everysec"]),
        Class::Fsync => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
    };
    command
}

/// A port that was free a moment ago (the OS picks it; the server binds it next).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The address in mini-pubsub's startup line, `... listening on 127.0.0.1:PORT (storage: ...)`.
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    let rest = log.split("listening on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A process's CPU time and memory at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, in KiB.
    pub rss_kib: u64,
    /// Highest resident memory so far, in KiB.
    pub hwm_kib: u64,
}

impl Usage {
    /// Reads /proc/PID/stat and /proc/PID/status.
    pub fn read(pid: u32) -> anyhow::Result<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        let cpu_ticks = cpu_ticks(&stat).context("cannot parse /proc/PID/stat")?;
        Ok(Usage {
            cpu_seconds: cpu_ticks as f64 / ticks,
            rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
            hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
        })
    }
}

/// utime + stime, fields 14 and 15 of /proc/PID/stat (counted after the command name in
/// parentheses, which may itself hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_after_a_name_with_spaces() {
        let stat = "123 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
    }

    #[test]
    fn the_startup_line_gives_the_address() {
        let log = "2026-01-01 INFO mini-pubsub listening on 127.0.0.1:40123 (storage: memory)\n";
        assert_eq!(listening_addr(log), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(listening_addr("starting"), None);
    }
}
