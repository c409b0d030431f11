//! Durable maps: keyed collections an actor keeps beside its state, stored one row per entry
//! in [`Space::MAPS`] and written per changed entry in the message's commit.
//!
//! Loading is eager: a start reads every entry with the rest of the record, in the same
//! transaction, and checks each envelope (checksum, decryption). The key and value types are
//! known only when a handler first asks for the map ([`crate::Tx::map`]), so the entries are
//! decoded then, once. Reads are from memory and never wait on the store; a change is
//! undone if the handler or the commit fails.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{self, Kind, Place};
use crate::error::{DecodeError, DecodeReason, MapError, RecordRef};
use crate::key::ActorKey;
use crate::store::{Loaded, RowWrite, Space};
use crate::transform::Transforms;

/// The longest name of a durable map, in bytes.
pub const MAX_MAP_NAME: usize = 256;

/// The version of a map entry's layout.
pub(crate) const MAP_VERSION: u32 = 1;

/// A keyed collection of a persistent actor, stored one row per entry.
///
/// Reached through [`crate::Tx::map`] in a handler. Reads are from memory. A change
/// ([`insert`](Self::insert), [`remove`](Self::remove)) is written in the message's commit as
/// the one row of the entry it changed, whatever the map's size; if the handler or the commit
/// fails it is undone with the rest of the message.
pub struct DurableMap<K, V> {
    name: Arc<str>,
    entries: BTreeMap<K, (u64, V)>,
    /// Each change of this message: the key and what it held before, oldest first.
    undo: Vec<(K, Option<(u64, V)>)>,
    next_id: Arc<AtomicU64>,
    shape: u64,
}

impl<K, V> DurableMap<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// Whether the map holds `key`.
    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, by ascending key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, (_, v))| (k, v))
    }

    /// Sets `key` to `value`; `true` if it replaced an entry. Written in this message's
    /// commit as one row.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let id = match self.entries.get(&key) {
            Some((id, _)) => *id,
            None => self.next_id.fetch_add(1, Ordering::Relaxed),
        };
        let before = self.entries.insert(key.clone(), (id, value));
        let replaced = before.is_some();
        self.undo.push((key, before));
        replaced
    }

    /// Changes the value of `key` in place with `f`; `false` (and `f` not called) if the map
    /// does not hold it. Written in this message's commit as one row. The value is cloned
    /// first, for the rollback.
    pub fn update(&mut self, key: &K, f: impl FnOnce(&mut V)) -> bool
    where
        V: Clone,
    {
        let Some((id, value)) = self.entries.get_mut(key) else {
            return false;
        };
        let before = (*id, value.clone());
        f(value);
        self.undo.push((key.clone(), Some(before)));
        true
    }

    /// Removes `key`, returning whether it was there. Written in this message's commit as
    /// the removal of its row.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.entries.remove(key) {
            Some(before) => {
                self.undo.push((key.clone(), Some(before)));
                true
            }
            None => false,
        }
    }
}

