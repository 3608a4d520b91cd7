//! Faults: applying them to turmoil's network, the hosts and the disks, healing them all
//! before the drain, and telling whether each one met any traffic while it was in place.

use std::time::Duration;

use mini_pubsub::env::DiskFault as Disk;
use rand::RngExt;

use super::driver::Driver;
use super::FaultSpan;
use crate::disk::CorruptAsk;
use crate::history::Event;
use crate::scenario::{self, DiskFault, Fault};

/// What a fault acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Along {
    /// Traffic between two hosts, both ways.
    Link(String, String),
    /// Traffic from one host to another.
    OneWay(String, String),
    /// Traffic to and from a host.
    Host(String),
    /// All traffic.
    All,
    /// A broker's disk: the operations it refuses.
    Disk(String),
}

impl Along {
    fn carries(&self, from: &str, to: &str) -> bool {
        match self {
            Along::Link(a, b) => (from == a && to == b) || (from == b && to == a),
            Along::OneWay(a, b) => from == a && to == b,
            Along::Host(h) => from == h || to == h,
            Along::All => true,
            Along::Disk(_) => false,
        }
    }
}

/// A fault in place.
#[derive(Debug)]
pub(super) struct OpenFault {
    /// Which fault it is: a later step with the same key ends it.
    key: String,
    /// The step that began it, as written.
    text: String,
    along: Along,
    /// What it acted on when it began: messages in flight that it drops or holds.
    in_flight: u64,
    /// The count of what it acts on when it began (bytes written along it, or refusals).
    before: u64,
}

impl<'a> Driver<'a> {
    /// Opens the window of a fault, or closes one: a fault that met no traffic (in either
    /// direction it cuts: messages in flight when it began, or written while it was in
    /// place), or a disk fault that refused nothing, did nothing, and fails the run.
    pub(super) fn track_fault(&mut self, fault: &Fault) -> Result<(), String> {
        let pair = |kind: &str, a: &str, b: &str| {
            let (x, y) = if a <= b { (a, b) } else { (b, a) };
            format!("{kind} {x} {y}")
        };
        let link = |a: &String, b: &String| Along::Link(a.clone(), b.clone());
        let (key, opens, along) = match fault {
            Fault::Partition { a, b, oneway: true } => {
                (format!("oneway {a} {b}"), true, Along::OneWay(a.clone(), b.clone()))
            }
            Fault::Heal { a, b, oneway: true } => {
                (format!("oneway {a} {b}"), false, Along::OneWay(a.clone(), b.clone()))
            }
            Fault::Partition { a, b, .. } => (pair("link", a, b), true, link(a, b)),
            Fault::Heal { a, b, .. } => (pair("link", a, b), false, link(a, b)),
            Fault::Hold { a, b } => (pair("hold", a, b), true, link(a, b)),
            Fault::Release { a, b } => (pair("hold", a, b), false, link(a, b)),
            Fault::Latency { a, b, delay } => (pair("latency", a, b), !delay.is_zero(), link(a, b)),
            Fault::FailRate { rate } => ("fail_rate".to_string(), *rate > 0.0, Along::All),
            Fault::Isolate { host } => (format!("isolate {host}"), true, Along::Host(host.clone())),
            Fault::Disk { host, fault } if !matches!(fault, DiskFault::Corrupt(_)) => {
                (format!("disk {host}"), *fault != DiskFault::Ok, Along::Disk(host.clone()))
            }
            _ => return Ok(()),
        };
        let closed = self.close_fault(&key);
        if opens {
            let hosts = match &along {
                Along::Link(a, b) | Along::OneWay(a, b) => vec![a.clone(), b.clone()],
                Along::Host(h) | Along::Disk(h) => vec![h.clone()],
                Along::All => Vec::new(),
            };
            let from_ms = self.now_ms();
            self.spans.push(FaultSpan { text: fault.to_string(), hosts, from_ms, to_ms: u64::MAX });
            let in_flight = self.in_flight(&along);
            let before = self.activity(&along);
            self.open_faults.push(OpenFault { key, text: fault.to_string(), along, in_flight, before });
        }
        closed
    }

