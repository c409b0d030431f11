//! Export and import: every row and mark of a store as one byte stream, to move a store
//! between backends offline (redb to SQLite, and back).
//!
//! The stream (format 1), all integers little endian:
//!
//! ```text
//! header   8  magic "RPEXPORT"
//!          4  stream version (1)
//! records, each a tag byte, its fields, and a CRC-32C of the tag and the fields:
//!   'A' actor   4 namespace length, namespace (UTF-8), 4 key length, key (UTF-8),
//!               8 epoch, 8 floor, 4 CRC
//!   'R' row     1 space, 8 id, 4 length, bytes, 4 CRC          (a row of the last actor)
//!   'E' end     8 actors, 8 rows, 4 CRC-32C of every byte of the stream before it
//! ```
//!
//! Actors come in ascending (namespace, key) order, each followed by its rows in ascending
//! (space, id) order; every key the store holds anything of is exported, including keys whose
//! rows are all gone (their marks keep operation ids and epochs from repeating). Rows are the
//! stored bytes, untouched: snapshots, pending operations, dead letters and quarantined
//! records alike, compressed or encrypted as they were written. So export, import and export
//! again gives the same stream, byte for byte, whatever the backends in between.
//!
//! An import reads and checks the whole stream before it writes anything, then writes it in
//! one commit: a truncated or damaged stream imports nothing.

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::error::StoreError;
use crate::key::ActorKey;
use crate::store::{ActorCommit, Marks, Space, Store};

/// The first bytes of every export stream.
pub const MAGIC: [u8; 8] = *b"RPEXPORT";
/// The stream version this build writes and reads.
pub const STREAM_VERSION: u32 = 1;
/// The longest namespace or key a stream may hold.
const MAX_KEY_LEN: u32 = 1 << 20;

const TAG_ACTOR: u8 = b'A';
const TAG_ROW: u8 = b'R';
const TAG_END: u8 = b'E';

/// What an export wrote, or an import read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Actor keys (each with its marks).
    pub actors: u64,
    /// Rows, in every space.
    pub rows: u64,
    /// Bytes of the stream.
    pub bytes: u64,
}

/// How an import treats a store that already holds something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImportMode {
    /// Refuse unless the store holds nothing at all (no row, no mark): the default.
    #[default]
    IntoEmpty,
    /// Import into a store that holds other keys too. For each key of the stream, its stored
    /// rows are replaced by the stream's, and its marks are raised to the stream's (never
    /// lowered). Keys not in the stream are left alone.
    Replace,
}

/// Why an export or an import failed. An import that fails wrote nothing.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading or writing the stream failed.
    #[error("export stream I/O at byte {offset}: {source}")]
    Io {
        /// Where in the stream.
        offset: u64,
        /// What the I/O said.
        #[source]
        source: io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bytes are not an export stream.
    #[error("not a ractor-persist export stream: it starts with {found:?}, not \"RPEXPORT\"")]
    NotAStream {
        /// The first bytes found (at most 8).
        found: Vec<u8>,
    },
    /// A stream of another version.
    #[error("export stream version {found} is not {supported}, the version this build reads")]
    UnsupportedVersion {
        /// The version in the stream.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The stream ends before its end record.
    #[error("the export stream is truncated at byte {offset}: {expected}")]
    Truncated {
        /// Where the bytes ran out.
        offset: u64,
        /// What was being read.
        expected: &'static str,
    },
    /// A record is damaged or out of place.
    #[error("the export stream is damaged at byte {offset} ({record}): {detail}")]
    Corrupt {
        /// Where the record starts.
        offset: u64,
        /// Which record: the actor it belongs to, when known.
        record: String,
        /// What is wrong.
        detail: String,
    },
    /// A namespace or key too long for the stream (checked on export, so that no stream is
    /// written that an import would refuse).
    #[error("actor key `{key}` has a part of {len} bytes; an export stream holds at most {max}")]
    KeyTooLong {
        /// The key.
        key: ActorKey,
        /// The length of its longer part.
        len: usize,
        /// The most a stream holds.
        max: usize,
    },
    /// The store is not empty and the import was not asked to replace.
    #[error(
        "store `{store}` is not empty ({keys} keys, the first `{first}`): import refused \
         (use ImportMode::Replace to import anyway)"
    )]
    NotEmpty {
        /// The store.
        store: String,
        /// How many keys it holds.
        keys: usize,
        /// The first of them.
        first: ActorKey,
    },
}

