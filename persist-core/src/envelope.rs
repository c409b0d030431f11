//! The record envelope every stored record is wrapped in.
//!
//! ```text
//! offset size field
//!      0    2 magic "RP"
//!      2    1 format version (1)
//!      3    1 kind (1 snapshot, 2 operation, 3 dead letter, 4 operation with failed attempts,
//!                   5 dead letter with failed attempts)
//!      4    4 schema version, little endian
//!      8    8 epoch of the writer, little endian
//!     16    8 sequence number, little endian
//!     24    8 shape fingerprint of the payload's type (0: unknown), little endian
//!     32    4 payload length, little endian
//!     36    4 CRC-32C of bytes 0..36 and the payload, little endian
//!     40    n postcard payload
//! ```
//!
//! Format 2 is format 1 with record transforms (compression, encryption). It is written only
//! for a record a transform was applied to; a record without one stays format 1. Bytes 0..40
//! are laid out as above, except that the length at 32 is the body's (after the transforms),
//! and the checksum covers bytes 0..36 and everything from 40 on. Then:
//!
//! ```text
//!     40    1 transforms: bit 0 compressed (LZ4 block), bit 1 encrypted (XChaCha20-Poly1305);
//!             any other bit set is a transform this build does not know
//!      +    4 (compressed) the payload's length before compression, little endian
//!      +    4 (encrypted) the id of the key that sealed it, little endian
//!      +   24 (encrypted) the nonce
//!      +    n the body: the payload, compressed, then sealed (ciphertext and 16-byte tag)
//! ```
//!
//! The encryption's associated data is the actor key (namespace and key, each with its
//! length), the record's place (its row id: the sequence number of an operation, 0 for a
//! snapshot), bytes 0..36 and the transform fields: a record moved to another actor or another
//! sequence, or with any header byte changed, does not decrypt.

use std::borrow::Cow;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DecodeReason;
use crate::key::ActorKey;
use crate::transform::{NONCE_LEN, TAG_LEN, Transforms};

/// Size of the envelope header in bytes.
pub(crate) const HEADER_LEN: usize = 40;
/// The envelope format this build writes and reads.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// No value (a state, an operation) is encoded larger than this.
pub(crate) const MAX_PAYLOAD_LEN: u64 = 64 * 1024 * 1024;
/// No stored payload is larger than this: a value at the cap, and what kinds 4, 5 and 11 put
/// before an operation (a failed-attempt count, at most a 5-byte varint, and for kind 11 a
/// retry instant, at most a 10-byte varint). A larger declared length is damage.
pub(crate) const MAX_STORED_PAYLOAD: u64 = MAX_PAYLOAD_LEN + 15;
const MAGIC: [u8; 2] = *b"RP";
/// The envelope format of a transformed record.
pub(crate) const FORMAT_V2: u8 = 2;
const COMPRESSED: u8 = 0x01;
const ENCRYPTED: u8 = 0x02;

/// Where a record is stored: its actor and its row id. Encryption binds a record to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place<'a> {
    pub(crate) key: &'a ActorKey,
    pub(crate) id: u64,
}

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Snapshot = 1,
    Op = 2,
    /// An operation moved to the dead letters after too many attempts: kept, not performed.
    DeadOp = 3,
    /// A pending operation whose performs failed before: the payload is the failed-attempt
    /// count (a postcard varint) followed by the operation's postcard bytes.
    RetriedOp = 4,
    /// A dead letter with its failed-attempt count, laid out as [`Kind::RetriedOp`].
    CountedDeadOp = 5,
    /// A message to another persistent actor, kept until it is acknowledged.
    Outgoing = 6,
    /// The sender's side of a channel: its destination and last sequence number.
    Channel = 7,
    /// The receiver's side of a channel: its sender and the highest sequence applied.
    Inbox = 8,
    /// The stored reply to an idempotent request.
    Request = 9,
    /// A durable timer: its name, when it is due, and its payload.
    Timer = 10,
    /// A pending operation waiting for a retry: the payload is the failed-attempt count and
    /// the instant the retry is due (milliseconds since the Unix epoch), as postcard varints,
    /// then the operation's postcard bytes.
    WaitingOp = 11,
    /// An event of an event-sourced actor's journal; the header's sequence is the event's.
    Event = 12,
    /// The head of an event-sourced actor's journal (its snapshot row): the last event's
    /// sequence number and the one its state snapshot covers; the header's sequence is the
    /// next operation id, as a snapshot's.
    JournalHead = 13,
    /// One entry of a durable map: the map's name, then the key and the value.
    MapEntry = 14,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshot",
            Kind::Op => "operation",
            Kind::DeadOp => "dead-letter operation",
            Kind::RetriedOp => "retried operation",
            Kind::CountedDeadOp => "dead-letter operation",
            Kind::Outgoing => "outgoing message",
            Kind::Channel => "channel",
            Kind::Inbox => "inbox entry",
            Kind::Request => "request reply",
            Kind::Timer => "timer",
            Kind::WaitingOp => "operation waiting for a retry",
            Kind::Event => "event",
            Kind::JournalHead => "journal head",
            Kind::MapEntry => "map entry",
        }
    }
}