    pub(super) fn close_fault(&mut self, key: &str) -> Result<(), String> {
        let Some(index) = self.open_faults.iter().position(|f| f.key == key) else { return Ok(()) };
        let fault = self.open_faults.remove(index);
        let now = self.now_ms();
        if let Some(span) = self.spans.iter_mut().rev().find(|s| s.text == fault.text && s.to_ms == u64::MAX) {
            span.to_ms = now;
        }
        if fault.in_flight == 0 && self.activity(&fault.along) == fault.before {
            let what = match fault.along {
                Along::Disk(_) => "the disk refused nothing and delayed no fsync while it was in place",
                _ => "no traffic met it (nothing in flight when it began, nothing sent across it while in place)",
            };
            return Err(format!("fault `{}` did nothing: {what}", fault.text));
        }
        Ok(())
    }

    /// What a fault acts on, counted: for a disk fault the operations the disk refused,
    /// for a network fault the bytes written along it.
    fn activity(&self, along: &Along) -> u64 {
        match along {
            Along::Disk(host) => self.disks.get(host).map_or(0, |disk| disk.refused() + disk.delayed()),
            _ => self.traffic.along(|from, to| along.carries(from, to)),
        }
    }

    /// Messages in flight along a network fault's path (it drops or holds them).
    fn in_flight(&self, along: &Along) -> u64 {
        if matches!(along, Along::Disk(_)) {
            return 0;
        }
        let mut pairs = Vec::new();
        self.sim.links(|links| {
            for link in links {
                pairs.extend(link.map(|sent| sent.pair()).map(|(src, dst)| (src.ip(), dst.ip())));
            }
        });
        let name = |ip| self.sim.reverse_lookup(ip).unwrap_or_default();
        pairs.iter().filter(|(src, dst)| along.carries(&name(*src), &name(*dst))).count() as u64
    }

    /// The faults a step means: itself, or, when it names targets (`@leader`, `@follower`,
    /// `@followers`, `@brokers`), one for each host (pair) they resolve to. A step that
    /// begins a fault resolves them now; one that ends a fault (heal, release, restart,
    /// `disk ok`, a zero latency) to the hosts they resolved to last, so it ends what the
    /// step that began it did.
    pub(super) fn resolve(&mut self, fault: &Fault) -> Result<Vec<Fault>, String> {
        let ends = match fault {
            Fault::Heal { .. } | Fault::Release { .. } | Fault::Restart { .. } => true,
            Fault::Latency { delay, .. } => delay.is_zero(),
            Fault::Disk { fault, .. } => *fault == DiskFault::Ok,
            _ => false,
        };
        let mut hosts = |name: &String| -> Result<Vec<String>, String> {
            if !name.starts_with('@') {
                return Ok(vec![name.clone()]);
            }
            if ends {
                return self.resolved.get(name).cloned().ok_or_else(|| {
                    format!("{fault}: {name} names the hosts a step before it resolved it to, and none did")
                });
            }
            let leader = self.leader().map(|(leader, _)| leader);
            let hosts: Vec<String> = match (name.as_str(), leader) {
                ("@brokers", _) => self.brokers.clone(),
                ("@leader", Some(leader)) => vec![leader],
                ("@followers", Some(leader)) => self.brokers.iter().filter(|b| **b != leader).cloned().collect(),
                ("@follower", Some(leader)) => self.brokers.iter().filter(|b| **b != leader).take(1).cloned().collect(),
                _ => return Err(format!("{fault}: no broker serves as the leader now, so {name} names nobody")),
            };
            self.note(format!("{name} is {}", hosts.join(", ")));
            self.resolved.insert(name.clone(), hosts.clone());
            Ok(hosts)
        };
        let pairs = |a: &String, b: &String, hosts: &mut dyn FnMut(&String) -> Result<Vec<String>, String>| {
            let (a, b) = (hosts(a)?, hosts(b)?);
            Ok::<_, String>(a.iter().flat_map(|a| b.iter().map(move |b| (a.clone(), b.clone()))).collect::<Vec<_>>())
        };
        Ok(match fault.clone() {
            Fault::Partition { a, b, oneway } => {
                pairs(&a, &b, &mut hosts)?.into_iter().map(|(a, b)| Fault::Partition { a, b, oneway }).collect()
            }
            Fault::Heal { a, b, oneway } => {
                pairs(&a, &b, &mut hosts)?.into_iter().map(|(a, b)| Fault::Heal { a, b, oneway }).collect()
            }
            Fault::Hold { a, b } => pairs(&a, &b, &mut hosts)?.into_iter().map(|(a, b)| Fault::Hold { a, b }).collect(),
            Fault::Release { a, b } => {
                pairs(&a, &b, &mut hosts)?.into_iter().map(|(a, b)| Fault::Release { a, b }).collect()
            }
            Fault::Latency { a, b, delay } => {
                pairs(&a, &b, &mut hosts)?.into_iter().map(|(a, b)| Fault::Latency { a, b, delay }).collect()
            }
            Fault::Isolate { host } => hosts(&host)?.into_iter().map(|host| Fault::Isolate { host }).collect(),
            Fault::Crash { host } => hosts(&host)?.into_iter().map(|host| Fault::Crash { host }).collect(),
            Fault::Restart { host } => hosts(&host)?.into_iter().map(|host| Fault::Restart { host }).collect(),
            Fault::Disk { host, fault } => hosts(&host)?.into_iter().map(|host| Fault::Disk { host, fault }).collect(),
            other @ Fault::FailRate { .. } => vec![other],
        })
    }

