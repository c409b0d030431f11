//! Durable throughput, latency, memory and recovery of ractor-persist, each figure printed
//! beside its baseline measured in the same run on the same disk.
//!
//! Run with `cargo bench --bench throughput`; `BENCH_QUICK=1 cargo bench --bench throughput`
//! (or `-- quick`) runs a shorter version. Naming sections after `--` runs only those:
//! `durable`, `unchanged`, `cycle`, `postgres`, `resident`, `recovery`, `transforms`, `delivery`,
//! `entities`, `models`; `BENCH_ACTORS=1,1024` limits `durable` to those actor counts (for profiling).
//! See docs/performance.md.

#[path = "throughput/actors.rs"]
mod actors;
#[path = "throughput/cycle.rs"]
mod cycle;
#[path = "throughput/delivery.rs"]
mod delivery;
#[path = "throughput/durable.rs"]
mod durable;
#[path = "throughput/entities.rs"]
mod entities;
#[path = "throughput/measure.rs"]
mod measure;
#[path = "throughput/models.rs"]
mod models;
#[path = "throughput/postgres.rs"]
mod postgres;
#[path = "throughput/raw.rs"]
mod raw;
#[path = "throughput/recovery.rs"]
mod recovery;
#[path = "throughput/resident.rs"]
mod resident;
#[path = "throughput/transforms.rs"]
mod transforms;

use std::time::Duration;

use actors::Msg;
use measure::{Run, count, dur, median_of, percentile, us};

/// How much to run: the full plan, or the quick one.
struct Plan {
    reps: usize,
    /// (actors, messages per actor for the library, messages per actor for the baseline)
    configs: [(usize, usize, usize); 4],
    changed_one: usize,
    unchanged_one: usize,
    cycle: [(usize, usize, usize); 2],
    idle_actors: usize,
    recovery_actors: usize,
    respawn: usize,
    /// (actors, messages per actor for the library, for the baseline) on PostgreSQL.
    postgres: [(usize, usize, usize); 3],
    entities: entities::Sizes,
}

