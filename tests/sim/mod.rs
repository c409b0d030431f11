//! The two-party payment-channel simulation: the protocol ([`protocol`]), and the seeded
//! harness that drives it through a faulty link and crashes ([`harness`]).
#![allow(dead_code)]

pub mod harness;
pub mod protocol;

/// splitmix64: a tiny, seedable source of choices.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `0..n` (`n > 0`), as an index.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// What the schedules did, summed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub schedules: u64,
    pub steps: u64,
    pub commands: u64,
    pub refused: u64,
    pub deliveries: u64,
    pub drops: u64,
    pub duplicates_injected: u64,
    pub reorders: u64,
    pub delays: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub crashes: u64,
    /// Crashes while a `perform` hung: after a commit, before its sends.
    pub crashes_before_send: u64,
    /// Crashes while the restarted party replayed its pending ops.
    pub crashes_in_replay: u64,
    /// Crashes that lost the queued removals of done ops (power cut).
    pub power_cuts: u64,
    pub applied: u64,
    /// Duplicate updates dropped by `Seen`, and duplicate or late signatures dropped.
    pub duplicates_absorbed: u64,
    /// Of those, updates `Seen` had already forgotten (below its window).
    pub forgotten: u64,
    pub gaps: u64,
    /// Sends of an op id that was sent before (replay, resume).
    pub resends: u64,
    pub confirmed: u64,
    /// Signatures that covered the same updates on both sides, so the views were compared.
    pub agreements: u64,
    pub divergences: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $(self.$f += o.$f;)* };
        }
        sum!(
            schedules,
            steps,
            commands,
            refused,
            deliveries,
            drops,
            duplicates_injected,
            reorders,
            delays,
            disconnects,
            reconnects,
            crashes,
            crashes_before_send,
            crashes_in_replay,
            power_cuts,
            applied,
            duplicates_absorbed,
            forgotten,
            gaps,
            resends,
            confirmed,
            agreements,
            divergences
        );
    }
}
