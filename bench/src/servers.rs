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

/// A running server, or the nodes of a cluster. Dropping it stops the processes (and
/// removes their directory).
pub struct ServerProcess {
    pub system: System,
    /// Where clients reach it: one address, or every node's of a cluster.
    pub addrs: Vec<SocketAddr>,
    children: Vec<Child>,
    /// Each process's log.
    logs: Vec<PathBuf>,
    /// Each process's program and arguments, to start it again on its data.
    commands: Vec<(std::ffi::OsString, Vec<std::ffi::OsString>)>,
    /// Kept for its lifetime: the directory is removed on drop, after the processes stop.
    dir: tempfile::TempDir,
}

/// The process ids of a server (three at most: a cluster's nodes), for /proc readings.
#[derive(Debug, Clone, Copy)]
pub struct Pids {
    ids: [u32; 3],
    len: usize,
}

impl Pids {
    /// The processes' CPU time and memory, summed.
    pub fn usage(self) -> anyhow::Result<Usage> {
        let mut total = Usage::default();
        for &pid in &self.ids[..self.len] {
            let one = Usage::read(pid)?;
            total.cpu_seconds += one.cpu_seconds;
            total.rss_kib += one.rss_kib;
            total.hwm_kib += one.hwm_kib;
        }
        Ok(total)
    }
}

/// Where [`System::OursTls`]'s developer certificates are, in its directory.
const CERTS_DIR: &str = "certs";

/// Nodes of a cluster system.
const CLUSTER_NODES: usize = 3;

impl ServerProcess {
    /// The CA a client trusts to reach this server over TLS, if it serves TLS.
    pub fn ca(&self) -> Option<PathBuf> {
        (self.system == System::OursTls).then(|| self.dir.path().join(CERTS_DIR).join(mini_pubsub::certs::CA_CERT))
    }