impl Plan {
    /// Messages per transform measurement: fewer on disk (each one is an fsync).
    fn transforms_msgs(&self, disk: bool, pad: usize) -> usize {
        let base = if disk { 600 } else { 20_000 };
        let base = if pad > 1024 { base / 4 } else { base };
        if self.reps == 1 { base / 4 } else { base }
    }

    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                reps: 1,
                configs: [(1, 600, 300), (16, 100, 30), (256, 20, 2), (1024, 10, 1)],
                changed_one: 300,
                unchanged_one: 20_000,
                cycle: [(1024, 20_000, 5_000), (65536, 1_000, 300)],
                idle_actors: 10_000,
                recovery_actors: 20_000,
                respawn: 200,
                postgres: [(1, 100, 100), (256, 5, 2), (1024, 3, 1)],
                entities: entities::Sizes::new(true),
            }
        } else {
            Plan {
                reps: 5,
                configs: [
                    (1, 3_000, 1_500),
                    (16, 500, 150),
                    (256, 100, 10),
                    (1024, 40, 3),
                ],
                changed_one: 2_000,
                unchanged_one: 200_000,
                cycle: [(1024, 100_000, 20_000), (65536, 5_000, 1_000)],
                idle_actors: 10_000,
                recovery_actors: 100_000,
                respawn: 1_000,
                postgres: [(1, 500, 500), (256, 40, 10), (1024, 20, 4)],
                entities: entities::Sizes::new(false),
            }
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime");
    if let Ok(spec) = std::env::var(resident::CHILD) {
        resident::child(&spec, &rt);
        return;
    }
    if let Ok(spec) = std::env::var(entities::CHILD) {
        entities::child(&spec, &rt);
        return;
    }
    // `cargo bench` passes `--bench`; words name the quick plan or sections.
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let quick = words.iter().any(|w| w == "quick")
        || std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|w| *w != "quick")
        .collect();
    // `profile` runs alone, only when named.
    let run = |section: &str| only.is_empty() || only.contains(&section);
    let plan = Plan::new(quick);

    let dir = tempfile::Builder::new()
        .prefix("throughput-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory");
    println!(
        "ractor-persist throughput benchmark ({})",
        if quick { "quick" } else { "full" }
    );
    println!(
        "dir {} on {}; {} cores; tokio multi-thread, {} workers; repeats {} (medians)",
        dir.path().display(),
        measure::filesystem(dir.path()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        plan.reps,
    );
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load().trim());
    let (busy0, total0, steal0) = measure::machine_cpu();
    let own0 = measure::cpu_time() + measure::children_cpu();
    rt.block_on(async {
        let rows = raw::row_sizes().await;
        println!("rows: snapshot {} bytes, op {} bytes (the library's envelopes)", rows.0, rows.1);
        // Per configuration: what the targets are checked against.
        let mut ratios: Vec<Ratios> = Vec::new();
        if run("durable") {
            println!(
                "\n== 1, 2. state-changing messages (each pushes one op; perform -> Done) on redb, Durability::Immediate"
            );
            println!(
                "   baseline: plain ractor actor: clone + mutate + one redb transaction per message, on its own task"
            );
            println!(
                "   raw redb: one thread, no actor, the same rows (snapshot + op + removal of the previous op), as many messages per transaction as the library averaged"
            );
            println!(
                "   each repeat runs library, baseline, raw back to back; figures are medians over repeats, ratios medians of per-repeat ratios"
            );
            // `BENCH_ACTORS=1024` (a comma-separated list) runs only those configurations.
            let wanted: Vec<usize> = std::env::var("BENCH_ACTORS")
                .unwrap_or_default()
                .split(',')
                .filter_map(|a| a.trim().parse().ok())
                .collect();
            let configs = plan
                .configs
                .iter()
                .filter(|c| wanted.is_empty() || wanted.contains(&c.0));
            for &(actors, per_lib, per_naive) in configs {
                let (mut lib, mut naive, mut raw) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..plan.reps {
                    let l = durable::library(dir.path(), actors, per_lib).await;
                    let per_txn = l.batch().round().max(1.0) as usize;
                    naive.push(durable::naive(dir.path(), actors, per_naive).await);
                    raw.push(raw::write(dir.path(), rows, actors, per_txn, l.msgs));
                    lib.push(l);
                }
                let ratio = |other: &[Run]| {
                    let v: Vec<f64> = lib.iter().zip(other).map(|(l, o)| l.rate() / o.rate()).collect();
                    median(v)
                };
                let (vs_naive, vs_raw) = (ratio(&naive), ratio(&raw));
                let p50_vs_raw = median(
                    lib.iter()
                        .zip(&raw)
                        .map(|(l, r)| l.p50().as_secs_f64() / r.p50().as_secs_f64())
                        .collect(),
                );
                let (l, n, r) = (summary(&lib), summary(&naive), summary(&raw));
                print_library(actors, &l, lib[0].msgs);
                print_baseline(&n, vs_naive, naive[0].msgs);
                println!(
                    "              raw redb {:>8} msg/s {:>17}  txn p50 {:>9}  p99 {:>9}  CPU/msg {}  -> library / raw {:>5.2}, library p50 / raw txn p50 {:>5.2}  ({} msgs per txn, {actors} keys)",
                    count(r.rate),
                    range(&r),
                    dur(r.p50),
                    dur(r.p99),
                    us(r.cpu),
                    vs_raw,
                    p50_vs_raw,
                    count(r.batch),
                );
                ratios.push(Ratios {
                    actors,
                    rate: l.rate,
                    cpu: l.cpu,
                    vs_naive,
                    vs_raw,
                    p50_vs_raw,
                });
            }
            // The 1,024-actor load again with a 64-byte blob in every op (the op row grows by
            // 64 bytes), beside raw redb writing the same rows at the same batch size.
            let wide = if wanted.is_empty() || wanted.contains(&1024) {
                let per = plan.configs[3].1;
                let (mut lib, mut raw) = (Vec::new(), Vec::new());
                for _ in 0..plan.reps {
                    let l = durable::library_with(dir.path(), 1024, per, Msg::AddWide).await;
                    let per_txn = l.batch().round().max(1.0) as usize;
                    raw.push(raw::write(dir.path(), (rows.0, rows.1 + actors::WIDE_OP), 1024, per_txn, l.msgs));
                    lib.push(l);
                }
                let vs_raw = median(lib.iter().zip(&raw).map(|(l, r)| l.rate() / r.rate()).collect());
                let (l, r) = (summary(&lib), summary(&raw));
                println!(
                    " 1024 actors, 64-byte op: library {:>8} msg/s {:>17}  p50 {:>9}  p99 {:>9}  batch {:>6.1}  CPU/msg {} (committer thread {})",
                    count(l.rate),
                    range(&l),
                    dur(l.p50),
                    dur(l.p99),
                    l.batch,
                    us(l.cpu),
                    us(l.committer),
                );
                println!(
                    "                          raw redb {:>8} msg/s {:>17}  CPU/msg {}  -> library / raw {:>5.2}",
                    count(r.rate),
                    range(&r),
                    us(r.cpu),
                    vs_raw,
                );
                Some((l.rate, l.cpu))
            } else {
                None
            };

            println!("\n== targets (performance issue; each against its baseline from this run)");
            let get = |a: usize| ratios.iter().find(|r| r.actors == a);
            if let Some(r) = get(1) {
                verdict("1 actor: library / raw redb one-txn-per-message", r.vs_raw, 0.9, "x");
                verdict_max("1 actor: library reply p50 / raw txn p50", r.p50_vs_raw, 1.15, "x");
            }
            if let Some(r) = get(1024) {
                verdict("1024 actors: library / raw redb at the same batch size", r.vs_raw, 0.8, "x");
                verdict_max("1024 actors: CPU per message (all threads)", r.cpu * 1e6, 8.0, " µs");
                verdict("1024 actors: library", r.rate, 150_000.0, " msg/s");
            }
            if let Some((rate, cpu)) = wide {
                verdict("1024 actors, 64-byte op: library", rate, 150_000.0, " msg/s");
                verdict_max("1024 actors, 64-byte op: CPU per message (all threads)", cpu * 1e6, 8.0, " µs");
            }
            for (actors, target) in [(256, 20.0), (1024, 40.0)] {
                if let Some(r) = get(actors) {
                    verdict(&format!("{actors} actors: library / hand-written baseline"), r.vs_naive, target, "x");
                }
            }
        }

        if only.contains(&"profile") {
            // Only the library (1,024 actors unless BENCH_PROFILE_ACTORS says otherwise), for a
            // CPU profile: see docs/performance.md.
            let env = |name: &str, default: usize| {
                std::env::var(name)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let actors = env("BENCH_PROFILE_ACTORS", 1024);
            let per = env("BENCH_PROFILE_MSGS", 204_800 / actors.max(1));
            println!("\n== profile: the library alone, {actors} actors, {per} messages each");
            // BENCH_PROFILE_KIND=naive profiles the hand-written baseline instead.
            let naive = std::env::var("BENCH_PROFILE_KIND").is_ok_and(|k| k == "naive");
            let l = if naive {
                durable::naive(dir.path(), actors, per).await
            } else {
                durable::library(dir.path(), actors, per).await
            };
            println!(
                "{actors:>5} actors  {}  {:>8} msg/s  p50 {}  batch {:.1} msgs  CPU/msg {} (committer thread {})",
                if naive { "baseline" } else { "library" },
                count(l.rate()),
                dur(l.p50()),
                l.batch(),
                us(l.cpu_per_msg()),
                us(l.committer_per_msg()),
            );
        }

        if run("unchanged") {
            println!("\n== 3. unchanged-state messages (no commit) vs state-changing ones, the same actor on redb");
            let mut changed = Vec::new();
            let mut unchanged = Vec::new();
            let mut writes = 0;
            for _ in 0..plan.reps {
                let (c, u, w) = cycle::unchanged_vs_changed(dir.path(), plan.changed_one, plan.unchanged_one).await;
                changed.push(c);
                unchanged.push(u);
                writes += w;
            }
            let c = summary(&changed);
            let u = summary(&unchanged);
            println!(
                "unchanged {:>9} msg/s p50 {:>9} p99 {:>9} ({} commits) | changed {:>7} msg/s p50 {:>9} p99 {:>9}",
                count(u.rate),
                dur(u.p50),
                dur(u.p99),
                writes,
                count(c.rate),
                dur(c.p50),
                dur(c.p99),
            );
            verdict("unchanged / changed, 1 actor", u.rate / c.rate, 50.0, "x");
        }

        if run("delivery") {
            println!("\n== 8. delivery between persistent actors: bytes written per receiver commit (one message applied per commit), as the number of senders it knows grows");
            println!("   inbox: Tx::send, the runtime's inbox (one row per sender touched); baseline: the receiver deduplicates with a Seen in its state (encoded whole every commit); MemoryStore, bytes of the rows put");
            let msgs = if plan.reps == 1 { 50 } else { 200 };
            for senders in [10, 100, 1000] {
                let (inbox, seen) = delivery::bytes_per_commit(senders, msgs).await;
                println!(
                    "   {senders:>5} senders  inbox {inbox:>8.0} B/commit   Seen in state {seen:>8.0} B/commit   -> Seen / inbox {:>6.1}x  [{msgs} msgs]",
                    seen / inbox
                );
            }
        }

        if run("transforms") {
            println!("\n== 7. record transforms, one actor, call! closed loop of state-changing messages (each pushes one op): per message, elapsed and CPU of all threads");
            println!("   baseline: the same actor and store with no transform (plain), run in the same repeat; ratios are medians of per-repeat ratios");
            println!("   compressed: LZ4 above 64 bytes; encrypted: XChaCha20-Poly1305; both: compressed then encrypted");
            for (store, disk) in [("MemoryStore", false), ("redb", true)] {
                for &pad in &[64usize, 16 * 1024] {
                    let n = plan.transforms_msgs(disk, pad);
                    let variants = transforms::variants();
                    let mut costs: Vec<Vec<transforms::Cost>> = vec![Vec::new(); variants.len()];
                    for _ in 0..plan.reps {
                        for (i, (_, t)) in variants.iter().enumerate() {
                            costs[i].push(transforms::cost(dir.path(), t.clone(), pad, n, disk).await);
                        }
                    }
                    let median = |mut v: Vec<f64>| {
                        v.sort_by(|a, b| a.total_cmp(b));
                        v[v.len() / 2]
                    };
                    for (i, (name, _)) in variants.iter().enumerate() {
                        let wall = median(costs[i].iter().map(|c| c.wall).collect());
                        let cpu = median(costs[i].iter().map(|c| c.cpu).collect());
                        let ratio = median(
                            costs[i].iter().zip(&costs[0]).map(|(c, p)| c.wall / p.wall).collect(),
                        );
                        let cpu_ratio = median(
                            costs[i].iter().zip(&costs[0]).map(|(c, p)| c.cpu / p.cpu).collect(),
                        );
                        println!(
                            "{store:>11} state {:>6} B  {name:<10}: {:>9}/msg (CPU {:>9})  x{ratio:.2} of plain (CPU x{cpu_ratio:.2})  snapshot stored {:>6} B  [{n} msgs]",
                            pad + 8,
                            us(wall),
                            us(cpu),
                            costs[i][0].stored,
                        );
                    }
                }
            }
        }

        if run("cycle") {
            println!("\n== 4. message cycle per message, MemoryStore (no disk), one actor, call! closed loop: elapsed, and CPU time of all threads");
            println!("   baseline: plain ractor actor holding the same state in memory (no persistence)");
            let mut cycle_changed_1k = None;
            for &(pad, unchanged, changed) in &plan.cycle {
                let mut runs = Vec::new();
                for _ in 0..plan.reps {
                    runs.push(cycle::cost(pad, unchanged, changed).await);
                }
                let m = |f: fn(&cycle::Cycle) -> f64| {
                    let mut v: Vec<f64> = runs.iter().map(f).collect();
                    v.sort_by(|a, b| a.total_cmp(b));
                    v[v.len() / 2]
                };
                let size = format!("{} KiB", pad / 1024);
                let line = |what: &str, p: (f64, f64), b: (f64, f64), extra: String| {
                    println!(
                        "{size:>6} {what:<9}: persistent {:>10} (CPU {:>10}) | plain {:>9} (CPU {:>9}) | runtime adds {:>10} (CPU {:>10}){extra}",
                        us(p.0),
                        us(p.1),
                        us(b.0),
                        us(b.1),
                        us(p.0 - b.0),
                        us(p.1 - b.1),
                    );
                };
                line(
                    "unchanged",
                    (m(|c| c.persistent_unchanged.wall), m(|c| c.persistent_unchanged.cpu)),
                    (m(|c| c.plain_unchanged.wall), m(|c| c.plain_unchanged.cpu)),
                    String::new(),
                );
                if pad == 1024 {
                    cycle_changed_1k = Some(m(|c| c.persistent_changed.wall));
                }
                line(
                    "changed",
                    (m(|c| c.persistent_changed.wall), m(|c| c.persistent_changed.cpu)),
                    (m(|c| c.plain_changed.wall), m(|c| c.plain_changed.cpu)),
                    format!(
                        " | encode alone {}, clone alone {}",
                        us(m(|c| c.encode)),
                        us(m(|c| c.clone))
                    ),
                );
            }
            if let Some(changed) = cycle_changed_1k {
                verdict_max("MemoryStore cycle, 1 KiB state changed", changed * 1e6, 10.0, " µs");
            }
            let mut floors: Vec<f64> = Vec::new();
            for _ in 0..plan.reps {
                floors.push(cycle::handoff(plan.cycle[0].2).await);
            }
            floors.sort_by(|a, b| a.total_cmp(b));
            println!(
                "committer round trip alone (tokio task -> std thread over std mpsc -> oneshot back, no work): {} per message",
                us(floors[floors.len() / 2]),
            );
        }

        if run("postgres") {
            postgres_section(&plan).await;
        }

        if run("resident") {
            let n = plan.idle_actors;
            println!("\n== 5. resident memory, {n} idle actors with a 1 KiB state (Vec<u8> of 1024 filled bytes), each kind in a fresh process");
            println!("   committed: each persistent actor committed one change, on a store that keeps nothing in memory (its copy of the state is the store's, not the actor's)");
            println!("   never committed: each handled one message that changed nothing, on a MemoryStore; it keeps init's state encoded until its first commit (what a rollback then returns to)");
            println!("   baseline: the same plain ractor actor, one message handled");
            let c = resident::measure("committed", n);
            let p = resident::measure("persistent", n);
            let b = resident::measure("plain", n);
            println!(
                "per actor beyond its state: committed {:>6} B (VmRSS +{} KiB, VmHWM +{} KiB) | never committed {:>6} B (VmRSS +{} KiB) | plain ractor {:>6} B (VmRSS +{} KiB) | persistence adds {} B ({} B never committed)",
                count(c.per_actor_rss(n)),
                count((c.rss_after - c.rss_before) as f64 / 1024.0),
                count((c.hwm_after - c.hwm_before) as f64 / 1024.0),
                count(p.per_actor_rss(n)),
                count((p.rss_after - p.rss_before) as f64 / 1024.0),
                count(b.per_actor_rss(n)),
                count((b.rss_after - b.rss_before) as f64 / 1024.0),
                count(c.per_actor_rss(n) - b.per_actor_rss(n)),
                count(p.per_actor_rss(n) - b.per_actor_rss(n)),
            );
            verdict_max(
                "persistent actor's bytes beyond the same plain ractor actor (committed)",
                c.per_actor_rss(n) - b.per_actor_rss(n),
                512.0,
                " B",
            );
        }

        if run("entities") {
            entities::section(dir.path(), &plan.entities).await;
        }

        if run("models") {
            models::section(dir.path(), quick, plan.reps.max(3)).await;
        }

        if run("recovery") {
            println!("\n== 6. recovery: a store of {} actors (snapshot + one pending op each), respawn {} spread over it", count(plan.recovery_actors as f64), plan.respawn);
            let r = recovery::run(dir.path(), plan.recovery_actors, plan.respawn, plan.reps).await;
            println!(
                "built in {:.2} s (library records copied through Store::commit, 10,000 per transaction); file {} MiB",
                r.build.as_secs_f64(),
                count(r.file_bytes as f64 / (1024.0 * 1024.0)),
            );
            let pp = |v: &[Duration]| format!("p50 {:>9} p99 {:>9}", dur(percentile(v, 0.5)), dur(percentile(v, 0.99)));
            println!(
                "open, warm page cache: RedbStore + Storage {:>9} | baseline redb Database::open {:>9} (medians of {})",
                dur(r.open_warm),
                dur(r.raw_open),
                plan.reps,
            );
            println!(
                "respawn, warm: {} | baseline raw redb load (epoch + snapshot + ops, one txn) {} | plain ractor spawn {}",
                pp(&r.spawn_warm),
                pp(&r.raw_load),
                pp(&r.plain_spawn),
            );
            println!(
                "cold (file evicted from the page cache): open {:>9} | respawn {}",
                dur(r.open_cold),
                pp(&r.spawn_cold),
            );
            verdict_max(
                &format!("respawn p99 from a store of {} actors (warm)", count(r.actors as f64)),
                percentile(&r.spawn_warm, 0.99).as_secs_f64() * 1000.0,
                2.0,
                " ms",
            );
        }
    });
    let (busy1, total1, steal1) = measure::machine_cpu();
    let own = measure::cpu_time() + measure::children_cpu() - own0;
    let others = ((busy1 - busy0) - own).max(0.0);
    println!(
        "\nload average at end: {}; CPU used by other processes during the run: {:.0}% of the machine (this benchmark: {:.0}%; stolen by the hypervisor: {:.1}%)",
        load().trim(),
        100.0 * others / (total1 - total0).max(1e-9),
        100.0 * own / (total1 - total0).max(1e-9),
        100.0 * (steal1 - steal0) / (total1 - total0).max(1e-9),
    );
}

