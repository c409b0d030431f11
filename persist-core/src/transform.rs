//! Record transforms at rest: compression and authenticated encryption, each opt-in, applied
//! by the runtime to every record it writes, so every backend gets them.
//!
//! - **Compression** (LZ4 block format, [`lz4_flex`], pure Rust): a payload larger than the
//!   threshold is compressed, and kept compressed only if that made it smaller. LZ4 because a
//!   record is written on every commit: it compresses and decompresses at memory speed, so it
//!   costs little per message, where a stronger codec (zstd, deflate) would trade a message
//!   cycle's time for bytes an SSD rarely misses; and because pure Rust keeps the two README
//!   commands free of a C toolchain.
//! - **Encryption** (XChaCha20-Poly1305, RustCrypto's [`chacha20poly1305`]): the payload is
//!   sealed with the keyring's current key; the key id is stored in the record so older
//!   records stay readable with older keys after a rotation. The associated data binds a record
//!   to its actor key, its kind, its place (sequence number) and its header: a record copied
//!   under another key or another sequence, or with any header byte changed, does not decrypt.
//!   Nonces are 24 bytes: 16 random bytes drawn when the keyring is made and an 8-byte counter,
//!   so no two records sealed by one keyring share a nonce, and two keyrings share one only if
//!   their 128-bit random prefixes collide.
//!
//! Records written without a transform stay in envelope format 1, byte for byte as before;
//! transformed records use format 2 (see `docs/durability.md`). A store may hold both: turning
//! a transform on or off never makes an old record unreadable, it changes how the next writes
//! are stored. (Encrypting does not re-encrypt what was written before; an unencrypted record
//! stays readable after encryption is turned on.)

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The length of an encryption key, in bytes.
pub const KEY_LEN: usize = 32;
/// The length of a nonce, in bytes.
pub(crate) const NONCE_LEN: usize = 24;

/// Which transforms the runtime applies to the records it writes, and the keys it reads with.
///
/// Set on a [`crate::Storage`] with [`crate::StorageConfig::transforms`]; every actor on that
/// storage uses it. The default applies none.
#[derive(Clone, Debug, Default)]
pub struct Transforms {
    pub(crate) compress_above: Option<usize>,
    pub(crate) keys: Option<Arc<Keyring>>,
    pub(crate) require_encryption: bool,
}

impl Transforms {
    /// No transform: records are written in envelope format 1.
    pub fn none() -> Self {
        Self::default()
    }

    /// Compresses every payload larger than `bytes` (when compression makes it smaller).
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// Encrypts every record with `keys`' current key, and reads with any of its keys.
    pub fn encrypt(mut self, keys: Keyring) -> Self {
        self.keys = Some(Arc::new(keys));
        self
    }

    /// Like [`Transforms::encrypt`], and refuses to read a record that is not encrypted
    /// ([`crate::DecodeReason::NotEncrypted`]), so a record planted in the store without the
    /// key cannot pass for one of ours. Use it once every record was written encrypted
    /// (with `encrypt` alone, records written before encryption was turned on stay readable).
    pub fn encrypt_only(mut self, keys: Keyring) -> Self {
        self.keys = Some(Arc::new(keys));
        self.require_encryption = true;
        self
    }

    /// Whether no transform is applied on write.
    pub(crate) fn is_plain(&self) -> bool {
        self.compress_above.is_none() && self.keys.is_none()
    }
}

/// Why a key was refused. Nothing is encrypted with a refused key.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The key is not [`KEY_LEN`] bytes.
    #[error("encryption key {key_id} is {len} bytes; XChaCha20-Poly1305 keys are {expected}")]
    WrongLength {
        /// The key's id.
        key_id: u32,
        /// Its length.
        len: usize,
        /// The length a key must have.
        expected: usize,
    },
    /// Two keys of the keyring have the same id.
    #[error("the keyring already holds a key with id {key_id}")]
    DuplicateId {
        /// The id given twice.
        key_id: u32,
    },
    /// The system's random source failed, so no nonce prefix could be drawn.
    #[error("the system random source failed: {detail}")]
    NoRandomness {
        /// What it said.
        detail: String,
    },
}

/// The encryption keys, by id: one current key that seals every new record, and older keys
/// kept to read what they sealed.
///
/// Its `Debug` shows the key ids only, never a key.
pub struct Keyring {
    current: u32,
    ciphers: BTreeMap<u32, XChaCha20Poly1305>,
    prefix: [u8; 16],
    counter: AtomicU64,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &self.ciphers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn cipher(key_id: u32, key: &[u8]) -> Result<XChaCha20Poly1305, KeyError> {
    if key.len() != KEY_LEN {
        return Err(KeyError::WrongLength {
            key_id,
            len: key.len(),
            expected: KEY_LEN,
        });
    }
    XChaCha20Poly1305::new_from_slice(key).map_err(|_| KeyError::WrongLength {
        key_id,
        len: key.len(),
        expected: KEY_LEN,
    })
}

impl Keyring {
    /// A keyring whose current key (sealing every new record) is `key`, under `key_id`.
    pub fn new(key_id: u32, key: &[u8]) -> Result<Keyring, KeyError> {
        let mut prefix = [0u8; 16];
        getrandom::fill(&mut prefix).map_err(|e| KeyError::NoRandomness {
            detail: e.to_string(),
        })?;
        Ok(Keyring {
            current: key_id,
            ciphers: BTreeMap::from([(key_id, cipher(key_id, key)?)]),
            prefix,
            counter: AtomicU64::new(0),
        })
    }

    /// Adds an older key, to read the records it sealed (after a rotation).
    pub fn with_old_key(mut self, key_id: u32, key: &[u8]) -> Result<Keyring, KeyError> {
        if self.ciphers.contains_key(&key_id) {
            return Err(KeyError::DuplicateId { key_id });
        }
        self.ciphers.insert(key_id, cipher(key_id, key)?);
        Ok(self)
    }

    /// The id of the key that seals new records.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// A nonce no other record sealed by this keyring has.
    fn nonce(&self) -> [u8; NONCE_LEN] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..16].copy_from_slice(&self.prefix);
        nonce[16..].copy_from_slice(&n.to_le_bytes());
        nonce
    }

    /// The current key's id and a fresh nonce, for the next record.
    pub(crate) fn next_nonce(&self) -> (u32, [u8; NONCE_LEN]) {
        (self.current, self.nonce())
    }

    /// Seals `plain` with the current key under `nonce` (from [`Keyring::next_nonce`]).
    pub(crate) fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        self.ciphers[&self.current]
            .encrypt(XNonce::from_slice(nonce), Payload { msg: plain, aad })
            // Encryption fails only for inputs over 256 GiB; payloads are capped far below.
            .expect("a capped payload always encrypts")
    }

    /// Opens `sealed`; `None` for an unknown key id is told apart by [`Keyring::has`].
    pub(crate) fn open(
        &self,
        key_id: u32,
        nonce: &[u8],
        aad: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        self.ciphers
            .get(&key_id)?
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }

    /// Whether the keyring holds key `key_id`.
    pub(crate) fn has(&self, key_id: u32) -> bool {
        self.ciphers.contains_key(&key_id)
    }
}

/// The tag XChaCha20-Poly1305 appends.
pub(crate) const TAG_LEN: usize = 16;