    /// Applies a fault step.
    pub(super) fn apply_fault(&mut self, fault: &Fault) -> Result<Option<String>, String> {
        match fault {
            Fault::Partition { a, b, oneway: true } => {
                self.link(format!("partition {a} -> {b}"), |s| s.partition_oneway(a.as_str(), b.as_str()), a, b)
            }
            Fault::Partition { a, b, .. } => {
                self.link(format!("partition {a} <-> {b}"), |s| s.partition(a.as_str(), b.as_str()), a, b)
            }
            Fault::Heal { a, b, oneway: true } => {
                self.link(format!("heal {a} -> {b}"), |s| s.repair_oneway(a.as_str(), b.as_str()), a, b)
            }
            Fault::Heal { a, b, .. } => {
                self.link(format!("heal {a} <-> {b}"), |s| s.repair(a.as_str(), b.as_str()), a, b)
            }
            Fault::Hold { a, b } => self.link(format!("hold {a} <-> {b}"), |s| s.hold(a.as_str(), b.as_str()), a, b),
            Fault::Release { a, b } => {
                self.link(format!("release {a} <-> {b}"), |s| s.release(a.as_str(), b.as_str()), a, b)
            }
            Fault::Latency { a, b, delay } => {
                let text = format!("latency {a} <-> {b} {}", scenario::ms(*delay));
                self.link(text, |s| s.set_link_latency(a.as_str(), b.as_str(), *delay), a, b);
            }
            Fault::FailRate { rate } => {
                self.sim.set_fail_rate(*rate);
                self.faults.push(format!("fail_rate {rate}"));
                self.note(format!("fail_rate {rate}"));
            }
            Fault::Isolate { host } => {
                let others: Vec<String> = self.all_hosts().into_iter().filter(|h| h != host).collect();
                for other in &others {
                    self.sim.partition(host.as_str(), other.as_str());
                    self.touched.push((host.clone(), other.clone()));
                }
                self.faults.push(format!("isolate {host}"));
                self.note(format!("isolate {host}"));
            }
            Fault::Crash { host } => return self.crash(host),
            Fault::Restart { host } => return self.restart(host),
            Fault::Disk { host, fault } => return self.disk(host, *fault),
        }
        Ok(None)
    }