/// The decoded header fields the runtime uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) schema: u32,
    pub(crate) sequence: u64,
    pub(crate) fingerprint: u64,
}

/// Encodes `value` into a fresh envelope.
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(
    kind: Kind,
    schema: u32,
    epoch: u64,
    sequence: u64,
    value: &T,
) -> Result<Vec<u8>, postcard::Error> {
    let head = Header {
        schema,
        sequence,
        fingerprint: 0,
    };
    Ok(wrap(kind, head, epoch, &postcard::to_stdvec(value)?))
}

/// Encodes `value` as a payload, refusing one over the cap.
pub(crate) fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let bytes = postcard::to_stdvec(value)?;
    if bytes.len() as u64 > MAX_PAYLOAD_LEN {
        return Err(postcard::Error::SerializeBufferFull);
    }
    Ok(bytes)
}

/// Wraps an encoded payload (at most [`MAX_PAYLOAD_LEN`] bytes) in an envelope.
pub(crate) fn wrap(kind: Kind, head: Header, epoch: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    header_fields(&mut out, FORMAT_VERSION, kind, head, epoch, payload.len());
    let crc = checksum(&out, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes bytes 0..36 of an envelope.
fn header_fields(
    out: &mut Vec<u8>,
    format: u8,
    kind: Kind,
    head: Header,
    epoch: u64,
    body_len: usize,
) {
    out.extend_from_slice(&MAGIC);
    out.push(format);
    out.push(kind as u8);
    out.extend_from_slice(&head.schema.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&head.sequence.to_le_bytes());
    out.extend_from_slice(&head.fingerprint.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
}

/// The associated data of an encrypted record: its place, header and transform fields.
fn associated_data(place: Place<'_>, head: &[u8], fields: &[u8]) -> Vec<u8> {
    let (ns, key) = (place.key.namespace(), place.key.key());
    let mut aad = Vec::with_capacity(16 + ns.len() + key.len() + head.len() + fields.len());
    aad.extend_from_slice(&(ns.len() as u32).to_le_bytes());
    aad.extend_from_slice(ns.as_bytes());
    aad.extend_from_slice(&(key.len() as u32).to_le_bytes());
    aad.extend_from_slice(key.as_bytes());
    aad.extend_from_slice(&place.id.to_le_bytes());
    aad.extend_from_slice(head);
    aad.extend_from_slice(fields);
    aad
}

/// Wraps an encoded payload in an envelope, applying `transforms`: format 1 when none
/// applies (no transform configured, or a payload under the threshold or incompressible and
/// no encryption), format 2 otherwise.
pub(crate) fn seal(
    kind: Kind,
    head: Header,
    epoch: u64,
    payload: &[u8],
    transforms: &Transforms,
    place: Place<'_>,
) -> Vec<u8> {
    if transforms.is_plain() {
        return wrap(kind, head, epoch, payload);
    }
    let mut flags = 0;
    let mut body = Cow::Borrowed(payload);
    if let Some(limit) = transforms.compress_above
        && payload.len() > limit
    {
        let packed = lz4_flex::block::compress(payload);
        if packed.len() < payload.len() {
            flags |= COMPRESSED;
            body = Cow::Owned(packed);
        }
    }
    let keys = transforms.keys.as_deref();
    if keys.is_some() {
        flags |= ENCRYPTED;
    }
    if flags == 0 {
        return wrap(kind, head, epoch, payload);
    }
    let body_len = body.len() + if keys.is_some() { TAG_LEN } else { 0 };
    let mut out = Vec::with_capacity(HEADER_LEN + 1 + 4 + 4 + NONCE_LEN + body_len);
    header_fields(&mut out, FORMAT_V2, kind, head, epoch, body_len);
    out.extend_from_slice(&[0; 4]); // the checksum, filled in below
    out.push(flags);
    if flags & COMPRESSED != 0 {
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    }
    if let Some(keys) = keys {
        let (key_id, nonce) = keys.next_nonce();
        out.extend_from_slice(&key_id.to_le_bytes());
        out.extend_from_slice(&nonce);
        let aad = associated_data(place, &out[..36], &out[HEADER_LEN..]);
        let sealed = keys.seal(&nonce, &aad, &body);
        body = Cow::Owned(sealed);
    }
    debug_assert_eq!(body.len(), body_len);
    out.extend_from_slice(&body);
    let crc = checksum(&out[..36], &out[HEADER_LEN..]);
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    out
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), payload)
}

/// A checked envelope: its checksum and lengths hold; its body may still be transformed.
#[derive(Debug)]
pub(crate) struct Verified<'a> {
    pub(crate) kind: Kind,
    pub(crate) header: Header,
    /// Bytes 0..36.
    head: &'a [u8],
    /// The transform fields (format 2), empty for format 1.
    fields: &'a [u8],
    body: &'a [u8],
}