    /// Starts `system` configured for `class`, and waits until it accepts connections.
    pub fn start(system: System, class: Class, binaries: &Binaries) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("bench-{}-", system.id())).tempdir()?;
        let mut server = ServerProcess {
            system,
            addrs: Vec::new(),
            children: Vec::new(),
            logs: Vec::new(),
            commands: Vec::new(),
            dir,
        };
        match system {
            System::OursCluster => server.start_ours_cluster(class, &binaries.mini_pubsub)?,
            System::NatsCluster => server.start_nats_cluster(&binaries.nats_server)?,
            _ => server.start_one(class, binaries)?,
        }
        Ok(server)
    }

    fn start_one(&mut self, class: Class, binaries: &Binaries) -> anyhow::Result<()> {
        let dir = self.dir.path().to_path_buf();
        let (command, port) = match self.system {
            System::Ours => (ours_command(&binaries.mini_pubsub, class, &dir, "127.0.0.1:0"), None),
            System::OursBaseline => {
                let binary = binaries.baseline.as_ref().context("mini-pubsub-baseline needs --baseline-bin")?;
                (ours_command(binary, class, &dir, "127.0.0.1:0"), None)
            }
            System::OursRecorded => {
                let mut command = ours_command(&binaries.mini_pubsub, class, &dir, "127.0.0.1:0");
                command.arg("--record").arg(dir.join("recording"));
                (command, None)
            }
            System::OursTls => {
                let certs = dir.join(CERTS_DIR);
                mini_pubsub::certs::write_dev(&certs).map_err(anyhow::Error::msg)?;
                let mut command = ours_command(&binaries.mini_pubsub, class, &dir, "127.0.0.1:0");
                command.arg("--tls-cert").arg(certs.join(mini_pubsub::certs::SERVER_CERT));
                command.arg("--tls-key").arg(certs.join(mini_pubsub::certs::SERVER_KEY));
                (command, None)
            }
            System::Nats => {
                let port = free_port()?;
                (nats_command(&binaries.nats_server, port, &dir), Some(port))
            }
            System::Redis => {
                let port = free_port()?;
                (redis_command(&binaries.redis_server, class, port, &dir), Some(port))
            }
            System::OursCluster | System::NatsCluster => unreachable!("started by their own functions"),
        };
        let log_path = dir.join("server.log");
        self.spawn(command, &log_path)?;
        let addr = match port {
            None => self.wait_for_startup_line(&log_path)?,
            Some(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                self.wait_until_accepting(addr)?;
                addr
            }
        };
        self.addrs.push(addr);
        Ok(())
    }

    /// Three `serve` processes as one cluster, each with its own data directory.
    fn start_ours_cluster(&mut self, class: Class, binary: &Path) -> anyhow::Result<()> {
        let ids = 1..=CLUSTER_NODES;
        let grpc: Vec<u16> = ids.clone().map(|_| free_port()).collect::<Result<_, _>>()?;
        let raft: Vec<u16> = ids.clone().map(|_| free_port()).collect::<Result<_, _>>()?;
        let list = |ports: &[u16]| {
            ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",")
        };
        let (peers, brokers) = (list(&raft), list(&grpc));
        for id in ids {
            let dir = self.dir.path().join(format!("node-{id}"));
            let mut command = ours_command(binary, class, &dir, &format!("127.0.0.1:{}", grpc[id - 1]));
            command.args(["--node-id", &id.to_string()]);
            command.args(["--peers", &peers, "--brokers", &brokers]);
            let log_path = self.dir.path().join(format!("node-{id}.log"));
            self.spawn(command, &log_path)?;
            let addr = self.wait_for_startup_line(&log_path)?;
            self.addrs.push(addr);
        }
        Ok(())
    }

    /// Three nats-server processes with JetStream, clustered by routes to each other.
    fn start_nats_cluster(&mut self, binary: &Path) -> anyhow::Result<()> {
        let ids = 1..=CLUSTER_NODES;
        let client: Vec<u16> = ids.clone().map(|_| free_port()).collect::<Result<_, _>>()?;
        let route: Vec<u16> = ids.clone().map(|_| free_port()).collect::<Result<_, _>>()?;
        for id in ids {
            let mut command = nats_command(binary, client[id - 1], &self.dir.path().join(format!("n{id}")));
            let routes: Vec<String> = route.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
            command.args(["--server_name", &format!("n{id}"), "--cluster_name", "bench"]);
            command.args(["--cluster", &format!("nats://127.0.0.1:{}", route[id - 1]), "--routes", &routes.join(",")]);
            self.spawn(command, &self.dir.path().join(format!("n{id}.log")))?;
        }
        for port in client {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            self.wait_until_accepting(addr)?;
            self.addrs.push(addr);
        }
        Ok(())
    }

    fn spawn(&mut self, mut command: Command, log_path: &Path) -> anyhow::Result<()> {
        let program = command.get_program().to_os_string();
        self.commands.push((program, command.get_args().map(std::ffi::OsStr::to_os_string).collect()));
        let log = File::create(log_path)?;
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
        // From here the guard owns the child: an early return stops it.
        self.children.push(child);
        self.logs.push(log_path.to_path_buf());
        Ok(())
    }

    /// SIGKILLs process `index` (a cluster's node) and reaps it.
    pub fn kill_node(&mut self, index: usize) {
        let child = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts process `index` again, with its command, on its data (its log goes on).
    pub fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        let (program, args) = &self.commands[index];
        let log = std::fs::OpenOptions::new().append(true).open(&self.logs[index])?;
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        self.children[index] = command.spawn().with_context(|| format!("cannot start {command:?} again"))?;
        Ok(())
    }

    /// The process ids, for /proc readings.
    pub fn pids(&self) -> Pids {
        let mut ids = [0; 3];
        for (slot, child) in ids.iter_mut().zip(&self.children) {
            *slot = child.id();
        }
        Pids { ids, len: self.children.len().min(3) }
    }

    /// The server's logs so far (their last lines), for an error message.
    pub fn log_tail(&self) -> String {
        let mut tail = Vec::new();
        for path in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tail.extend(lines[lines.len().saturating_sub(5)..].iter().map(|l| (*l).to_string()));
        }
        tail.join("\n")
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
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited at startup ({status}): {}", self.system, self.log_tail());
            }
        }
        Ok(())
    }

    /// SIGTERM to every process, then SIGKILL to those that have not exited within
    /// [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(Some(_))) {
                continue;
            }
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) with our own child's pid, which we have not reaped yet, so
                // it cannot name another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let started = Instant::now();
        for child in &mut self.children {
            while started.elapsed() < STOP_TIMEOUT {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("  {} (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it", self.system, child.id());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ours_command(binary: &Path, class: Class, dir: &Path, listen: &str) -> Command {
    let mut command = Command::new(binary);
    command.args(["serve", "--listen", listen, "--log-filter", "warn,mini_pubsub=info"]);
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