/// The library on PostgreSQL beside a hand-written actor doing one transaction per message,
/// on a throwaway server (or `PERSIST_PG_URL`'s), in the same run.
async fn postgres_section(plan: &Plan) {
    println!(
        "\n== PostgreSQL: state-changing messages (each pushes one op; perform -> Done), one throwaway server (fsync on, synchronous_commit on), 127.0.0.1"
    );
    let Some(server) = persist_postgres::TestCluster::shared() else {
        println!("   skipped: no PostgreSQL server (see above)");
        return;
    };
    println!(
        "   baseline: a hand-written ractor actor, one transaction per message (upsert state, insert op, delete previous op), {} shared connections, statements prepared once",
        postgres::BASELINE_CONNECTIONS
    );
    for &(actors, per_lib, per_naive) in &plan.postgres {
        let (mut lib, mut naive) = (Vec::new(), Vec::new());
        for _ in 0..plan.reps {
            lib.push(postgres::library(server, actors, per_lib).await);
            naive.push(postgres::naive(server, actors, per_naive).await);
        }
        let ratio = median(
            lib.iter()
                .zip(&naive)
                .map(|(l, n)| l.rate() / n.rate())
                .collect(),
        );
        let (l, n) = (summary(&lib), summary(&naive));
        print_library(actors, &l, lib[0].msgs);
        print_baseline(&n, ratio, naive[0].msgs);
    }
}

