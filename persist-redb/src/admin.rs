//! Deleting, listing and quarantining actors: the store's administrative operations.

use persist_core::{ActorKey, Fence, StoreError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::Failure;
use crate::format::{EPOCHS, FLOORS, OPS, SNAPSHOTS, raise_floor};

/// Records moved aside because they could not be decoded, by (namespace, key, epoch); the
/// value is the runtime's encoding of the original bytes and the reason.
pub(crate) const QUARANTINE: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("ractor_persist.quarantine");

/// Removes the snapshot and every pending operation of `key` in `txn`.
fn remove_record(txn: &redb::WriteTransaction, key: &ActorKey) -> Result<(), Failure> {
    let (ns, k) = (key.namespace(), key.key());
    txn.open_table(SNAPSHOTS)?.remove((ns, k))?;
    let mut ops = txn.open_table(OPS)?;
    ops.retain_in((ns, k, 0)..=(ns, k, u64::MAX), |_, _| false)?;
    Ok(())
}

/// Deletes `key`'s record, keeps its sequence floor (raised to `floor`) and takes a new
/// epoch, durably.
pub(crate) fn delete(db: &Database, key: &ActorKey, floor: u64) -> Result<(), Failure> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    remove_record(&txn, key)?;
    raise_floor(&mut txn.open_table(FLOORS)?, key, floor)?;
    {
        let mut epochs = txn.open_table(EPOCHS)?;
        let id = (key.namespace(), key.key());
        let current = epochs.get(id)?.map_or(0, |e| e.value());
        epochs.insert(id, current.saturating_add(1))?;
    }
    txn.commit()?;
    Ok(())
}

/// The keys of `namespace` with a snapshot.
pub(crate) fn list(db: &Database, namespace: &str) -> Result<Vec<String>, Failure> {
    let txn = db.begin_read()?;
    let snapshots = txn.open_table(SNAPSHOTS)?;
    let mut keys = Vec::new();
    for entry in snapshots.range((namespace, "")..)? {
        let (k, _) = entry?;
        let (ns, key) = k.value();
        if ns != namespace {
            break;
        }
        keys.push(key.to_owned());
    }
    Ok(keys)
}

/// Moves `key`'s record aside under `epoch`, if that is still its epoch, and raises its
/// sequence floor to `floor` in the same transaction.
pub(crate) fn quarantine(
    db: &Database,
    key: &ActorKey,
    epoch: u64,
    blob: &[u8],
    floor: u64,
) -> Result<(), Failure> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let id = (key.namespace(), key.key());
    let current = txn.open_table(EPOCHS)?.get(id)?.map_or(0, |e| e.value());
    if current != epoch {
        return Err(StoreError::Fenced(vec![Fence {
            index: 0,
            key: key.clone(),
            epoch,
            current,
        }])
        .into());
    }
    txn.open_table(QUARANTINE)?
        .insert((id.0, id.1, epoch), blob)?;
    remove_record(&txn, key)?;
    raise_floor(&mut txn.open_table(FLOORS)?, key, floor)?;
    txn.commit()?;
    Ok(())
}

/// The quarantined records of `namespace`.
pub(crate) fn quarantined(
    db: &Database,
    namespace: &str,
) -> Result<Vec<(String, u64, Vec<u8>)>, Failure> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(QUARANTINE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut rows = Vec::new();
    for entry in table.range((namespace, "", 0)..)? {
        let (k, v) = entry?;
        let (ns, key, epoch) = k.value();
        if ns != namespace {
            break;
        }
        rows.push((key.to_owned(), epoch, v.value().to_vec()));
    }
    Ok(rows)
}
