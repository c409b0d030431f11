//! [`Seen`]: bounded deduplication of operations from external peers.

use std::collections::{BTreeMap, BTreeSet};

use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::key::ActorKey;
use crate::model::OpId;

/// What [`Seen::record`] found out about an id.
///
/// `Seen` never answers [`New`](Delivery::New) for an id it recorded before, and never
/// answers [`Duplicate`](Delivery::Duplicate) for an id it did not record. When its bounded
/// memory cannot tell, it answers [`Unknown`](Delivery::Unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Never recorded before, now recorded: apply it (in the same handler, so the record and
    /// the effect commit together).
    New,
    /// Recorded before and still remembered: it already took effect, drop it.
    Duplicate,
    /// `Seen` cannot tell whether this id was applied: its sequence number is at or below what
    /// was forgotten for its sender (the sender's window moved past it, or the sender was
    /// evicted, see [`Seen`]). It was *not* recorded.
    ///
    /// It may be a resend of an id applied long ago, or an id arriving for the first time: a
    /// sender's sequence is shared by all its destinations, so a receiver cannot see gaps in
    /// it, and a link that delays or reorders can deliver an id after later ones. Dropping it
    /// is safe only when the application can establish by other means that this id was
    /// applied (for instance from the peer protocol's own state: a commitment number, an
    /// acknowledged balance); never drop it by default. Applying it is safe only when the
    /// operation is idempotent. Otherwise treat it as a protocol error to reconcile with the
    /// peer.
    Unknown,
}

/// How many eviction marks [`Seen`] keeps (allocated at the first eviction).
const MARKS: usize = 256;

/// The operation ids a receiver has applied, for operations from *external* peers (identified
/// by [`OpId`]: the sender's key and a sequence number that increases per sender, shared by
/// all the sender's destinations, so not contiguous at any one receiver).
///
/// Keep it *in the receiver's state*, so that recording an id commits in the same transaction
/// as the change the operation caused: a duplicate has no second effect, even across the
/// receiver's crashes. Call [`record`](Seen::record) in the handler that applies the operation
/// and apply only on [`Delivery::New`].
///
/// # What it guarantees
///
/// * [`Delivery::New`] only for an id never recorded before (then it records it);
/// * [`Delivery::Duplicate`] only for an id recorded before;
/// * [`Delivery::Unknown`] when it cannot tell; that id is not recorded, and dropping it is
///   **not** safe by default (see [`Delivery::Unknown`]).
///
/// These hold for any sequence of calls, any number of senders and across serialization.
///
/// # When it answers `Unknown`
///
/// * **Below the window.** Per sender it remembers the `window` highest sequence numbers
///   recorded; an id at or below the highest one it dropped is `Unknown`. That is a resend of
///   an old id, or a first delivery overtaken by `window` later ids of the same sender.
/// * **Evicted senders.** It remembers at most `max_senders` senders; recording a new one
///   past that evicts the one heard from least recently. Its highest recorded sequence number
///   is kept in one of 256 eviction marks, chosen by a stable hash (FNV-1a) of the sender's
///   key, and the mark keeps the maximum of all senders hashed to it. A sender not currently
///   remembered gets `New` (and is remembered again) for an id above its mark, and `Unknown`
///   for an id at or below it. So once more than `max_senders` senders have been heard from,
///   even a sender never heard from before can get `Unknown` for ids up to the mark it shares.
///
/// With `window` above the number of a sender's ids that can overtake one in flight, and
/// `max_senders` above the number of peers, `Unknown` only comes from resends of old ids; but
/// a receiver usually cannot know the first bound, which is why dropping stays unsafe.
///
/// # Cost
///
/// Memory: at most `window × max_senders` ids, plus per sender its key, a floor and a
/// timestamp, plus 256 eviction marks (`Option<u64>`) once a sender was evicted. `Seen` is
/// encoded with the state on every commit: each remembered id as the varint gap from the
/// previous one, about 2 bytes per id (1 byte for gaps below 128, 2 below 16,384), plus the
/// senders' keys and up to ~2.8 KiB of marks. Keep it small.
///
/// # Exactly once
///
/// For operations between persistent actors of this runtime, prefer the runtime's
/// persistent-to-persistent delivery (`Tx::send`), which is exact once without a window.
/// `Seen` is for peers outside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    window: u32,
    max_senders: u32,
    clock: u64,
    senders: BTreeMap<ActorKey, Window>,
    /// The highest sequence number recorded for any evicted sender hashed to each mark.
    evicted: Marks,
}