/// Checks the envelope and returns its header and payload bytes, undoing its transforms.
///
/// `schema` is the version of the running code: a record from a newer schema is refused.
/// Each envelope format has its own reader; a format this build does not know is refused.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    kind: Kind,
    schema: u32,
    transforms: &Transforms,
    place: Place<'_>,
) -> Result<(Header, Cow<'a, [u8]>), DecodeReason> {
    let (found, header, payload) = open_any(bytes, schema, transforms, place)?;
    if found != kind {
        return Err(DecodeReason::WrongKind {
            expected: kind.name(),
            found: found as u8,
        });
    }
    Ok((header, payload))
}

/// Like [`open`], for a record that may be of any known kind.
pub(crate) fn open_any<'a>(
    bytes: &'a [u8],
    schema: u32,
    transforms: &Transforms,
    place: Place<'_>,
) -> Result<(Kind, Header, Cow<'a, [u8]>), DecodeReason> {
    let v = verify(bytes, schema)?;
    let payload = untransform(&v, transforms, place)?;
    Ok((v.kind, v.header, payload))
}

impl Verified<'_> {
    /// The envelope format (1 or 2).
    pub(crate) fn format(&self) -> u8 {
        self.head[2]
    }

    /// The epoch of the instance that wrote the record.
    pub(crate) fn epoch(&self) -> u64 {
        u64::from_le_bytes(self.head[8..16].try_into().expect("8 bytes"))
    }

    /// Whether the body is compressed.
    pub(crate) fn compressed(&self) -> bool {
        self.fields.first().is_some_and(|f| f & COMPRESSED != 0)
    }

    /// The id of the key that sealed the body, if it is encrypted.
    pub(crate) fn key_id(&self) -> Option<u32> {
        let flags = *self.fields.first()?;
        if flags & ENCRYPTED == 0 {
            return None;
        }
        let at = if flags & COMPRESSED != 0 { 5 } else { 1 };
        let id = self.fields.get(at..at + 4)?;
        Some(u32::from_le_bytes(id.try_into().ok()?))
    }

    /// The stored body's length (after the transforms).
    pub(crate) fn body_len(&self) -> usize {
        self.body.len()
    }

    /// The payload, its transforms undone.
    pub(crate) fn payload(
        &self,
        transforms: &Transforms,
        place: Place<'_>,
    ) -> Result<Cow<'_, [u8]>, DecodeReason> {
        untransform(self, transforms, place)
    }
}

