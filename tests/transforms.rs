//! Compression and encryption at rest, through the runtime: what is stored, what comes back,
//! and the typed error of every way an encrypted record can be wrong.

#[macro_use]
mod common;

use common::decode_error;
use ractor::{Actor, ActorRef, RpcReplyPort, call};
use ractor_persist::{
    ActorCommit, ActorKey, DecodeReason, KeyError, Keyring, MemoryStore, Outcome, Pending,
    Persistent, PersistentActor, Space, Start, Storage, StorageConfig, Store, Transforms, Tx,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Persistent)]
#[persistent(name = "notebook")]
struct Notebook;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Page {
    text: String,
    blob: Vec<u8>,
}

enum NoteMsg {
    Write(String, Vec<u8>, RpcReplyPort<()>),
    Read(RpcReplyPort<Page>),
    /// Pushes an operation kept until confirmed.
    Note(String, RpcReplyPort<()>),
    Pending(RpcReplyPort<Vec<(u64, String)>>),
}

impl PersistentActor for Notebook {
    type Msg = NoteMsg;
    type State = Page;
    type Op = String;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Page, ractor::ActorProcessingErr> {
        Ok(Page::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: NoteMsg,
        page: &mut Page,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            NoteMsg::Write(text, blob, reply) => {
                *page = Page { text, blob };
                tx.reply(reply, ());
            }
            NoteMsg::Read(reply) => tx.reply(reply, page.clone()),
            NoteMsg::Note(text, reply) => {
                tx.push(text)?;
                tx.reply(reply, ());
            }
            NoteMsg::Pending(reply) => {
                let ops = tx
                    .pending()
                    .map(|p| (p.id().seq(), p.op().clone()))
                    .collect();
                tx.reply(reply, ops);
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        _: &Pending<String>,
        _: &Page,
    ) -> Result<Outcome, ractor::ActorProcessingErr> {
        Ok(Outcome::KeepUntilConfirmed)
    }
}

const SECRET: &str = "the-secret-marker";

fn key1() -> Vec<u8> {
    (0..32).collect()
}

fn key2() -> Vec<u8> {
    (100..132).collect()
}

fn with(store: &MemoryStore, transforms: Transforms) -> Storage {
    Storage::with_config(store.clone(), StorageConfig::with_transforms(transforms))
}

async fn spawn(storage: &Storage, key: &str) -> ActorRef<NoteMsg> {
    let (r, _) = Actor::spawn(None, Notebook, Start::new(storage, key, ()))
        .await
        .expect("spawn the notebook");
    r
}

fn nb(key: &str) -> ActorKey {
    ActorKey::new("notebook", key)
}

/// Writes a page (and, with `notes`, pending operations) under `transforms`; stops.
async fn write(
    store: &MemoryStore,
    transforms: Transforms,
    key: &str,
    page: &Page,
    notes: &[&str],
) {
    let storage = with(store, transforms);
    let a = spawn(&storage, key).await;
    call!(a, NoteMsg::Write, page.text.clone(), page.blob.clone()).unwrap();
    for n in notes {
        call!(a, NoteMsg::Note, n.to_string()).unwrap();
    }
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

/// Reads the page back under `transforms`, or the decode error.
async fn read(
    store: &MemoryStore,
    transforms: Transforms,
    key: &str,
) -> Result<(Page, Vec<(u64, String)>), DecodeReason> {
    let storage = with(store, transforms);
    let spawned = Actor::spawn(None, Notebook, Start::new(&storage, key, ())).await;
    let result = match spawned {
        Ok((a, _)) => {
            let page = call!(a, NoteMsg::Read).unwrap();
            let pending = call!(a, NoteMsg::Pending).unwrap();
            a.stop_and_wait(None, None).await.unwrap();
            Ok((page, pending))
        }
        Err(e) => Err(decode_error(e).reason),
    };
    storage.close().await.unwrap();
    result
}

fn page(text: &str, blob: Vec<u8>) -> Page {
    Page {
        text: text.to_owned(),
        blob,
    }
}

/// Bytes no compressor shrinks (xorshift noise).
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn encrypted(keys: Keyring) -> Transforms {
    Transforms::none().encrypt(keys)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// CRC-32C (Castagnoli), bit by bit: to re-seal a record's checksum after changing a byte,
/// as someone who tampers on purpose would.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn fix_checksum(record: &mut [u8]) {
    let crc = crc32c(&[&record[..36], &record[40..]].concat());
    record[36..40].copy_from_slice(&crc.to_le_bytes());
}

fn put(store: &MemoryStore, key: &ActorKey, space: Space, id: u64, bytes: Vec<u8>) {
    let epoch = store.open_actor(key, &[]).unwrap().epoch;
    store
        .commit(&[ActorCommit::new(key.clone(), epoch).put(space, id, bytes)])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressible_state_is_stored_compressed_and_an_incompressible_one_plain() {
    let store = MemoryStore::new();
    let compress = || Transforms::none().compress_above(256);
    let big = page(&"all work and no play ".repeat(500), vec![0; 20_000]);
    write(&store, compress(), "big", &big, &[]).await;
    let stored = store.snapshot(&nb("big")).unwrap();
    assert_eq!((stored[2], stored[40]), (2, 0x01), "format 2, compressed");
    assert!(
        stored.len() < 2_000,
        "{} bytes stored for a ~30 KB state",
        stored.len()
    );
    assert_eq!(read(&store, compress(), "big").await.unwrap().0, big);
    // Reading needs no setting: the record says how it was stored.
    assert_eq!(
        read(&store, Transforms::none(), "big").await.unwrap().0,
        big
    );

    let random = page("x", noise(20_000));
    write(&store, compress(), "random", &random, &[]).await;
    let stored = store.snapshot(&nb("random")).unwrap();
    assert_eq!(stored[2], 1, "incompressible: stored plain, format 1");
    assert_eq!(read(&store, compress(), "random").await.unwrap().0, random);

    let small = page("short", vec![1; 10]);
    write(&store, compress(), "small", &small, &[]).await;
    assert_eq!(
        store.snapshot(&nb("small")).unwrap()[2],
        1,
        "under the threshold: plain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_holds_no_plaintext_and_reads_back_with_its_key() {
    let store = MemoryStore::new();
    let keys = || Keyring::new(7, &key1()).unwrap();
    let p = page(SECRET, SECRET.as_bytes().to_vec());
    write(&store, encrypted(keys()), "a", &p, &[SECRET]).await;
    let snapshot = store.snapshot(&nb("a")).unwrap();
    assert_eq!(
        (snapshot[2], snapshot[40]),
        (2, 0x02),
        "format 2, encrypted"
    );
    assert_eq!(
        u32::from_le_bytes(snapshot[41..45].try_into().unwrap()),
        7,
        "key id"
    );
    for (_, op) in store.ops(&nb("a")) {
        assert!(!contains(&op, SECRET.as_bytes()), "an operation in clear");
    }
    assert!(
        !contains(&snapshot, SECRET.as_bytes()),
        "the state in clear"
    );
    let (back, pending) = read(&store, encrypted(keys()), "a").await.unwrap();
    assert_eq!(back, p);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1, SECRET);

    // Compressed and encrypted together.
    let both = || Transforms::none().compress_above(64).encrypt(keys());
    let big = page(&SECRET.repeat(1000), vec![]);
    write(&store, both(), "both", &big, &[]).await;
    let stored = store.snapshot(&nb("both")).unwrap();
    assert_eq!(stored[40], 0x03, "compressed, then encrypted");
    assert!(stored.len() < 2_000);
    assert_eq!(read(&store, both(), "both").await.unwrap().0, big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_is_a_typed_error_naming_the_key_id() {
    let store = MemoryStore::new();
    write(
        &store,
        encrypted(Keyring::new(7, &key1()).unwrap()),
        "a",
        &page(SECRET, vec![]),
        &[],
    )
    .await;
    let before = store.snapshot(&nb("a"));

    let wrong = Keyring::new(7, &key2()).unwrap();
    let err = read(&store, encrypted(wrong), "a").await.unwrap_err();
    assert!(matches!(err, DecodeReason::Decrypt { key_id: 7 }), "{err}");
    assert!(err.to_string().contains("key id 7"), "{err}");

    let err = read(&store, Transforms::none(), "a").await.unwrap_err();
    assert!(
        matches!(err, DecodeReason::MissingKey { key_id: 7 }),
        "{err}"
    );
    let other = Keyring::new(8, &key1()).unwrap();
    let err = read(&store, encrypted(other), "a").await.unwrap_err();
    assert!(
        matches!(err, DecodeReason::MissingKey { key_id: 7 }),
        "{err}"
    );
    assert!(!err.is_damage() && !DecodeReason::Decrypt { key_id: 7 }.is_damage());

    // Not damage: even with quarantine on, the record stays where it is.
    let storage = with(&store, Transforms::none());
    let start = Start::new(&storage, "a", ()).quarantine_undecodable();
    let err = Actor::spawn(None, Notebook, start)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(
        decode_error(err).reason,
        DecodeReason::MissingKey { key_id: 7 }
    ));
    assert!(storage.quarantined("notebook").await.unwrap().is_empty());
    storage.close().await.unwrap();
    assert_eq!(store.snapshot(&nb("a")), before, "nothing overwritten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_moved_to_another_key_or_sequence_or_tampered_does_not_decrypt() {
    let store = MemoryStore::new();
    let keys = || encrypted(Keyring::new(1, &key1()).unwrap());
    write(
        &store,
        keys(),
        "alice",
        &page("alice", vec![]),
        &["a0", "a1"],
    )
    .await;
    write(&store, keys(), "bob", &page("bob", vec![]), &[]).await;
    let alice_snapshot = store.snapshot(&nb("alice")).unwrap();
    let alice_ops = store.ops(&nb("alice"));
    assert_eq!(alice_ops.len(), 2);

    // Alice's snapshot copied over bob's.
    put(
        &store,
        &nb("bob"),
        Space::SNAPSHOT,
        0,
        alice_snapshot.clone(),
    );
    assert!(
        matches!(
            read(&store, keys(), "bob").await.unwrap_err(),
            DecodeReason::Decrypt { key_id: 1 }
        ),
        "moved to another key"
    );

    // Alice's two operations swapped: each sits at the other's sequence number.
    let (s0, b0) = alice_ops[0].clone();
    let (s1, b1) = alice_ops[1].clone();
    put(&store, &nb("alice"), Space::OPS, s0, b1.clone());
    put(&store, &nb("alice"), Space::OPS, s1, b0.clone());
    assert!(
        matches!(
            read(&store, keys(), "alice").await.unwrap_err(),
            DecodeReason::Decrypt { key_id: 1 }
        ),
        "swapped with another sequence"
    );
    put(&store, &nb("alice"), Space::OPS, s0, b0.clone());
    put(&store, &nb("alice"), Space::OPS, s1, b1.clone());
    assert!(
        read(&store, keys(), "alice").await.is_ok(),
        "put back: fine again"
    );

    // One changed byte of the ciphertext: the checksum catches it (damage)...
    let mut tampered = alice_snapshot.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    put(&store, &nb("alice"), Space::SNAPSHOT, 0, tampered.clone());
    let err = read(&store, keys(), "alice").await.unwrap_err();
    assert!(matches!(err, DecodeReason::Checksum { .. }), "{err}");
    // ...and with the checksum made to match, the AEAD does.
    fix_checksum(&mut tampered);
    put(&store, &nb("alice"), Space::SNAPSHOT, 0, tampered);
    let err = read(&store, keys(), "alice").await.unwrap_err();
    assert!(matches!(err, DecodeReason::Decrypt { key_id: 1 }));
    // A header byte (the schema version) changed, checksum fixed: bound by the AEAD too.
    let mut header = alice_snapshot.clone();
    header[4] ^= 0x01;
    header[4] &= 0xfe; // schema 0 or 1 is never "newer"
    if header[4..8] == alice_snapshot[4..8] {
        header[16] ^= 0x01; // the sequence field instead
    }
    fix_checksum(&mut header);
    put(&store, &nb("alice"), Space::SNAPSHOT, 0, header);
    let err = read(&store, keys(), "alice").await.unwrap_err();
    assert!(matches!(err, DecodeReason::Decrypt { key_id: 1 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_reads_old_records_with_the_old_key_and_writes_with_the_new() {
    let store = MemoryStore::new();
    let old = || encrypted(Keyring::new(1, &key1()).unwrap());
    let rotated = || {
        encrypted(
            Keyring::new(2, &key2())
                .unwrap()
                .with_old_key(1, &key1())
                .unwrap(),
        )
    };
    let p = page("before the rotation", vec![]);
    write(&store, old(), "r", &p, &["kept op"]).await;
    let (back, pending) = read(&store, rotated(), "r").await.unwrap();
    assert_eq!(
        (back, pending.len()),
        (p, 1),
        "old records, read with the old key"
    );

    // A change is written with the new key; the untouched operation keeps the old one.
    let storage = with(&store, rotated());
    let a = spawn(&storage, "r").await;
    call!(a, NoteMsg::Write, "after".to_owned(), vec![]).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let snapshot = store.snapshot(&nb("r")).unwrap();
    assert_eq!(u32::from_le_bytes(snapshot[41..45].try_into().unwrap()), 2);
    let op = &store.ops(&nb("r"))[0].1;
    assert_eq!(u32::from_le_bytes(op[41..45].try_into().unwrap()), 1);
    // Without the old key, the old operation names the key it needs.
    let only_new = encrypted(Keyring::new(2, &key2()).unwrap());
    assert!(matches!(
        read(&store, only_new, "r").await.unwrap_err(),
        DecodeReason::MissingKey { key_id: 1 }
    ));
    assert_eq!(read(&store, rotated(), "r").await.unwrap().0.text, "after");
}

#[test]
fn a_key_of_the_wrong_length_or_a_repeated_id_is_refused() {
    assert_eq!(
        Keyring::new(3, &[0; 16]).unwrap_err(),
        KeyError::WrongLength {
            key_id: 3,
            len: 16,
            expected: 32
        }
    );
    let err = Keyring::new(1, &key1())
        .unwrap()
        .with_old_key(4, &[0; 33])
        .unwrap_err();
    assert!(err.to_string().contains("key 4 is 33 bytes"), "{err}");
    assert_eq!(
        Keyring::new(1, &key1())
            .unwrap()
            .with_old_key(1, &key2())
            .unwrap_err(),
        KeyError::DuplicateId { key_id: 1 }
    );
    let shown = format!("{:?}", Keyring::new(1, &key1()).unwrap());
    assert!(
        !shown.contains("[0, 1, 2"),
        "a key in Debug output: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bit_flip_of_a_transformed_record_is_a_typed_error() {
    let store = MemoryStore::new();
    let both = || {
        Transforms::none()
            .compress_above(8)
            .encrypt(Keyring::new(5, &key1()).unwrap())
    };
    write(
        &store,
        both(),
        "f",
        &page(&"abc".repeat(40), vec![7; 50]),
        &[],
    )
    .await;
    let good = store.snapshot(&nb("f")).unwrap();
    assert_eq!(good[40], 0x03);
    for i in 0..good.len() * 8 {
        let mut bad = good.clone();
        bad[i / 8] ^= 1 << (i % 8);
        store.put_raw_snapshot(&nb("f"), bad.clone());
        // Flips that keep the checksum are impossible for one bit; fix it to reach the
        // transforms too, on every eighth flip (not of the checksum itself: fixed, it is the
        // original record again).
        if i % 8 == 0 && !(36..40).contains(&(i / 8)) {
            fix_checksum(&mut bad);
            store.put_raw_snapshot(&nb("f"), bad);
        }
        assert!(
            read(&store, both(), "f").await.is_err(),
            "flip {i} read as a state"
        );
    }
}

/// The golden records: one state and one pending operation written by this release under
/// each transform, kept in `tests/golden/`. A later release must still read them.
type Golden = (&'static str, fn() -> Transforms);

const GOLDEN: [Golden; 3] = [
    ("compressed", || Transforms::none().compress_above(16)),
    ("encrypted", || encrypted(Keyring::new(9, &key1()).unwrap())),
    ("compressed-encrypted", || {
        Transforms::none()
            .compress_above(16)
            .encrypt(Keyring::new(9, &key1()).unwrap())
    }),
];

fn golden_page() -> Page {
    page(&"golden ".repeat(20), vec![42; 64])
}

fn golden_path(name: &str, record: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("transform-{name}.{record}"))
}

/// Writes the golden records (run by hand, once per format change: `cargo test --test
/// transforms -- --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the golden files"]
async fn write_golden_transform_records() {
    for (name, transforms) in GOLDEN {
        let store = MemoryStore::new();
        let note = "golden operation ".repeat(10);
        write(&store, transforms(), "golden", &golden_page(), &[&note]).await;
        std::fs::write(
            golden_path(name, "snapshot"),
            store.snapshot(&nb("golden")).unwrap(),
        )
        .unwrap();
        let ops = store.ops(&nb("golden"));
        assert_eq!(ops.len(), 1);
        std::fs::write(golden_path(name, &format!("op{}", ops[0].0)), &ops[0].1).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_golden_record_of_each_transform_still_reads() {
    for (name, transforms) in GOLDEN {
        let snapshot = std::fs::read(golden_path(name, "snapshot")).unwrap();
        let op = std::fs::read(golden_path(name, "op0")).unwrap();
        assert_eq!(snapshot[2], 2, "{name}: format 2");
        let store = MemoryStore::new();
        store.put_raw_snapshot(&nb("golden"), snapshot);
        store.put_raw_op(&nb("golden"), 0, op);
        let (back, pending) = read(&store, transforms(), "golden").await.expect(name);
        assert_eq!(back, golden_page(), "{name}");
        assert_eq!(pending, vec![(0, "golden operation ".repeat(10))], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_only_refuses_a_record_that_is_not_encrypted() {
    let store = MemoryStore::new();
    let only = || Transforms::none().encrypt_only(Keyring::new(3, &key1()).unwrap());
    write(&store, only(), "sealed", &page(SECRET, vec![]), &["op"]).await;
    assert_eq!(read(&store, only(), "sealed").await.unwrap().0.text, SECRET);
    // A plain record planted in the store (format 1, as a storage without the key writes).
    write(
        &store,
        Transforms::none(),
        "planted",
        &page("forged", vec![]),
        &[],
    )
    .await;
    let err = read(&store, only(), "planted").await.unwrap_err();
    assert!(matches!(err, DecodeReason::NotEncrypted), "{err}");
    assert!(!err.is_damage(), "never quarantined");
    // With `encrypt` alone it reads: records from before encryption stay readable.
    let keys = encrypted(Keyring::new(3, &key1()).unwrap());
    assert_eq!(
        read(&store, keys, "planted").await.unwrap().0.text,
        "forged"
    );
    // A compressed-only record is no better.
    let compressed = Transforms::none().compress_above(8);
    write(
        &store,
        compressed,
        "packed",
        &page(&"x".repeat(500), vec![]),
        &[],
    )
    .await;
    assert_eq!(store.snapshot(&nb("packed")).unwrap()[40], 0x01);
    let err = read(&store, only(), "packed").await.unwrap_err();
    assert!(matches!(err, DecodeReason::NotEncrypted), "{err}");
}