/// One remembered sender. Every id of it ever recorded is either in `seqs` or below `floor`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WindowRepr")]
struct Window {
    /// Every sequence number below this is forgotten (reads as `Unknown`).
    floor: u64,
    /// The remembered sequence numbers, all at or above `floor`.
    seqs: BTreeSet<u64>,
    /// When this sender was last heard from, on `Seen::clock`.
    used: u64,
}

/// The encoded form of a [`Window`]: the ids as gaps, so a dense window costs about a byte
/// per id whatever the magnitude of the sequence numbers.
#[derive(Deserialize)]
#[serde(rename = "Window")]
struct WindowRepr {
    floor: u64,
    /// The first id minus `floor`, then each id minus the previous one (at least 1).
    gaps: Vec<u64>,
    used: u64,
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Gaps<'a>(&'a Window);
        impl Serialize for Gaps<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut prev = self.0.floor;
                s.collect_seq(self.0.seqs.iter().map(|&seq| {
                    let gap = seq - prev;
                    prev = seq;
                    gap
                }))
            }
        }
        let mut st = s.serialize_struct("Window", 3)?;
        st.serialize_field("floor", &self.floor)?;
        st.serialize_field("gaps", &Gaps(self))?;
        st.serialize_field("used", &self.used)?;
        st.end()
    }
}

impl TryFrom<WindowRepr> for Window {
    type Error = &'static str;

    fn try_from(r: WindowRepr) -> Result<Self, Self::Error> {
        let mut seqs = BTreeSet::new();
        let mut prev = r.floor;
        for (i, gap) in r.gaps.into_iter().enumerate() {
            if i > 0 && gap == 0 {
                return Err("Seen: repeated sequence number");
            }
            prev = prev
                .checked_add(gap)
                .ok_or("Seen: sequence number overflow")?;
            seqs.insert(prev);
        }
        Ok(Window {
            floor: r.floor,
            seqs,
            used: r.used,
        })
    }
}

impl Window {
    fn record(&mut self, seq: u64, window: u32) -> Delivery {
        if seq < self.floor {
            return Delivery::Unknown;
        }
        if !self.seqs.insert(seq) {
            return Delivery::Duplicate;
        }
        while self.seqs.len() > window as usize {
            if let Some(min) = self.seqs.pop_first() {
                self.floor = min + 1;
            }
        }
        Delivery::New
    }

    /// The highest sequence number ever recorded for this sender, as far as it knows.
    fn highest(&self) -> Option<u64> {
        self.seqs
            .last()
            .copied()
            .or_else(|| self.floor.checked_sub(1))
    }
}

/// The eviction marks: empty until the first eviction, then exactly [`MARKS`] entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Marks(Vec<Option<u64>>);

impl Serialize for Marks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Marks {
    /// Any other length than 0 or [`MARKS`] (not written by this code) is read conservatively:
    /// every mark becomes the highest one, so no recorded id can read as new.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<Option<u64>>::deserialize(d)?;
        if v.is_empty() || v.len() == MARKS {
            return Ok(Marks(v));
        }
        Ok(match v.into_iter().flatten().max() {
            Some(max) => Marks(vec![Some(max); MARKS]),
            None => Marks::default(),
        })
    }
}

impl Marks {
    fn get(&self, key: &ActorKey) -> Option<u64> {
        self.0.get(slot(key)).copied().flatten()
    }

    fn raise(&mut self, key: &ActorKey, seq: u64) {
        if self.0.is_empty() {
            self.0 = vec![None; MARKS];
        }
        let mark = &mut self.0[slot(key)];
        *mark = Some(mark.map_or(seq, |m| m.max(seq)));
    }
}

/// The mark of `key`: 64-bit FNV-1a over the namespace, a 0xFF separator (never in UTF-8) and
/// the key. Stable across processes and versions, since the marks are stored.
fn slot(key: &ActorKey) -> usize {
    let bytes = key
        .namespace()
        .bytes()
        .chain([0xFF])
        .chain(key.key().bytes());
    let hash = bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % MARKS as u64) as usize
}

impl Default for Seen {
    /// A window of 1,024 ids and up to 1,024 senders.
    fn default() -> Self {
        Seen::new(1024, 1024)
    }
}

impl Seen {
    /// Remembers up to `window` ids per sender (at least 1) and up to `max_senders` senders
    /// (at least 1).
    pub fn new(window: u32, max_senders: u32) -> Self {
        Seen {
            window: window.max(1),
            max_senders: max_senders.max(1),
            clock: 0,
            senders: BTreeMap::new(),
            evicted: Marks::default(),
        }
    }

    /// Whether `id` was recorded and is still remembered (`false` does not mean it is new).
    pub fn contains(&self, id: &OpId) -> bool {
        self.senders
            .get(id.actor())
            .is_some_and(|w| w.seqs.contains(&id.seq()))
    }