/// Undoes a verified record's transforms.
fn untransform<'a>(
    v: &Verified<'a>,
    transforms: &Transforms,
    place: Place<'_>,
) -> Result<Cow<'a, [u8]>, DecodeReason> {
    let flags = v.fields.first().copied().unwrap_or(0);
    if transforms.require_encryption && flags & ENCRYPTED == 0 {
        return Err(DecodeReason::NotEncrypted);
    }
    if v.fields.is_empty() {
        return Ok(Cow::Borrowed(v.body));
    }
    let mut at = 1;
    let mut raw_len = None;
    if flags & COMPRESSED != 0 {
        raw_len = Some(u32::from_le_bytes(
            v.fields[at..at + 4].try_into().expect("4 bytes"),
        ));
        at += 4;
    }
    let mut body = Cow::Borrowed(v.body);
    if flags & ENCRYPTED != 0 {
        let key_id = u32::from_le_bytes(v.fields[at..at + 4].try_into().expect("4 bytes"));
        let nonce = &v.fields[at + 4..at + 4 + NONCE_LEN];
        let keys = match transforms.keys.as_deref() {
            Some(keys) if keys.has(key_id) => keys,
            _ => return Err(DecodeReason::MissingKey { key_id }),
        };
        let aad = associated_data(place, v.head, v.fields);
        let plain = keys
            .open(key_id, nonce, &aad, v.body)
            .ok_or(DecodeReason::Decrypt { key_id })?;
        body = Cow::Owned(plain);
    }
    if let Some(raw_len) = raw_len {
        if u64::from(raw_len) > MAX_STORED_PAYLOAD {
            return Err(DecodeReason::Malformed {
                detail: format!(
                    "a payload of {raw_len} bytes once decompressed, over the cap of \
                     {MAX_STORED_PAYLOAD}"
                ),
            });
        }
        // LZ4 expands at most 255 times: a larger claim is refused before it is allocated.
        if u64::from(raw_len) > (body.len() as u64).saturating_mul(255) + 64 {
            return Err(DecodeReason::Decompress {
                detail: format!("{} compressed bytes cannot hold {raw_len}", body.len()),
            });
        }
        let mut out = vec![0u8; raw_len as usize];
        match lz4_flex::block::decompress_into(&body, &mut out) {
            Ok(n) if n == out.len() => body = Cow::Owned(out),
            Ok(n) => {
                return Err(DecodeReason::Decompress {
                    detail: format!("{n} bytes, where the record states {raw_len}"),
                });
            }
            Err(e) => {
                return Err(DecodeReason::Decompress {
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(body)
}

/// Checks an envelope's checksum, lengths, kind and schema, without undoing its transforms:
/// enough to trust its header.
pub(crate) fn verify(bytes: &[u8], schema: u32) -> Result<Verified<'_>, DecodeReason> {
    if bytes.len() < 3 {
        return Err(DecodeReason::TooShort {
            len: bytes.len(),
            header: HEADER_LEN,
        });
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeReason::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    let (found_kind, header, fields, body) = match bytes[2] {
        1 => {
            let (kind, header, payload) = open_v1(bytes)?;
            (kind, header, &bytes[..0], payload)
        }
        FORMAT_V2 => open_v2(bytes)?,
        found => {
            return Err(DecodeReason::UnknownFormat {
                found,
                supported: FORMAT_V2,
            });
        }
    };
    // Kind and schema are checked after the checksum, so that damage is reported as damage.
    let kind = match found_kind {
        1 => Kind::Snapshot,
        2 => Kind::Op,
        3 => Kind::DeadOp,
        4 => Kind::RetriedOp,
        5 => Kind::CountedDeadOp,
        6 => Kind::Outgoing,
        7 => Kind::Channel,
        8 => Kind::Inbox,
        9 => Kind::Request,
        10 => Kind::Timer,
        11 => Kind::WaitingOp,
        12 => Kind::Event,
        13 => Kind::JournalHead,
        14 => Kind::MapEntry,
        found => {
            return Err(DecodeReason::WrongKind {
                expected: "known",
                found,
            });
        }
    };
    if header.schema > schema {
        return Err(DecodeReason::UnknownSchema {
            found: header.schema,
            expected: schema,
        });
    }
    Ok(Verified {
        kind,
        header,
        head: &bytes[..36],
        fields,
        body,
    })
}

/// Reads format 2 (format 1 with transform fields): kind, header, fields and body.
/// A format 2 record's kind byte, header, transform fields and body.
type V2<'a> = (u8, Header, &'a [u8], &'a [u8]);

fn open_v2(bytes: &[u8]) -> Result<V2<'_>, DecodeReason> {
    if bytes.len() <= HEADER_LEN {
        return Err(DecodeReason::TooShort {
            len: bytes.len(),
            header: HEADER_LEN + 1,
        });
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let stored = u32_at(36);
    let computed = checksum(&bytes[..36], &bytes[HEADER_LEN..]);
    if stored != computed {
        return Err(DecodeReason::Checksum { stored, computed });
    }
    let flags = bytes[HEADER_LEN];
    if flags & !(COMPRESSED | ENCRYPTED) != 0 || flags == 0 {
        return Err(DecodeReason::UnknownTransform { flags });
    }
    let mut fields_len = 1;
    if flags & COMPRESSED != 0 {
        fields_len += 4;
    }
    if flags & ENCRYPTED != 0 {
        fields_len += 4 + NONCE_LEN;
    }
    // The checksum holds: what follows is not damage but a record this build cannot read.
    let malformed = |detail: String| Err(DecodeReason::Malformed { detail });
    if bytes.len() < HEADER_LEN + fields_len {
        return malformed(format!(
            "{} bytes, too short for transform fields of {fields_len} bytes",
            bytes.len()
        ));
    }
    let declared = u64::from(u32_at(32));
    let max = MAX_STORED_PAYLOAD + TAG_LEN as u64;
    if declared > max {
        return malformed(format!("a body of {declared} bytes, over the cap of {max}"));
    }
    let body = &bytes[HEADER_LEN + fields_len..];
    if declared != body.len() as u64 {
        return malformed(format!(
            "a body stated as {declared} bytes, {} present",
            body.len()
        ));
    }
    let header = Header {
        schema: u32_at(4),
        sequence: u64_at(16),
        fingerprint: u64_at(24),
    };
    Ok((
        bytes[3],
        header,
        &bytes[HEADER_LEN..HEADER_LEN + fields_len],
        body,
    ))
}

/// Reads format 1 (the layout at the top of this file): kind, header and payload.
fn open_v1(bytes: &[u8]) -> Result<(u8, Header, &[u8]), DecodeReason> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeReason::TooShort {
            len: bytes.len(),
            header: HEADER_LEN,
        });
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let declared = u64::from(u32_at(32));
    if declared > MAX_STORED_PAYLOAD {
        return Err(DecodeReason::TooLarge {
            len: declared,
            max: MAX_STORED_PAYLOAD,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    if declared != payload.len() as u64 {
        return Err(DecodeReason::LengthMismatch {
            declared,
            actual: payload.len() as u64,
        });
    }
    let stored = u32_at(36);
    let computed = checksum(&bytes[..36], payload);
    if stored != computed {
        return Err(DecodeReason::Checksum { stored, computed });
    }
    let header = Header {
        schema: u32_at(4),
        sequence: u64_at(16),
        fingerprint: u64_at(24),
    };
    Ok((bytes[3], header, payload))
}

/// The sequence field of an envelope whose checksum may not hold, for a caller that may only
/// use it to raise a lower bound: damage can make it anything, so it is capped at 2^62,
/// far above any real sequence and far below overflow.
pub(crate) fn unverified_sequence(bytes: &[u8]) -> Option<u64> {
    let field = bytes.get(16..24)?;
    let seq = u64::from_le_bytes(field.try_into().ok()?);
    Some(seq.min(1 << 62))
}

/// Splits the payload of a [`Kind::RetriedOp`] record into its failed-attempt count and the
/// operation's bytes.
pub(crate) fn split_attempts(payload: &[u8]) -> Result<(u32, &[u8]), DecodeReason> {
    postcard::take_from_bytes::<u32>(payload).map_err(|source| DecodeReason::Payload {
        type_name: "attempt count",
        source,
    })
}

/// The payload of a [`Kind::RetriedOp`] record: `attempts`, then the operation's bytes.
pub(crate) fn join_attempts(attempts: u32, op: &[u8]) -> Vec<u8> {
    let mut out = postcard::to_stdvec(&attempts).expect("a u32 always encodes");
    out.extend_from_slice(op);
    out
}

/// The payload of a [`Kind::WaitingOp`] record: `attempts`, the instant `due` (ms since the
/// Unix epoch), then the operation's bytes.
pub(crate) fn join_waiting(attempts: u32, due: u64, op: &[u8]) -> Vec<u8> {
    let mut out = postcard::to_stdvec(&(attempts, due)).expect("two integers always encode");
    out.extend_from_slice(op);
    out
}

/// Splits the payload of a [`Kind::WaitingOp`] record into its failed-attempt count, the
/// instant its retry is due, and the operation's bytes.
pub(crate) fn split_waiting(payload: &[u8]) -> Result<(u32, u64, &[u8]), DecodeReason> {
    postcard::take_from_bytes::<(u32, u64)>(payload)
        .map(|((attempts, due), rest)| (attempts, due, rest))
        .map_err(|source| DecodeReason::Payload {
            type_name: "attempt count and retry instant",
            source,
        })
}

/// Decodes a payload as exactly one `T`, refusing leftover bytes.
pub(crate) fn payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeReason> {
    let type_name = std::any::type_name::<T>();
    let (value, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|source| DecodeReason::Payload { type_name, source })?;
    if !rest.is_empty() {
        return Err(DecodeReason::TrailingBytes {
            type_name,
            count: rest.len(),
        });
    }
    Ok(value)
}

/// Opens an envelope and decodes its payload as `T`.
#[cfg(test)]
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    kind: Kind,
    schema: u32,
) -> Result<(Header, T), DecodeReason> {
    let key = ActorKey::new("t", "t");
    let place = Place { key: &key, id: 0 };
    let (header, body) = open(bytes, kind, schema, &Transforms::none(), place)?;
    Ok((header, payload(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Two {
        a: u32,
        b: String,
    }

    fn sample() -> Vec<u8> {
        let v = Two {
            a: 7,
            b: "seven".into(),
        };
        encode(Kind::Snapshot, 1, 3, 9, &v).unwrap()
    }

    #[test]
    fn round_trip_keeps_value_and_header() {
        let (h, v): (Header, Two) = decode(&sample(), Kind::Snapshot, 1).unwrap();
        assert_eq!(
            h,
            Header {
                schema: 1,
                sequence: 9,
                fingerprint: 0
            }
        );
        assert_eq!(v.b, "seven");
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let good = sample();
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                decode::<Two>(&bad, Kind::Snapshot, 1).is_err(),
                "flip {i} accepted"
            );
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let good = sample();
        for n in 0..good.len() {
            assert!(
                decode::<Two>(&good[..n], Kind::Snapshot, 1).is_err(),
                "cut at {n}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode::<Two>(&long, Kind::Snapshot, 1),
            Err(DecodeReason::LengthMismatch { .. })
        ));
    }

    #[test]
    fn newer_schema_and_format_and_kind_are_typed_errors() {
        let v = encode(Kind::Snapshot, 2, 0, 0, &5u8).unwrap();
        assert!(matches!(
            decode::<u8>(&v, Kind::Snapshot, 1),
            Err(DecodeReason::UnknownSchema {
                found: 2,
                expected: 1
            })
        ));
        assert!(matches!(
            decode::<u8>(&v, Kind::Op, 2),
            Err(DecodeReason::WrongKind { .. })
        ));
        let mut f = v.clone();
        f[2] = 9;
        assert!(matches!(
            decode::<u8>(&f, Kind::Snapshot, 2),
            Err(DecodeReason::UnknownFormat { found: 9, .. })
        ));
    }

    #[test]
    fn another_type_with_leftover_bytes_is_refused() {
        let v = encode(
            Kind::Op,
            1,
            0,
            0,
            &Two {
                a: 1,
                b: "xy".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            decode::<u32>(&v, Kind::Op, 1),
            Err(DecodeReason::TrailingBytes { .. })
        ));
    }
}