/// Counts and checksums what it writes.
struct Out<'w> {
    w: &'w mut dyn Write,
    offset: u64,
    whole: u32,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), TransferError> {
        self.w
            .write_all(bytes)
            .map_err(|source| TransferError::Io {
                offset: self.offset,
                source,
            })?;
        self.whole = crc32c::crc32c_append(self.whole, bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes one record: `body` (tag first) and its checksum.
    fn record(&mut self, body: &[u8]) -> Result<(), TransferError> {
        self.put(body)?;
        self.put(&crc32c::crc32c(body).to_le_bytes())
    }
}

/// Writes every row and mark of `store` to `out` as an export stream.
pub fn export(store: &dyn Store, out: &mut dyn Write) -> Result<TransferStats, TransferError> {
    let mut out = Out {
        w: out,
        offset: 0,
        whole: 0,
    };
    out.put(&MAGIC)?;
    out.put(&STREAM_VERSION.to_le_bytes())?;
    let mut stats = TransferStats::default();
    let mut body = Vec::new();
    for (key, marks) in store.scan()? {
        for text in [key.namespace(), key.key()] {
            if text.len() > MAX_KEY_LEN as usize {
                return Err(TransferError::KeyTooLong {
                    key: key.clone(),
                    len: text.len(),
                    max: MAX_KEY_LEN as usize,
                });
            }
        }
        body.clear();
        body.push(TAG_ACTOR);
        for text in [key.namespace(), key.key()] {
            body.extend_from_slice(&(text.len() as u32).to_le_bytes());
            body.extend_from_slice(text.as_bytes());
        }
        body.extend_from_slice(&marks.epoch.to_le_bytes());
        body.extend_from_slice(&marks.floor.to_le_bytes());
        out.record(&body)?;
        stats.actors += 1;
        for row in store.read(&key, None, 0..=u64::MAX)? {
            body.clear();
            body.push(TAG_ROW);
            body.push(row.space.id());
            body.extend_from_slice(&row.id.to_le_bytes());
            body.extend_from_slice(&(row.bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(&row.bytes);
            out.record(&body)?;
            stats.rows += 1;
        }
    }
    let mut end = vec![TAG_END];
    end.extend_from_slice(&stats.actors.to_le_bytes());
    end.extend_from_slice(&stats.rows.to_le_bytes());
    out.put(&end)?;
    let whole = out.whole;
    out.put(&whole.to_le_bytes())?;
    out.w.flush().map_err(|source| TransferError::Io {
        offset: out.offset,
        source,
    })?;
    stats.bytes = out.offset;
    Ok(stats)
}

/// Reads a stream, keeping its offset, the checksum of everything read, and the current
/// record's bytes.
struct In<'r> {
    r: &'r mut dyn Read,
    offset: u64,
    whole: u32,
    record: Vec<u8>,
}

impl In<'_> {
    /// Reads exactly `n` bytes onto the current record.
    fn take(&mut self, n: usize, expected: &'static str) -> Result<(), TransferError> {
        let start = self.record.len();
        let mut got = 0;
        while got < n {
            // Grown a chunk at a time, so a stream that claims a large row and ends allocates
            // no more than it held.
            if self.record.len() == start + got {
                let chunk = (n - got).min(1 << 20);
                self.record.resize(start + got + chunk, 0);
            }
            match self.r.read(&mut self.record[start + got..]) {
                Ok(0) => {
                    return Err(TransferError::Truncated {
                        offset: self.offset + got as u64,
                        expected,
                    });
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TransferError::Io {
                        offset: self.offset + got as u64,
                        source,
                    });
                }
            }
        }
        self.whole = crc32c::crc32c_append(self.whole, &self.record[start..]);
        self.offset += n as u64;
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, TransferError> {
        self.take(1, what)?;
        Ok(self.record[self.record.len() - 1])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TransferError> {
        self.take(4, what)?;
        let b = &self.record[self.record.len() - 4..];
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, TransferError> {
        self.take(8, what)?;
        let b = &self.record[self.record.len() - 8..];
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Reads the record's checksum and compares it with its bytes.
    fn check(&mut self, start: u64, record: &dyn Fn() -> String) -> Result<(), TransferError> {
        let want = crc32c::crc32c(&self.record);
        let body_len = self.record.len();
        let found = self.u32("a record checksum")?;
        self.record.truncate(body_len);
        if found != want {
            return Err(TransferError::Corrupt {
                offset: start,
                record: record(),
                detail: format!("checksum {found:#010x}, the bytes sum to {want:#010x}"),
            });
        }
        Ok(())
    }
}

/// One actor of a stream: its key, marks and rows.
struct Entry {
    key: ActorKey,
    marks: Marks,
    rows: Vec<(Space, u64, Vec<u8>)>,
}

/// Refuses a finished actor that holds nothing (no row, both marks 0): no store exports one,
/// and importing it would store nothing, so the next export would differ.
fn empty_actor(entries: &[Entry], next: u64) -> Result<(), TransferError> {
    match entries.last() {
        Some(e) if e.rows.is_empty() && e.marks == Marks::default() => {
            Err(TransferError::Corrupt {
                offset: next,
                record: format!("actor `{}`", e.key),
                detail: "an actor with no row and no mark".to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// Reads and checks a whole stream.
fn parse(r: &mut dyn Read) -> Result<(Vec<Entry>, TransferStats), TransferError> {
    let mut input = In {
        r,
        offset: 0,
        whole: 0,
        record: Vec::new(),
    };
    // The magic, read byte by byte so a short foreign file is "not a stream", not "truncated".
    let mut magic = Vec::new();
    for _ in 0..MAGIC.len() {
        input.record.clear();
        match input.take(1, "the magic") {
            Ok(()) => magic.push(input.record[0]),
            Err(TransferError::Truncated { .. }) => break,
            Err(e) => return Err(e),
        }
        if !MAGIC.starts_with(&magic) {
            break;
        }
    }
    if magic != MAGIC {
        return Err(TransferError::NotAStream { found: magic });
    }
    input.record.clear();
    let version = input.u32("the stream version")?;
    if version != STREAM_VERSION {
        return Err(TransferError::UnsupportedVersion {
            found: version,
            supported: STREAM_VERSION,
        });
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut rows = 0u64;
    loop {
        let start = input.offset;
        input.record.clear();
        let tag = input.u8("a record tag (the stream has no end record)")?;
        let corrupt = |entries: &[Entry], detail: String| TransferError::Corrupt {
            offset: start,
            record: entries
                .last()
                .map_or("before the first actor".to_owned(), |e| {
                    format!("actor `{}`", e.key)
                }),
            detail,
        };
        match tag {
            TAG_ACTOR => {
                empty_actor(&entries, start)?;
                let mut texts = Vec::new();
                for what in ["a namespace", "a key"] {
                    let len = input.u32(what)?;
                    if len > MAX_KEY_LEN {
                        return Err(corrupt(&entries, format!("{what} of {len} bytes")));
                    }
                    let at = input.record.len();
                    input.take(len as usize, what)?;
                    texts.push(input.record[at..].to_vec());
                }
                let epoch = input.u64("an epoch")?;
                let floor = input.u64("a floor")?;
                let key_text = || {
                    format!(
                        "actor `{}/{}`",
                        String::from_utf8_lossy(&texts[0]),
                        String::from_utf8_lossy(&texts[1])
                    )
                };
                input.check(start, &key_text)?;
                let (Ok(ns), Ok(key)) = (
                    String::from_utf8(texts[0].clone()),
                    String::from_utf8(texts[1].clone()),
                ) else {
                    return Err(corrupt(&entries, "a key that is not UTF-8".to_owned()));
                };
                let key = ActorKey::new(ns, key);
                if let Some(last) = entries.last()
                    && last.key >= key
                {
                    return Err(corrupt(
                        &entries,
                        format!("actor `{key}` out of order after `{}`", last.key),
                    ));
                }
                entries.push(Entry {
                    key,
                    marks: Marks { epoch, floor },
                    rows: Vec::new(),
                });
            }
            TAG_ROW => {
                let space = Space::new(input.u8("a row's space")?);
                let id = input.u64("a row's id")?;
                let len = input.u32("a row's length")?;
                if len as usize > crate::store::MAX_ROW_LEN {
                    return Err(corrupt(&entries, format!("a row of {len} bytes")));
                }
                let at = input.record.len();
                input.take(len as usize, "a row's bytes")?;
                let bytes = input.record[at..].to_vec();
                let which = || match entries.last() {
                    Some(e) => format!("actor `{}`, row ({space}, {id})", e.key),
                    None => format!("row ({space}, {id}) before any actor"),
                };
                input.check(start, &which)?;
                if space == Space::SNAPSHOT && id != 0 {
                    return Err(corrupt(
                        &entries,
                        format!("a snapshot row with id {id}, not 0"),
                    ));
                }
                let Some(entry) = entries.last_mut() else {
                    return Err(corrupt(&entries, "a row before any actor".to_owned()));
                };
                if let Some((s, i, _)) = entry.rows.last()
                    && (*s, *i) >= (space, id)
                {
                    let detail = format!("row ({space}, {id}) out of order after ({s}, {i})");
                    return Err(corrupt(&entries, detail));
                }
                entry.rows.push((space, id, bytes));
                rows += 1;
            }
            TAG_END => {
                empty_actor(&entries, start)?;
                let actors = input.u64("the actor count")?;
                let counted = input.u64("the row count")?;
                let whole = input.whole;
                let found = input.u32("the stream checksum")?;
                if found != whole {
                    return Err(corrupt(
                        &entries,
                        format!("stream checksum {found:#010x}, the stream sums to {whole:#010x}"),
                    ));
                }
                if (actors, counted) != (entries.len() as u64, rows) {
                    return Err(corrupt(
                        &entries,
                        format!(
                            "the end record counts {actors} actors and {counted} rows; the \
                             stream holds {} and {rows}",
                            entries.len()
                        ),
                    ));
                }
                let mut extra = [0u8; 1];
                loop {
                    match input.r.read(&mut extra) {
                        Ok(0) => break,
                        Ok(_) => {
                            return Err(TransferError::Corrupt {
                                offset: input.offset,
                                record: "after the end record".to_owned(),
                                detail: "trailing bytes".to_owned(),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(source) => {
                            return Err(TransferError::Io {
                                offset: input.offset,
                                source,
                            });
                        }
                    }
                }
                let stats = TransferStats {
                    actors,
                    rows,
                    bytes: input.offset,
                };
                return Ok((entries, stats));
            }
            other => {
                return Err(corrupt(
                    &entries,
                    format!("unknown record tag {other:#04x}"),
                ));
            }
        }
    }
}

/// Reads an export stream from `input` and writes it into `store` in one commit. The whole
/// stream is read and checked first: if it is truncated or damaged, or the store is not empty
/// (with [`ImportMode::IntoEmpty`]), nothing is written.
///
/// Each imported key's epoch is raised to at least the exported one; with
/// [`ImportMode::Replace`], a key already in the store also takes a new epoch, as a delete
/// does, so an instance running on it is fenced.
pub fn import(
    store: &dyn Store,
    input: &mut dyn Read,
    mode: ImportMode,
) -> Result<TransferStats, TransferError> {
    let (entries, stats) = parse(input)?;
    let present = store.scan()?;
    if mode == ImportMode::IntoEmpty
        && let Some((first, _)) = present.first()
    {
        return Err(TransferError::NotEmpty {
            store: store.name().to_owned(),
            keys: present.len(),
            first: first.clone(),
        });
    }
    let current: std::collections::BTreeMap<&ActorKey, Marks> =
        present.iter().map(|(k, m)| (k, *m)).collect();
    let mut batch = Vec::with_capacity(entries.len());
    for entry in entries {
        let stored = current.get(&entry.key).copied().unwrap_or_default();
        let key = Arc::new(entry.key);
        let mut commit = ActorCommit::new(key.clone(), stored.epoch);
        if current.contains_key(&*key) {
            let mut spaces: Vec<Space> = store
                .read(&key, None, 0..=u64::MAX)?
                .into_iter()
                .map(|r| r.space)
                .collect();
            spaces.dedup();
            for space in spaces {
                commit = commit.clear(space);
            }
        }
        for (space, id, bytes) in entry.rows {
            commit = commit.put(space, id, bytes);
        }
        commit.raise = entry.marks;
        if current.contains_key(&*key) {
            // A new epoch, as a delete takes: an instance running on the key is fenced, its
            // next write refused rather than laid over the imported rows.
            let fence = crate::store::next_epoch(store.name(), &key, stored.epoch)?;
            commit.raise.epoch = commit.raise.epoch.max(fence);
        }
        batch.push(commit);
    }
    store.commit(&batch)?;
    Ok(stats)
}

/// Copies every row and mark of `from` into `to` (which must hold nothing), through an export
/// stream in memory: the one-liner to move a store between backends offline.
pub fn copy(from: &dyn Store, to: &dyn Store) -> Result<TransferStats, TransferError> {
    let mut stream = Vec::new();
    export(from, &mut stream)?;
    import(to, &mut stream.as_slice(), ImportMode::IntoEmpty)
}