    /// Records `id` if it is provably new, and says what it found (see [`Delivery`]). Call it
    /// in the handler that applies the operation, and apply only on [`Delivery::New`].
    pub fn record(&mut self, id: &OpId) -> Delivery {
        self.clock += 1;
        let clock = self.clock;
        if let Some(w) = self.senders.get_mut(id.actor()) {
            w.used = clock;
            return w.record(id.seq(), self.window.max(1));
        }
        // Not remembered: every id it ever had recorded is at or below its mark.
        let mark = self.evicted.get(id.actor());
        if mark.is_some_and(|m| id.seq() <= m) {
            return Delivery::Unknown;
        }
        while self.senders.len() >= self.max_senders.max(1) as usize {
            let oldest = self
                .senders
                .iter()
                .min_by_key(|(_, w)| w.used)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            if let Some(w) = self.senders.remove(&oldest)
                && let Some(high) = w.highest()
            {
                self.evicted.raise(&oldest, high);
            }
        }
        // The floor comes from the mark read before evicting: an eviction just now may have
        // raised it (same mark), but this sender's own ids are all at or below the old value.
        let mut w = Window {
            floor: mark.map_or(0, |m| m + 1),
            seqs: BTreeSet::new(),
            used: clock,
        };
        let delivery = w.record(id.seq(), self.window.max(1));
        self.senders.insert(id.actor().clone(), w);
        delivery
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn id(actor: &str, seq: u64) -> OpId {
        OpId::new(ActorKey::new("peer", actor), seq)
    }

    fn round_trip(seen: &Seen) -> Seen {
        let bytes = postcard::to_stdvec(seen).unwrap();
        let back: Seen = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, seen);
        back
    }

    #[test]
    fn duplicates_are_recognised_and_the_window_is_bounded() {
        let mut seen = Seen::new(3, 2);
        assert_eq!(seen.record(&id("a", 0)), Delivery::New);
        assert_eq!(seen.record(&id("a", 0)), Delivery::Duplicate);
        for s in 1..=3 {
            assert_eq!(seen.record(&id("a", s)), Delivery::New);
        }
        assert_eq!(seen.record(&id("a", 2)), Delivery::Duplicate);
        assert_eq!(seen.record(&id("b", 0)), Delivery::New);
        // A third sender evicts the least recently heard one (a, last used before b).
        assert_eq!(seen.record(&id("c", 0)), Delivery::New);
        assert!(!seen.contains(&id("a", 3)));
        assert!(seen.contains(&id("b", 0)));
    }

    #[test]
    fn an_evicted_senders_resend_is_unknown_never_new() {
        let mut seen = Seen::new(16, 1);
        for s in 1..=3 {
            assert_eq!(seen.record(&id("a", s)), Delivery::New);
        }
        // b evicts a.
        assert_eq!(seen.record(&id("b", 1)), Delivery::New);
        assert_eq!(seen.record(&id("a", 2)), Delivery::Unknown);
        assert_eq!(seen.record(&id("a", 4)), Delivery::New);
        // a is back (evicting b), with its old ids still unknown, not new.
        for s in 0..=3 {
            assert_eq!(seen.record(&id("a", s)), Delivery::Unknown);
        }
        assert_eq!(seen.record(&id("a", 4)), Delivery::Duplicate);
        assert_eq!(seen.record(&id("b", 1)), Delivery::Unknown);
        assert_eq!(seen.record(&id("b", 2)), Delivery::New);
    }

    #[test]
    fn an_id_below_the_window_is_unknown() {
        let mut seen = Seen::new(3, 4);
        for s in [10, 20, 30, 40] {
            assert_eq!(seen.record(&id("a", s)), Delivery::New);
        }
        // 10 was applied and forgotten, 5 never arrived: both are at or below the floor.
        assert_eq!(seen.record(&id("a", 10)), Delivery::Unknown);
        assert_eq!(seen.record(&id("a", 5)), Delivery::Unknown);
        assert!(!seen.contains(&id("a", 5)));
        // 15 is above the floor and not remembered: provably new.
        assert_eq!(seen.record(&id("a", 15)), Delivery::New);
        assert_eq!(seen.record(&id("a", 30)), Delivery::Duplicate);
    }

    #[test]
    fn seq_zero_from_a_never_seen_sender_is_new() {
        let mut seen = Seen::new(2, 1);
        assert_eq!(seen.record(&id("a", 0)), Delivery::New);
        assert_eq!(seen.record(&id("a", 0)), Delivery::Duplicate);
        // Also after an eviction happened (unless the mark it shares is set).
        assert_eq!(seen.record(&id("b", 5)), Delivery::New);
        let c = ActorKey::new("peer", "c");
        assert!(seen.evicted.get(&c).is_none(), "pick a key on another mark");
        assert_eq!(seen.record(&OpId::new(c, 0)), Delivery::New);
    }

