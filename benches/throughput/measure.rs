//! Timing, percentiles, formatting, and what the machine says about itself.

use std::path::Path;
use std::time::{Duration, Instant};

use ractor::{ActorRef, Message, RpcReplyPort};

/// Messages sent, wall time, per-message latencies, and (for library runs) committer counters.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub msgs: usize,
    pub secs: f64,
    pub lat: Vec<Duration>,
    pub batches: u64,
    /// Message commits (riders excluded).
    pub commits: u64,
    pub riders: u64,
    /// CPU seconds of the whole process while the messages ran.
    pub cpu: f64,
    /// CPU seconds of the committer thread while the messages ran.
    pub cpu_committer: f64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    pub fn p50(&self) -> Duration {
        percentile(&self.lat, 0.50)
    }
    pub fn p99(&self) -> Duration {
        percentile(&self.lat, 0.99)
    }
    /// Message commits per transaction.
    pub fn batch(&self) -> f64 {
        self.commits as f64 / self.batches.max(1) as f64
    }
    /// CPU seconds per message, whole process.
    pub fn cpu_per_msg(&self) -> f64 {
        self.cpu / self.msgs as f64
    }
    /// CPU seconds per message, committer thread only.
    pub fn committer_per_msg(&self) -> f64 {
        self.cpu_committer / self.msgs as f64
    }
    /// Actor commits per transaction, riders (removals of done ops) included.
    pub fn batch_all(&self) -> f64 {
        (self.commits + self.riders) as f64 / self.batches.max(1) as f64
    }
}

/// Nearest-rank percentile; sorts a copy.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The median of `runs` for each figure taken separately.
pub fn median_of(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Drives every actor from its own tokio task in a closed loop of `per_actor` `call!`s.
/// Returns the wall time and every call's latency (send to reply).
pub async fn closed_loop<M: Message>(
    refs: &[ActorRef<M>],
    per_actor: usize,
    msg: fn(RpcReplyPort<u64>) -> M,
) -> (f64, Vec<Duration>) {
    let start = Instant::now();
    let tasks: Vec<_> = refs
        .iter()
        .cloned()
        .map(|actor| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_actor);
                for _ in 0..per_actor {
                    let t = Instant::now();
                    ractor::call!(actor, msg).expect("the actor replies");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(refs.len() * per_actor);
    for task in tasks {
        all.extend(task.await.expect("driver task"));
    }
    (start.elapsed().as_secs_f64(), all)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
pub fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The filesystem `dir` is on, from `/proc/self/mountinfo`: "ext4 on /dev/vda (mounted at /)".
pub fn filesystem(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < dash + 3 || f.len() < 5 {
            continue;
        }
        let mount = f[4].replace("\\040", " ");
        if dir.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() > *len) {
            let text = format!("{} on {} (mounted at {mount})", f[dash + 1], f[dash + 2]);
            best = Some((mount.len(), text));
        }
    }
    best.map_or_else(|| "unknown filesystem".into(), |(_, t)| t)
}

/// 1234567.8 -> "1,234,568".
pub fn count(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in the unit that suits it.
pub fn dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

pub fn us(d: f64) -> String {
    format!("{:.2} µs", d * 1e6)
}

#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// CPU time used so far by every thread of this process, in seconds.
pub fn cpu_time() -> f64 {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

/// Busy, total and stolen (by the hypervisor) CPU time of the whole machine so far, in
/// seconds (from `/proc/stat`).
pub fn machine_cpu() -> (f64, f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let field = |i: usize| v.get(i).copied().unwrap_or(0.0) / 100.0;
    let idle = field(3) + field(4);
    let total: f64 = (0..8).map(field).sum();
    (total - idle - field(7), total, field(7))
}

/// CPU time of the finished child processes of this process, in seconds.
pub fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    // Fields after the command name start at field 3; cutime and cstime are fields 16 and 17.
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(13).copied().unwrap_or(0.0) + f.get(14).copied().unwrap_or(0.0)) / 100.0
}

/// CPU time so far of this process's threads whose name starts with `prefix`, in seconds
/// (from `/proc/self/task/*/schedstat`; threads that have ended are not counted).
pub fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum::<f64>()
        * 1e-9
}