    /// Applies a fault to the link between `a` and `b`, and remembers to heal it.
    fn link(&mut self, text: String, apply: impl FnOnce(&mut turmoil::Sim<'a>), a: &str, b: &str) {
        apply(&mut self.sim);
        self.touched.push((a.to_string(), b.to_string()));
        self.faults.push(text.clone());
        self.note(text);
    }

    fn crash(&mut self, host: &str) -> Result<Option<String>, String> {
        if !self.sim.is_host_running(host) {
            return Err(format!("crash {host}: the host was not running, so the fault did nothing"));
        }
        let flag = self.crash_flags.get(host);
        flag.inspect(|f| f.store(true, std::sync::atomic::Ordering::Relaxed));
        self.sim.crash(host);
        flag.inspect(|f| f.store(false, std::sync::atomic::Ordering::Relaxed));
        self.crashed.push(host.to_string());
        self.faults.push(format!("crash {host}"));
        let from_ms = self.now_ms();
        self.spans.push(FaultSpan {
            text: format!("crash {host}"),
            hosts: vec![host.to_string()],
            from_ms,
            to_ms: u64::MAX,
        });
        self.history.record_at(self.now_ms(), "driver", Event::Crashed { host: host.to_string() });
        Ok(None)
    }

    /// Sets a broker's disk fault, or corrupts a byte of its newest segment.
    fn disk(&mut self, host: &str, fault: DiskFault) -> Result<Option<String>, String> {
        let Some(disk) = self.disks.get(host) else {
            return Err(format!("disk {host}: not a broker, so it has no disk"));
        };
        let name = match fault {
            DiskFault::Eio => {
                disk.set_fault(Some(Disk::Eio));
                "eio"
            }
            DiskFault::Full => {
                disk.set_fault(Some(Disk::Full));
                "full"
            }
            DiskFault::Torn => {
                disk.set_fault(Some(Disk::TornWrite));
                "torn"
            }
            DiskFault::Slow(latency) => {
                disk.set_sync_latency(latency);
                "slow"
            }
            DiskFault::Ok => {
                disk.set_fault(None);
                disk.set_sync_latency(std::time::Duration::ZERO);
                "ok"
            }
            DiskFault::Corrupt(target) => {
                let ask = match target {
                    Some(target) => CorruptAsk::Record(target),
                    None => CorruptAsk::Anywhere(self.rng.random_range(0.0..1.0)),
                };
                let sent = self.corrupters[host].try_send(ask);
                if sent.is_err() || !self.sim.is_host_running(host) {
                    return Err(format!("disk {host} corrupt: the host is not running, so the fault did nothing"));
                }
                "corrupt"
            }
        };
        self.faults.push(format!("disk {host} {name}"));
        self.note(format!("disk {host} {name}"));
        Ok(None)
    }

    fn restart(&mut self, host: &str) -> Result<Option<String>, String> {
        if self.sim.is_host_running(host) {
            return Err(format!("restart {host}: the host was running, so the step did nothing"));
        }
        self.sim.bounce(host);
        self.crashed.retain(|h| h != host);
        self.end_crash_span(host);
        self.faults.push(format!("restart {host}"));
        self.history.record_at(self.now_ms(), "driver", Event::Restarted { host: host.to_string() });
        Ok(None)
    }

    /// A crashed host is running again.
    fn end_crash_span(&mut self, host: &str) {
        let (text, now) = (format!("crash {host}"), self.now_ms());
        if let Some(span) = self.spans.iter_mut().rev().find(|s| s.text == text && s.to_ms == u64::MAX) {
            span.to_ms = now;
        }
    }

    fn all_hosts(&self) -> Vec<String> {
        self.brokers.iter().chain(self.apps.keys()).cloned().collect()
    }

    /// Heals everything; returns the faults that were still in place and did nothing.
    pub(super) fn heal_all(&mut self) -> Vec<String> {
        let keys: Vec<String> = self.open_faults.iter().map(|f| f.key.clone()).collect();
        let idle: Vec<String> = keys.iter().filter_map(|k| self.close_fault(k).err()).collect();
        for (a, b) in std::mem::take(&mut self.touched) {
            self.sim.repair(a.as_str(), b.as_str());
            self.sim.release(a.as_str(), b.as_str());
            self.sim.set_link_latency(a.as_str(), b.as_str(), Duration::ZERO);
        }
        self.sim.set_fail_rate(0.0);
        for disk in self.disks.values() {
            disk.set_fault(None);
            disk.set_sync_latency(Duration::ZERO);
        }
        for host in std::mem::take(&mut self.crashed) {
            self.sim.bounce(host.as_str());
            self.end_crash_span(&host);
            self.history.record_at(self.now_ms(), "driver", Event::Restarted { host });
        }
        let now = self.now_ms();
        if let Some(window) = self.fault_windows.last_mut().filter(|w| w.1 == u64::MAX) {
            window.1 = now;
        }
        self.note("heal everything and drain".to_string());
        idle
    }
}