    /// A tiny xorshift generator, so the test is deterministic without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn never_new_for_a_recorded_id_never_duplicate_for_an_unrecorded_one() {
        let (mut total_unknown, mut total_evicted) = (0, 0);
        for seed in 1..=40u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let window = 1 + rng.below(6) as u32;
            let max_senders = 1 + rng.below(4) as u32;
            let senders = 1 + rng.below(8);
            let mut seen = Seen::new(window, max_senders);
            let mut recorded: HashSet<(u64, u64)> = HashSet::new();
            let mut next = vec![0u64; senders as usize];
            let mut new = 0;
            for step in 0..2_000 {
                let sender = rng.below(senders);
                // Mostly fresh ids with gaps (a shared sequence), sometimes an old one again.
                let seq = if rng.below(3) == 0 {
                    rng.below(next[sender as usize] + 1)
                } else {
                    next[sender as usize] += 1 + rng.below(4);
                    next[sender as usize]
                };
                let op = id(&format!("s{sender}"), seq);
                let was = recorded.contains(&(sender, seq));
                match seen.record(&op) {
                    Delivery::New => {
                        assert!(!was, "seed {seed} step {step}: {op} recorded, read as new");
                        recorded.insert((sender, seq));
                        new += 1;
                    }
                    Delivery::Duplicate => {
                        assert!(was, "seed {seed} step {step}: {op} unrecorded, duplicate");
                    }
                    Delivery::Unknown => total_unknown += 1,
                }
                if seen.contains(&op) {
                    assert!(recorded.contains(&(sender, seq)));
                }
                assert!(seen.senders.len() <= max_senders as usize);
                assert!(
                    seen.senders
                        .values()
                        .all(|w| w.seqs.len() <= window as usize)
                );
                if step % 97 == 0 {
                    seen = round_trip(&seen);
                }
            }
            assert!(new > 0, "seed {seed}: nothing was ever new");
            total_evicted += usize::from(!seen.evicted.0.is_empty());
        }
        // The runs did exercise forgetting and eviction.
        assert!(total_unknown > 0 && total_evicted > 0);
    }

    #[test]
    fn a_postcard_round_trip_keeps_the_answers() {
        let mut seen = Seen::new(3, 1);
        for s in [7, 1_000_000, 1_000_003, 1_000_004] {
            assert_eq!(seen.record(&id("a", s)), Delivery::New);
        }
        // Evicts a, setting its mark.
        assert_eq!(seen.record(&id("b", 0)), Delivery::New);
        let mut back = round_trip(&seen);
        assert_eq!(back, seen);
        assert_eq!(back.record(&id("b", 0)), Delivery::Duplicate);
        assert_eq!(back.record(&id("a", 1_000_003)), Delivery::Unknown);
        assert_eq!(back.record(&id("a", 1_000_005)), Delivery::New);
        assert_eq!(back.record(&id("a", 1_000_004)), Delivery::Unknown);

        // The window is encoded as gaps: dense ids cost about a byte each.
        let mut dense = Seen::new(1024, 1);
        for s in 0..1024 {
            dense.record(&id("a", 1_000_000_000 + s));
        }
        let bytes = postcard::to_stdvec(&dense).unwrap();
        assert!(bytes.len() < 1024 + 64, "{} bytes", bytes.len());
        let mut back = round_trip(&dense);
        assert_eq!(back.record(&id("a", 1_000_000_500)), Delivery::Duplicate);
    }

    #[test]
    fn odd_marks_decode_conservatively() {
        let mut seen = Seen::new(3, 1);
        seen.record(&id("a", 9));
        seen.record(&id("b", 1));
        let mut odd = seen.clone();
        odd.evicted.0.truncate(3);
        odd.evicted.0[0] = Some(9);
        let bytes = postcard::to_stdvec(&odd).unwrap();
        let mut back: Seen = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.evicted.0.len(), MARKS);
        assert_eq!(back.record(&id("a", 9)), Delivery::Unknown);
        assert_eq!(back.record(&id("a", 10)), Delivery::New);
    }

    #[test]
    fn the_mark_hash_is_stable() {
        // Stored marks are indexed by it: it must never change.
        assert_eq!(slot(&ActorKey::new("peer", "a")), 121);
    }

    #[test]
    fn its_shape_can_be_traced() {
        assert!(crate::shape_fingerprint::<Seen>().is_some());
    }
}