/// What the runtime does with a map without knowing its types.
pub(crate) trait Entries: Send + Sync {
    /// Whether this message changed the map.
    fn changed(&self) -> bool;
    /// The row writes of this message's changes.
    fn writes(&self, seal: &mut Seal<'_>, out: &mut Vec<RowWrite>) -> Result<(), postcard::Error>;
    /// The commit landed: forget the undo log.
    fn committed(&mut self);
    /// The message failed: undo its changes.
    fn roll_back(&mut self);
    /// For the typed handle.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A key whose stored row a message changes: its row id before, and its entry now.
struct Change<'a, K, V> {
    key: &'a K,
    before: Option<u64>,
    now: Option<(u64, &'a V)>,
}

impl<K, V> DurableMap<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Per key this message touched: its row before the message (the first undo entry)
    /// and its entry now, for the keys whose stored row must change. A key inserted and
    /// removed again, or set back to the bytes it had, changes nothing (P6).
    fn effective(&self) -> Vec<Change<'_, K, V>> {
        let mut first: BTreeMap<&K, &Option<(u64, V)>> = BTreeMap::new();
        for (key, before) in &self.undo {
            first.entry(key).or_insert(before);
        }
        first
            .into_iter()
            .filter_map(|(key, before)| {
                let now = self.entries.get(key).map(|(id, v)| (*id, v));
                let same = match (before, now) {
                    (None, None) => true,
                    (Some((a, old)), Some((b, new))) if *a == b => {
                        // Equal encodings: the row would be rewritten with its own bytes.
                        matches!(
                            (postcard::to_stdvec(old), postcard::to_stdvec(new)),
                            (Ok(x), Ok(y)) if x == y
                        )
                    }
                    _ => false,
                };
                (!same).then(|| Change {
                    key,
                    before: before.as_ref().map(|(id, _)| *id),
                    now,
                })
            })
            .collect()
    }
}

