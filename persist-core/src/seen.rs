//! [`Seen`]: the receiving side of at-least-once delivery.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::key::ActorKey;
use crate::model::OpId;

/// What [`Seen::record`] found out about a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// First time: apply it.
    New,
    /// Seen before: drop it, it already took effect.
    Duplicate,
    /// Older than everything still remembered for its sender: it was applied and forgotten,
    /// or it arrives for the first time after `window` later operations of the same sender
    /// were recorded (a link that drops or reorders can do that, even though the runtime
    /// performs in sequence order). It is safe to drop only if the receiver records each
    /// sender's operations in order (it refuses one that skips ahead, so the sender resends),
    /// or if `window` is larger than the number of operations that can overtake one.
    Forgotten,
}

/// The operation ids a receiver has applied, kept *in its state*, so that recording an id is
/// committed in the same transaction as the change the operation caused: a duplicate delivery
/// has no second effect, even across the receiver's own crashes.
///
/// It is bounded: per sender it remembers the `window` highest sequence numbers (everything
/// below them reads as [`Delivery::Forgotten`]), and at most `max_senders` senders (the one
/// heard from least recently is forgotten first, and its next delivery reads as
/// [`Delivery::New`]). So a receiver holds at most `window × max_senders` ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    window: u32,
    max_senders: u32,
    clock: u64,
    senders: BTreeMap<ActorKey, Window>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    /// Every sequence number below this was forgotten.
    floor: u64,
    seqs: BTreeSet<u64>,
    /// When this sender was last heard from, on `Seen::clock`.
    used: u64,
}

impl Default for Seen {
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
        }
    }

    /// Whether `id` was recorded and is still remembered.
    pub fn contains(&self, id: &OpId) -> bool {
        self.senders
            .get(id.actor())
            .is_some_and(|w| w.seqs.contains(&id.seq()))
    }

    /// Records `id`, and says whether it is new. Call it in the handler that applies the
    /// operation, and apply only on [`Delivery::New`].
    pub fn record(&mut self, id: &OpId) -> Delivery {
        self.clock += 1;
        if !self.senders.contains_key(id.actor()) && self.senders.len() >= self.max_senders as usize
        {
            let oldest = self
                .senders
                .iter()
                .min_by_key(|(_, w)| w.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.senders.remove(&oldest);
            }
        }
        let w = self.senders.entry(id.actor().clone()).or_default();
        w.used = self.clock;
        if id.seq() < w.floor {
            return Delivery::Forgotten;
        }
        if !w.seqs.insert(id.seq()) {
            return Delivery::Duplicate;
        }
        while w.seqs.len() > self.window as usize {
            if let Some(min) = w.seqs.pop_first() {
                w.floor = min + 1;
            }
        }
        Delivery::New
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn id(actor: &str, seq: u64) -> OpId {
        OpId::new(ActorKey::new("peer", actor), seq)
    }

    #[test]
    fn duplicates_are_recognised_and_the_window_is_bounded() {
        let mut seen = Seen::new(3, 2);
        assert_eq!(seen.record(&id("a", 0)), Delivery::New);
        assert_eq!(seen.record(&id("a", 0)), Delivery::Duplicate);
        for s in 1..=3 {
            assert_eq!(seen.record(&id("a", s)), Delivery::New);
        }
        // 0 fell out of the window of 3.
        assert_eq!(seen.record(&id("a", 0)), Delivery::Forgotten);
        assert_eq!(seen.record(&id("a", 2)), Delivery::Duplicate);
        assert_eq!(seen.record(&id("b", 0)), Delivery::New);
        // A third sender evicts the least recently heard one (a, last used before b).
        assert_eq!(seen.record(&id("c", 0)), Delivery::New);
        assert!(!seen.contains(&id("a", 3)));
        assert!(seen.contains(&id("b", 0)));
    }

    #[test]
    fn it_survives_a_round_trip_through_postcard() {
        let mut seen = Seen::default();
        seen.record(&id("a", 7));
        let bytes = postcard::to_stdvec(&seen).unwrap();
        let mut back: Seen = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.record(&id("a", 7)), Delivery::Duplicate);
    }
}