/// The library's line of a durable configuration.
fn print_library(actors: usize, l: &Summary, msgs: usize) {
    println!(
        "{actors:>5} actors  library  {:>8} msg/s {:>17}  p50 {:>9}  p99 {:>9}  batch {:>6.1} msgs ({:.1} commits with riders)  CPU/msg {} (committer thread {})  [{} msgs]",
        count(l.rate),
        range(l),
        dur(l.p50),
        dur(l.p99),
        l.batch,
        l.batch_all,
        us(l.cpu),
        us(l.committer),
        count(msgs as f64),
    );
}

/// The hand-written baseline's line, with the library's ratio to it.
fn print_baseline(n: &Summary, ratio: f64, msgs: usize) {
    println!(
        "              baseline {:>8} msg/s {:>17}  p50 {:>9}  p99 {:>9}  CPU/msg {}  -> library / baseline {:>6.1}x  [{} msgs]",
        count(n.rate),
        range(n),
        dur(n.p50),
        dur(n.p99),
        us(n.cpu),
        ratio,
        count(msgs as f64),
    );
}

/// What the durable section's targets are checked against, per actor count.
struct Ratios {
    actors: usize,
    rate: f64,
    /// CPU seconds per message, all threads.
    cpu: f64,
    vs_naive: f64,
    vs_raw: f64,
    p50_vs_raw: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians of repeated runs, figure by figure.
struct Summary {
    rate: f64,
    p50: Duration,
    p99: Duration,
    batch: f64,
    batch_all: f64,
    cpu: f64,
    committer: f64,
    /// The lowest and highest msg/s over the repeats.
    range: (f64, f64),
}

fn summary(runs: &[Run]) -> Summary {
    Summary {
        rate: median_of(runs, Run::rate),
        p50: Duration::from_secs_f64(median_of(runs, |r| r.p50().as_secs_f64())),
        p99: Duration::from_secs_f64(median_of(runs, |r| r.p99().as_secs_f64())),
        batch: median_of(runs, Run::batch),
        batch_all: median_of(runs, Run::batch_all),
        cpu: median_of(runs, Run::cpu_per_msg),
        committer: median_of(runs, Run::committer_per_msg),
        range: runs
            .iter()
            .map(Run::rate)
            .fold((f64::MAX, 0.0), |(lo, hi), r| (lo.min(r), hi.max(r))),
    }
}

/// "(95,000-140,000)": the spread of msg/s over the repeats.
fn range(s: &Summary) -> String {
    if s.range.0 >= s.range.1 {
        return String::new();
    }
    format!("({}-{})", count(s.range.0), count(s.range.1))
}

fn verdict(what: &str, value: f64, target: f64, unit: &str) {
    let shown = if value >= 1000.0 {
        count(value)
    } else {
        format!("{value:.2}")
    };
    let status = if value >= target { "met" } else { "MISSED" };
    println!(
        "{what}: {shown}{unit} (target >= {}{unit}) {status}",
        count_or(target)
    );
}

fn verdict_max(what: &str, value: f64, target: f64, unit: &str) {
    let shown = if value >= 1000.0 {
        count(value)
    } else {
        format!("{value:.2}")
    };
    let status = if value <= target { "met" } else { "MISSED" };
    println!(
        "{what}: {shown}{unit} (target <= {}{unit}) {status}",
        count_or(target)
    );
}

fn count_or(x: f64) -> String {
    if x >= 1000.0 {
        count(x)
    } else {
        format!("{x}")
    }
}