impl<K, V> Entries for DurableMap<K, V>
where
    K: Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn changed(&self) -> bool {
        !self.undo.is_empty() && !self.effective().is_empty()
    }

    fn writes(&self, seal: &mut Seal<'_>, out: &mut Vec<RowWrite>) -> Result<(), postcard::Error> {
        for Change { key, before, now } in self.effective() {
            if let Some(old) = before
                && now.is_none_or(|(id, _)| id != old)
            {
                out.push(RowWrite::Delete {
                    space: Space::MAPS,
                    first: old,
                    last: old,
                });
            }
            if let Some((id, value)) = now {
                // Capped as every record is: an entry too large to read back fails the
                // message here, before anything is written.
                let payload = envelope::to_payload(&(&*self.name, key, value))?;
                out.push(RowWrite::Put {
                    space: Space::MAPS,
                    id,
                    bytes: seal(id, self.shape, &payload),
                });
            }
        }
        Ok(())
    }

    fn committed(&mut self) {
        self.undo.clear();
    }

    fn roll_back(&mut self) {
        while let Some((key, before)) = self.undo.pop() {
            match before {
                Some(entry) => self.entries.insert(key, entry),
                None => self.entries.remove(&key),
            };
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Seals a map entry's payload as row `id` with the types' fingerprint.
pub(crate) type Seal<'a> = dyn FnMut(u64, u64, &[u8]) -> Vec<u8> + 'a;

/// A stored entry whose envelope was checked, waiting for its map's types.
struct RawEntry {
    id: u64,
    fingerprint: u64,
    /// The key and value's postcard bytes (after the map's name).
    body: Vec<u8>,
}

/// An actor's durable maps: the entries loaded but not yet typed, and the maps handed out.
#[derive(Default)]
pub(crate) struct MapSet {
    raw: HashMap<String, Vec<RawEntry>>,
    typed: HashMap<String, Box<dyn Entries>>,
    next_id: Arc<AtomicU64>,
}

impl MapSet {
    /// Checks every loaded map row's envelope and groups the entries by map; the rows that
    /// fail go to `failed`.
    pub(crate) fn load(
        key: &ActorKey,
        loaded: &Loaded,
        transforms: &Transforms,
        failed: &mut Vec<(RecordRef, DecodeReason)>,
    ) -> MapSet {
        let mut set = MapSet::default();
        let mut next = 1;
        for (id, bytes) in loaded.space(Space::MAPS) {
            next = next.max(id.saturating_add(1));
            match open_entry(key, id, bytes, transforms) {
                Ok((name, entry)) => set.raw.entry(name).or_default().push(entry),
                Err(reason) => failed.push((RecordRef::MapEntry(id), reason)),
            }
        }
        set.next_id = Arc::new(AtomicU64::new(next));
        set
    }

    /// Map `name` as `DurableMap<K, V>`, decoding its entries on first use.
    pub(crate) fn get<K, V>(
        &mut self,
        key: &ActorKey,
        actor_type: &'static str,
        name: &str,
    ) -> Result<&mut DurableMap<K, V>, MapError>
    where
        K: Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        if name.len() > MAX_MAP_NAME {
            return Err(MapError::NameTooLong {
                key: key.clone(),
                map: name.to_owned(),
                max: MAX_MAP_NAME,
            });
        }
        let types = std::any::type_name::<(K, V)>();
        if !self.typed.contains_key(name) {
            let shape = crate::shape::shape_fingerprint::<(K, V)>().unwrap_or(0);
            let raw = self.raw.get(name).map_or(&[][..], |v| &v[..]);
            let mut entries = BTreeMap::new();
            for entry in raw {
                let bad = |reason| DecodeError {
                    key: key.clone(),
                    actor_type,
                    record: RecordRef::MapEntry(entry.id),
                    reason,
                };
                if entry.fingerprint != shape {
                    return Err(MapError::Decode(Box::new(bad(DecodeReason::MapTypes {
                        map: name.to_owned(),
                        stored: entry.fingerprint,
                        expected: shape,
                    }))));
                }
                let (k, v): (K, V) = envelope::payload(&entry.body)
                    .map_err(|reason| MapError::Decode(Box::new(bad(reason))))?;
                if let Some((other, _)) = entries.get(&k) {
                    // The runtime writes one row per key: two are damage it cannot settle.
                    return Err(MapError::Decode(Box::new(bad(
                        DecodeReason::DuplicateEntry {
                            map: name.to_owned(),
                            other: *other,
                        },
                    ))));
                }
                entries.insert(k, (entry.id, v));
            }
            self.raw.remove(name);
            let map = DurableMap {
                name: name.into(),
                entries,
                undo: Vec::new(),
                next_id: self.next_id.clone(),
                shape,
            };
            self.typed.insert(name.to_owned(), Box::new(map));
        }
        let map = self.typed.get_mut(name).expect("inserted above");
        map.as_any_mut()
            .downcast_mut::<DurableMap<K, V>>()
            .ok_or_else(|| MapError::OtherTypes {
                key: key.clone(),
                map: name.to_owned(),
                types,
            })
    }

    /// Whether this message changed any map.
    pub(crate) fn changed(&self) -> bool {
        self.typed.values().any(|m| m.changed())
    }

    /// The row writes of this message's changes to every map.
    pub(crate) fn writes(
        &self,
        seal: &mut Seal<'_>,
        out: &mut Vec<RowWrite>,
    ) -> Result<(), postcard::Error> {
        // A map this message did not change writes nothing.
        for map in self.typed.values() {
            map.writes(seal, out)?;
        }
        Ok(())
    }

    /// The commit landed.
    pub(crate) fn committed(&mut self) {
        for map in self.typed.values_mut() {
            map.committed();
        }
    }

    /// The message failed: every change is undone.
    pub(crate) fn roll_back(&mut self) {
        for map in self.typed.values_mut() {
            map.roll_back();
        }
    }
}

/// Opens map row `id`: the map's name and the entry, its envelope checked.
fn open_entry(
    key: &ActorKey,
    id: u64,
    bytes: &[u8],
    transforms: &Transforms,
) -> Result<(String, RawEntry), DecodeReason> {
    let place = Place { key, id };
    let (header, body) = envelope::open(bytes, Kind::MapEntry, MAP_VERSION, transforms, place)?;
    if header.sequence != id {
        return Err(DecodeReason::SequenceMismatch {
            expected: id,
            found: header.sequence,
        });
    }
    let (name, rest) =
        postcard::take_from_bytes::<String>(&body).map_err(|source| DecodeReason::Payload {
            type_name: "map name",
            source,
        })?;
    Ok((
        name,
        RawEntry {
            id,
            fingerprint: header.fingerprint,
            body: rest.to_vec(),
        },
    ))
}
