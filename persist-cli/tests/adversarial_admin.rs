//! A reviewer's attempts to break the admin calls and the `ractor-persist` tool: promises of
//! `docs/operations.md` and `docs/durability.md` ("Operating: the admin calls and the tool")
//! checked against crafted and damaged stores, refusals, and actors running beside the tool.
//!
//! Tests marked `#[ignore = "BUG: ..."]` fail today: each names the promise it breaks.

#![allow(clippy::vec_init_then_push)]

mod support;

use persist_cli::Admin;
use persist_core::MemoryStore;
use persist_core::admin;
use ractor::{Actor, call};
use ractor_persist::prelude::*;
use ractor_persist::{ActorCommit, ActorKey, Settled, Space, Start, Storage, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use support::actors::{Job, Purse, WALLET, Wallet, WalletMsg, one_attempt};
use support::{Backend, TestStore, code, export_of, populated, wallet};

// ---------------------------------------------------------------------------------------
// Crafting envelopes by hand (the layout of docs/durability.md), so a test can store records
// whose checksum holds but whose contents are wrong.

fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc: u32 = !0;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

fn head(format: u8, kind: u8, schema: u32, epoch: u64, seq: u64, body_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RP");
    out.push(format);
    out.push(kind);
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out
}

/// A format-1 envelope whose checksum holds.
fn v1(kind: u8, schema: u32, epoch: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = head(1, kind, schema, epoch, seq, payload.len());
    let crc = crc32c(&[&out, payload]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A format-2 envelope with `fields` (flags first) and `body`, whose checksum holds.
fn v2(kind: u8, seq: u64, fields: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = head(2, kind, 1, 1, seq, body.len());
    let crc = crc32c(&[&out, fields, body]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(fields);
    out.extend_from_slice(body);
    out
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The spaces of this build, and two it does not use.
fn all_spaces() -> Vec<Space> {
    let mut spaces = Space::RECORD.to_vec();
    spaces.push(Space::QUARANTINE);
    spaces.push(Space::new(11));
    spaces.push(Space::new(200));
    spaces
}

/// Every reading command of the tool, for a store holding `key` of `namespace`.
fn reading_commands(namespace: &str, key: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    vec![
        s(&["namespaces"]),
        s(&["list", namespace]),
        s(&["show", namespace, key]),
        s(&["show", namespace, key, "--full"]),
        s(&["verify"]),
        s(&["dead-letters"]),
        s(&["dead-letters", namespace]),
        s(&["quarantine", "list"]),
        s(&["quarantine", "list", namespace]),
        s(&["stats"]),
    ]
}

/// Runs every reading command, as text and as JSON: none panics, each JSON output parses,
/// and the store's export stream is the same after as before.
fn read_everything(store: &TestStore, namespace: &str, key: &str) -> Vec<(Vec<String>, i32)> {
    let before = store.export();
    let mut codes = Vec::new();
    for args in reading_commands(namespace, key) {
        for json in [false, true] {
            let mut all: Vec<&str> = Vec::new();
            if json {
                all.push("--json");
            }
            all.extend(args.iter().map(String::as_str));
            let run = store.cli(&all);
            assert!(
                run.code != 101 && run.code != -1 && !run.stderr.contains("panicked"),
                "{all:?} panicked: {run:?}"
            );
            if json {
                let _: Value = serde_json::from_str(&run.stdout)
                    .unwrap_or_else(|e| panic!("{all:?}: stdout is not JSON ({e}): {run:?}"));
            }
            codes.push((all.iter().map(|a| (*a).to_owned()).collect(), run.code));
        }
    }
    assert!(
        store.export() == before,
        "a reading command changed the store's rows or marks"
    );
    codes
}

// ---------------------------------------------------------------------------------------
// Bad bytes never panic the tool, never make a reading command write, and verify names them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_crafted_bytes_in_every_space_never_panic_a_reading_command() {
    for backend in [Backend::Redb, Backend::Sqlite] {
        let (store, _) = populated(backend).await;
        let key = wallet("fuzz");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut rows = Vec::new();
        for space in all_spaces() {
            let mut list: Vec<Vec<u8>> = Vec::new();
            // Random bytes, short and long; a bare magic; a header with nothing after it.
            list.push(rng.bytes(0));
            list.push(rng.bytes(2));
            list.push(b"RP".to_vec());
            list.push(rng.bytes(39));
            list.push(rng.bytes(300));
            let mut h = head(1, 2, 1, 1, 0, 10);
            h.extend_from_slice(&[0; 4]);
            list.push(h);
            // Valid envelopes of every kind byte, with random payloads, and sequence numbers
            // that are and are not their row id.
            for kind in 0..=16u8 {
                let n = (rng.next() % 40) as usize;
                let payload = rng.bytes(n);
                let id = list.len() as u64;
                let seq = if kind % 2 == 0 { id } else { rng.next() };
                list.push(v1(kind, 1, 1, seq, &payload));
            }
            // A schema far in the future.
            list.push(v1(2, u32::MAX, 1, list.len() as u64, b"x"));
            // Format 2: unknown flags, compressed with a lying length, encrypted with no
            // key, fields cut short, flags of zero.
            list.push(v2(2, list.len() as u64, &[0x04], b"abc"));
            let mut fields = vec![0x01];
            fields.extend_from_slice(&u32::MAX.to_le_bytes());
            list.push(v2(2, list.len() as u64, &fields, &rng.bytes(20)));
            let mut fields = vec![0x01];
            fields.extend_from_slice(&50u32.to_le_bytes());
            list.push(v2(1, list.len() as u64, &fields, &rng.bytes(20)));
            let mut fields = vec![0x02];
            fields.extend_from_slice(&7u32.to_le_bytes());
            fields.extend_from_slice(&rng.bytes(12));
            list.push(v2(5, list.len() as u64, &fields, &rng.bytes(30)));
            list.push(v2(2, list.len() as u64, &[0x02, 1], b""));
            list.push(v2(2, list.len() as u64, &[0x00], b"abc"));
            // A retried and a waiting operation whose prefix does not decode.
            list.push(v1(4, 1, 1, list.len() as u64, &[0xff; 12]));
            list.push(v1(11, 1, 1, list.len() as u64, &[0xff; 3]));
            list.push(v1(5, 1, 1, list.len() as u64, &[]));
            if matches!(space, Space::SNAPSHOT | Space::JOURNAL_SNAPSHOT) {
                // One row a key: a store keeps these at id 0 only.
                for (i, b) in list.into_iter().enumerate() {
                    store.plant(&wallet(&format!("fuzz-{space}-{i}")), vec![(space, 0, b)]);
                }
            } else {
                rows.extend(
                    list.into_iter()
                        .enumerate()
                        .map(|(i, b)| (space, i as u64, b)),
                );
            }
        }
        store.plant(&key, rows);
        let codes = read_everything(&store, WALLET, "fuzz");
        let verify = codes
            .iter()
            .find(|(args, _)| args == &["verify"])
            .expect("verify ran");
        assert_eq!(verify.1, code::DAMAGED, "verify finds the bad records");
    }
}

/// Each kind of bad record, alone in a store of its own, is reported by `verify` (exit 3)
/// with its key, space and id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_kind_of_bad_record() {
    let mut corrupt_lz4 = vec![0x01];
    corrupt_lz4.extend_from_slice(&64u32.to_le_bytes());
    let cases: Vec<(&str, Space, u64, Vec<u8>, &str)> = vec![
        (
            "snapshot in ops",
            Space::OPS,
            3,
            v1(1, 1, 1, 3, b"\x00"),
            "space",
        ),
        (
            "op in snapshot",
            Space::SNAPSHOT,
            0,
            v1(2, 1, 1, 0, b"\x00"),
            "space",
        ),
        (
            "op numbered 9 at 3",
            Space::OPS,
            3,
            v1(2, 1, 1, 9, b"\x00"),
            "#9",
        ),
        (
            "event numbered 2 at 1",
            Space::JOURNAL,
            1,
            v1(12, 1, 1, 2, b"\x00"),
            "#2",
        ),
        (
            "truncated",
            Space::OPS,
            3,
            v1(2, 1, 1, 3, b"abcdef")[..43].to_vec(),
            "",
        ),
        (
            "unknown kind",
            Space::OPS,
            3,
            v1(99, 1, 1, 3, b"\x00"),
            "kind",
        ),
        (
            "unknown transform",
            Space::OPS,
            3,
            v2(2, 3, &[0x04], b"abc"),
            "transform",
        ),
        (
            "bad lz4",
            Space::OPS,
            3,
            v2(2, 3, &corrupt_lz4, &[0xff; 16]),
            "",
        ),
        (
            "retried op with a garbage attempt count",
            Space::OPS,
            3,
            v1(4, 1, 1, 3, &[0xff; 6]),
            "attempt count",
        ),
        (
            "waiting op with a garbage retry instant",
            Space::OPS,
            3,
            v1(11, 1, 1, 3, &[0x01, 0xff]),
            "retry instant",
        ),
        (
            "garbage quarantine",
            Space::QUARANTINE,
            5,
            vec![0xff; 9],
            "quarantine",
        ),
        (
            "unknown space",
            Space::new(42),
            1,
            v1(2, 1, 1, 1, b"\x00"),
            "space",
        ),
    ];
    for (what, space, id, bytes, says) in cases {
        let store = TestStore::new(Backend::Sqlite);
        store.create_empty();
        let key = wallet("x");
        store.plant(&key, vec![(space, id, bytes)]);
        let run = store.cli(&["--json", "verify"]).expect(code::DAMAGED);
        let v = run.json();
        let bad = v["bad"].as_array().expect("bad");
        assert_eq!(bad.len(), 1, "{what}: {v:#}");
        assert_eq!(bad[0]["key"], "x", "{what}");
        assert_eq!(bad[0]["space"], space.to_string(), "{what}");
        assert_eq!(bad[0]["id"], id, "{what}");
        let reason = bad[0]["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{what}: {reason}");
        // `list` counts what `verify` names (a quarantined row is counted as quarantined).
        if space != Space::QUARANTINE {
            let run = store.cli(&["--json", "list", WALLET]).expect(code::SUCCESS);
            assert_eq!(run.json()[0]["damaged"], 1, "{what}: {:#}", run.json());
        }
    }
}

// ---------------------------------------------------------------------------------------
// A quarantined row that does not decode.

/// `docs/operations.md`: exit 3 is "a command met a record it cannot read", and `show` of an
/// actor prints every row (a bad one as BAD); `persist-cli/src/commands.rs` `show` even has an
/// "(unreadable)" branch for a quarantined row. Today a quarantined row that does not decode
/// makes `admin::quarantined` fail for the whole namespace with `StoreError::Corrupt`, so
/// `quarantine list` exits 5 ("the store failed") and `show` of the actor fails outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_quarantine_row_is_shown_as_unreadable_and_listed_as_damaged() {
    let (store, _) = populated(Backend::Sqlite).await;
    store.plant(
        &wallet("alice"),
        vec![(Space::QUARANTINE, 5, vec![0xff; 9])],
    );
    let before = store.export();

    let run = store.cli(&["show", WALLET, "alice"]);
    assert_eq!(run.code, code::SUCCESS, "show prints the actor: {run:?}");
    assert!(run.stdout.contains("(unreadable)"), "{run:?}");
    let run = store.cli(&["--json", "show", WALLET, "bob"]);
    assert_eq!(
        run.code,
        code::SUCCESS,
        "another actor of the namespace: {run:?}"
    );

    let run = store.cli(&["quarantine", "list"]);
    assert_eq!(run.code, code::DAMAGED, "a record it cannot read: {run:?}");
    let run = store.cli(&["--json", "quarantine", "list", WALLET]);
    assert_eq!(run.code, code::DAMAGED, "{run:?}");
    assert_eq!(run.json()["error"]["kind"], "damaged", "{run:?}");
    assert!(store.export() == before);
}

/// The same row met by `quarantine restore`: refused, nothing written (this holds), with the
/// exit code of a record that cannot be read (3), not of a failed store (5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_garbage_quarantine_row_is_refused_as_damaged() {
    let store = TestStore::new(Backend::Redb);
    store.create_empty();
    store.plant(&wallet("zed"), vec![(Space::QUARANTINE, 5, vec![0xff; 9])]);
    let before = store.export();
    let run = store.cli(&["quarantine", "restore", WALLET, "zed", "5"]);
    assert!(store.export() == before, "nothing written");
    assert_eq!(run.code, code::DAMAGED, "{run:?}");
}

// ---------------------------------------------------------------------------------------
// Refused writing commands write nothing, not even an epoch.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_writing_command_leaves_rows_and_marks_as_they_were() {
    for backend in [Backend::Redb, Backend::Sqlite] {
        let (store, f) = populated(backend).await;
        // A key with marks only, and one with a damaged dead letter.
        store.with(|s| {
            let k = wallet("gone");
            let e = s.open_actor(&k, &[]).unwrap().epoch;
            s.commit(&[ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"x".to_vec())])
                .unwrap();
            admin::delete(s, &k).unwrap();
        });
        let mut bad_dead = v1(3, 1, 1, 4, b"\x07");
        let last = bad_dead.len() - 1;
        bad_dead[last] ^= 1;
        store.plant(&wallet("broken"), vec![(Space::OPS, 4, bad_dead)]);
        let before = store.export();
        let dead = f.dead.0.to_string();
        let kept = f.kept.0.to_string();
        let refusals: Vec<Vec<&str>> = vec![
            vec!["requeue", WALLET, "alice", &kept],
            vec!["requeue", WALLET, "alice", "999"],
            vec!["requeue", WALLET, "nobody", &dead],
            vec!["requeue", "nons", "alice", &dead],
            vec!["requeue", WALLET, "gone", "0"],
            vec!["requeue", WALLET, "broken", "4"],
            vec!["delete", WALLET, "nobody"],
            vec!["delete", WALLET, "gone"],
            vec!["delete", "nons", "alice"],
            vec!["quarantine", "restore", WALLET, "alice", "1"],
            vec!["quarantine", "restore", WALLET, "gone", "1"],
            vec!["quarantine", "restore", WALLET, "nobody", "1"],
            vec!["edit", WALLET, "alice", "--state", "{}"],
            vec!["requeue", WALLET, "alice", "-1"],
            vec!["requeue", WALLET, "alice", "x"],
        ];
        for args in refusals {
            for json in [false, true] {
                let mut all = Vec::new();
                if json {
                    all.push("--json");
                }
                all.extend(args.iter().copied());
                let run = store.cli(&all);
                assert!(run.code != 0 && run.code != 101, "{all:?} refused: {run:?}");
                if json && run.code != 2 {
                    assert!(run.json()["error"]["kind"].is_string(), "{all:?}: {run:?}");
                }
                assert!(
                    store.export() == before,
                    "{all:?} ({backend:?}) wrote something: {run:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writing calls against an actor running in the same process.

fn mem_key(key: &str) -> ActorKey {
    wallet(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_fences_a_running_instance_and_the_next_start_performs_the_op_once() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let failing = Wallet::failing();
    let start = Start::new(&storage, "alice", ()).retry_policy(one_attempt());
    let (alice, _) = Actor::spawn(None, failing, start).await.unwrap();
    let (id, settled) = call!(alice, WalletMsg::Push, Job::flaky(7)).unwrap();
    assert_eq!(settled.wait().await, Settled::DeadLetter);
    // A commit after the burial, so the dead letter is in the store.
    call!(alice, WalletMsg::Add, 1).unwrap();

    let changed = admin::requeue(&mem, &mem_key("alice"), id, &Default::default()).unwrap();
    assert!(changed.epoch > 1);
    // The running instance is fenced: its next commit fails, and it stops.
    let r = call!(alice, WalletMsg::Add, 1);
    assert!(r.is_err(), "the fenced instance's commit is refused: {r:?}");
    alice.stop_and_wait(None, None).await.ok();

    let healthy = Wallet::default();
    let mut performs = healthy.performs();
    let (alice, _) = Actor::spawn(None, healthy, Start::new(&storage, "alice", ()))
        .await
        .unwrap();
    let (job, attempts) = performs.recv().await.unwrap();
    assert_eq!((job, attempts), (Job::flaky(7), 0));
    let purse = call!(alice, WalletMsg::Peek).unwrap();
    assert_eq!(purse.total, 8, "the fenced Add was not applied");
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert!(performs.try_recv().is_err(), "performed exactly once");
    let rows = mem
        .read(&mem_key("alice"), Some(Space::OPS), 0..=u64::MAX)
        .unwrap();
    assert!(rows.is_empty(), "done and removed: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_fences_a_running_instance_keeps_its_pending_ops_and_no_id_is_reused() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let (alice, _) = Actor::spawn(None, Wallet::default(), Start::new(&storage, "alice", ()))
        .await
        .unwrap();
    let (kept, _) = call!(alice, WalletMsg::Push, Job::kept(3)).unwrap();
    let edited = Purse {
        total: 1000,
        memo: "edited".into(),
    };
    admin::replace_state::<Wallet>(&mem, &mem_key("alice"), &edited, &Default::default()).unwrap();
    let r = call!(alice, WalletMsg::Push, Job::kept(4));
    assert!(r.is_err(), "fenced: {r:?}");
    alice.stop_and_wait(None, None).await.ok();

    let w = Wallet::default();
    let mut performs = w.performs();
    let (alice, _) = Actor::spawn(None, w, Start::new(&storage, "alice", ()))
        .await
        .unwrap();
    assert_eq!(
        performs.recv().await.unwrap().0,
        Job::kept(3),
        "the kept op stays"
    );
    assert_eq!(call!(alice, WalletMsg::Peek).unwrap(), edited);
    let (next, _) = call!(alice, WalletMsg::Push, Job::kept(5)).unwrap();
    assert!(next > kept, "ids go on: {next} after {kept}");
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_fences_a_running_instance_which_cannot_bring_the_record_back() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let (alice, _) = Actor::spawn(None, Wallet::default(), Start::new(&storage, "alice", ()))
        .await
        .unwrap();
    let (kept, _) = call!(alice, WalletMsg::Push, Job::kept(3)).unwrap();
    admin::delete(&mem, &mem_key("alice")).unwrap();
    let r = call!(alice, WalletMsg::Add, 5);
    assert!(r.is_err(), "fenced: {r:?}");
    alice.stop_and_wait(None, None).await.ok();
    let rows = mem.read(&mem_key("alice"), None, 0..=u64::MAX).unwrap();
    assert!(rows.is_empty(), "nothing resurrected: {rows:?}");
    let (alice, _) = Actor::spawn(None, Wallet::default(), Start::new(&storage, "alice", ()))
        .await
        .unwrap();
    assert_eq!(call!(alice, WalletMsg::Peek).unwrap(), Purse::default());
    let (next, _) = call!(alice, WalletMsg::Push, Job::kept(4)).unwrap();
    assert!(
        next > kept,
        "no id reused after a delete: {next} after {kept}"
    );
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_fences_an_instance_started_from_init_and_ids_do_not_repeat() {
    let mem = MemoryStore::new();
    let storage = Storage::new(mem.clone());
    let (a, _) = Actor::spawn(None, Wallet::default(), Start::new(&storage, "q", ()))
        .await
        .unwrap();
    let (kept, _) = call!(a, WalletMsg::Push, Job::kept(3)).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    // Damage the state: the next start (opted in) moves the record aside.
    let k = mem_key("q");
    let e = mem.open_actor(&k, &[]).unwrap().epoch;
    mem.commit(&[ActorCommit::new(k.clone(), e).put(Space::SNAPSHOT, 0, b"junk".to_vec())])
        .unwrap();
    let start = Start::new(&storage, "q", ()).quarantine_undecodable();
    let (fresh, _) = Actor::spawn(None, Wallet::default(), start).await.unwrap();
    assert_eq!(call!(fresh, WalletMsg::Peek).unwrap(), Purse::default());
    let q = admin::quarantined(&mem, Some(WALLET)).unwrap();
    assert_eq!(q.len(), 1);
    admin::restore(&mem, &k, q[0].epoch).unwrap();
    let r = call!(fresh, WalletMsg::Push, Job::kept(9));
    assert!(r.is_err(), "the instance from init is fenced: {r:?}");
    fresh.stop_and_wait(None, None).await.ok();
    // The restored (still damaged) record is moved aside again; ids go on past every one used.
    let start = Start::new(&storage, "q", ()).quarantine_undecodable();
    let (again, _) = Actor::spawn(None, Wallet::default(), start).await.unwrap();
    let (next, _) = call!(again, WalletMsg::Push, Job::kept(4)).unwrap();
    assert!(next > kept, "{next} after {kept}");
    again.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Typed admin: a namespace registered with a type of another shape.

/// An actor that claims the wallets' namespace with a state of another shape.
#[derive(Default, Persistent)]
#[persistent(name = "wallet", version = 2)]
struct Impostor;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Other {
    cents: u64,
    flags: Vec<bool>,
}

impl PersistentActor for Impostor {
    type Msg = ();
    type State = Other;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Other, ActorProcessingErr> {
        Ok(Other::default())
    }

    async fn handle(
        &self,
        _: &mut Tx<'_, Self>,
        _: (),
        _: &mut Other,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// The wallet of an older build: version 1, the same types.
#[derive(Default, Persistent)]
#[persistent(name = "wallet", version = 1)]
struct OldWallet;

impl PersistentActor for OldWallet {
    type Msg = ();
    type State = Purse;
    type Op = Job;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Purse, ActorProcessingErr> {
        Ok(Purse::default())
    }

    async fn handle(
        &self,
        _: &mut Tx<'_, Self>,
        _: (),
        _: &mut Purse,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// "refused ... when its stored state is of a newer schema version than A's": exit 3, nothing
/// written; an oversized value is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_by_an_older_build_or_with_an_oversized_value_is_refused() {
    let (store, _) = populated(Backend::Redb).await;
    let before = store.export();
    let (code, out, err) = run_admin(
        Admin::new().actor::<OldWallet>(),
        &[
            "--json",
            &store.url(),
            "edit",
            WALLET,
            "alice",
            "--state",
            r#"{"total":1,"memo":""}"#,
        ],
    );
    assert_eq!(code, 3, "{out} {err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["kind"], "damaged", "{v}");
    assert!(store.export() == before);
    // A memo over the 64 MiB cap of a payload.
    let big = format!(
        r#"{{"total":1,"memo":"{}"}}"#,
        "x".repeat(64 * 1024 * 1024 + 1)
    );
    let (code, _, err) = run_admin(
        Admin::new().actor::<Wallet>(),
        &[&store.url(), "edit", WALLET, "alice", "--state", &big],
    );
    assert_eq!(code, 1, "{err}");
    assert!(store.export() == before);
}

fn run_admin(admin: Admin, args: &[&str]) -> (u8, String, String) {
    let mut argv = vec!["bank-admin"];
    argv.extend_from_slice(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = admin.run_with(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_of_another_shape_shows_a_decode_error_not_garbage() {
    let (store, _) = populated(Backend::Redb).await;
    let admin = Admin::new().actor::<Impostor>();
    let (code, out, err) = run_admin(admin, &["--json", &store.url(), "show", WALLET, "alice"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let snap = &v["records"][0];
    assert!(snap["value"]["decode_error"].is_string(), "{v:#}");
}

/// durability.md: `replace_state` is refused when "the state is [not] a snapshot-mode state of
/// a schema this build knows", and admin.rs: "a build that cannot read the record may not
/// replace it". A binary whose type for the namespace does not read the stored state (its
/// `show` prints a shape `decode_error`) still replaces it, and the application's own actor
/// can no longer start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_through_a_type_that_cannot_read_the_state_is_refused() {
    let (store, _) = populated(Backend::Redb).await;
    let before = store.export();
    let admin = Admin::new().actor::<Impostor>();
    let (code, _, err) = run_admin(
        admin,
        &[
            &store.url(),
            "edit",
            WALLET,
            "alice",
            "--state",
            r#"{"cents":1,"flags":[true]}"#,
        ],
    );
    let after = store.export();
    // Whatever it did: the real actor must still start.
    let storage = store.storage();
    let started = Actor::spawn(None, Wallet::default(), Start::new(&storage, "alice", ())).await;
    if let Ok((a, _)) = &started {
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
    assert!(
        started.is_ok(),
        "the wallet's own actor starts: {:?}",
        started.err()
    );
    assert_ne!(code, 0, "refused: {err}");
    assert!(after == before, "nothing written");
}

// ---------------------------------------------------------------------------------------
// Export and import.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_into_a_missing_directory_fails_and_leaves_nothing() {
    let (store, _) = populated(Backend::Sqlite).await;
    let file = store.dir.path().join("no/such/dir/x.export");
    let run = store.cli(&["export", file.to_str().unwrap()]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(!file.exists());
    let run = store.cli(&["--json", "export", file.to_str().unwrap()]);
    assert_eq!(run.json()["error"]["kind"], "io", "{run:?}");
    // To stdout: exactly the stream.
    let run = store.cli(&["export", "-"]).expect(code::SUCCESS);
    assert!(run.stdout_bytes == store.export());
}

/// docs: "Nothing is created by accident ... Only `import --create` makes a new store" and an
/// import is "all of it or, if the stream is truncated or damaged, nothing". An
/// `import --create` whose stream file does not exist (a typo), or is not a stream, creates
/// the store file anyway and leaves it behind (commands.rs opens the store before the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_create_leaves_no_store_behind() {
    for backend in [Backend::Redb, Backend::Sqlite] {
        let target = TestStore::new(backend);
        let missing = target.dir.path().join("typo.export");
        let run = target.cli(&["import", "--create", missing.to_str().unwrap()]);
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            !target.path.exists(),
            "{backend:?}: the failed import created {}",
            target.path.display()
        );
        let garbage = target.dir.path().join("garbage.export");
        std::fs::write(&garbage, b"this is not an export stream").unwrap();
        let run = target.cli(&["import", "--create", garbage.to_str().unwrap()]);
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            !target.path.exists(),
            "{backend:?}: a garbage import created a store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_garbage_stream_imports_nothing() {
    let (source, _) = populated(Backend::Redb).await;
    let stream = source.export();
    let dir = tempfile::tempdir().unwrap();
    for (i, bytes) in [
        stream[..stream.len() / 2].to_vec(),
        stream[..stream.len() - 1].to_vec(),
        b"garbage".to_vec(),
        Vec::new(),
    ]
    .into_iter()
    .enumerate()
    {
        for backend in [Backend::Redb, Backend::Sqlite] {
            let target = TestStore::new(backend);
            target.create_empty();
            let before = target.export();
            let file = dir.path().join(format!("s{i}"));
            std::fs::write(&file, &bytes).unwrap();
            for replace in [false, true] {
                let mut args = vec!["import", file.to_str().unwrap()];
                if replace {
                    args.push("--replace");
                }
                let run = target.cli(&args);
                assert!(run.code != 0 && run.code != 101, "{i} {backend:?}: {run:?}");
                assert!(
                    target.export() == before,
                    "{i} {backend:?}: wrote something"
                );
            }
            let run = support::cli_with_input(&[target.url(), "import".into(), "-".into()], &bytes);
            assert!(run.code != 0 && run.code != 101, "{i} stdin: {run:?}");
            assert!(target.export() == before);
        }
    }
}

#[test]
fn import_create_into_a_foreign_file_is_refused_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(conn);
    let text = dir.path().join("notes.redb");
    std::fs::write(&text, b"just some notes").unwrap();
    let stream = dir.path().join("s.export");
    std::fs::write(&stream, export_of(&MemoryStore::new())).unwrap();
    for (url, path) in [
        (format!("sqlite:{}", foreign.display()), &foreign),
        (format!("redb:{}", text.display()), &text),
        (format!("sqlite:{}", text.display()), &text),
    ] {
        let before = std::fs::read(path).unwrap();
        let run = support::cli(&[url.as_str(), "import", "--create", stream.to_str().unwrap()]);
        assert_eq!(run.code, code::OPEN, "{url}: {run:?}");
        assert!(std::fs::read(path).unwrap() == before, "{url}: changed");
    }
}

// ---------------------------------------------------------------------------------------
// The PostgreSQL store argument, as the tool prints it.

/// A URL with a user and no password is named as given, `postgres://ops@127.0.0.1:1/bank`, as
/// open.rs's unit test names `postgres://u:secret@h/db` as `postgres://u@h/db`. Today
/// `Location`'s Display (open.rs) takes the scheme's colon for the password's and prints
/// `cannot open postgres@127.0.0.1:1/bank` (scheme and user lost).
#[test]
fn a_postgres_url_without_a_password_is_named_by_its_user() {
    let run = support::cli(&["postgres://ops@127.0.0.1:1/bank", "namespaces"]).expect(code::OPEN);
    // The tool's own words (the backend's message after them names the server too).
    assert!(
        run.stderr
            .starts_with("error: cannot open postgres://ops@127.0.0.1:1/bank:"),
        "names the store as given: {run:?}"
    );
}

/// cli.rs promises "a postgres password is never printed". libpq's URL takes the password up to
/// the `@` after the first `:` of the user info (so `S3C:RET` is one password, as
/// tokio-postgres parses it), and in the query (`?password=`). The Display of open.rs splits at
/// the last `:` and keeps the query, printing part of the password, or all of it.
#[test]
fn a_postgres_password_is_never_printed_whatever_its_form() {
    for store in [
        "postgres://ops:S3C:RET-PW@127.0.0.1:1/bank",
        "postgres://ops@127.0.0.1:1/bank?password=S3CRET-PW",
    ] {
        for json in [false, true] {
            let mut args = vec![store];
            if json {
                args.push("--json");
            }
            args.push("namespaces");
            let run = support::cli(&args).expect(code::OPEN);
            assert!(
                !run.stderr.contains("S3C") && !run.stdout.contains("S3C"),
                "{store}: {run:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading commands on a PostgreSQL store write nothing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_commands_leave_a_postgres_store_as_it_was() {
    let Some(server) = persist_postgres::TestCluster::shared() else {
        eprintln!("SKIPPED: no PostgreSQL server");
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let storage = Storage::new(ractor_persist::PostgresStore::open(options.clone()).unwrap());
    let f = support::populate(&storage).await;
    let params = server.params();
    let url = if params.starts_with("postgres") {
        params.clone()
    } else {
        format!("postgres:{params}")
    };
    let export = || {
        let s = ractor_persist::PostgresStore::open(options.clone()).unwrap();
        let e = export_of(&s);
        s.close().unwrap();
        e
    };
    let before = export();
    for args in reading_commands(WALLET, "alice") {
        let mut all = vec![url.clone(), "--pg-schema".into(), schema.clone()];
        all.extend(args);
        let run = support::cli(&all);
        assert!(run.code == 0 || run.code == 3, "{all:?}: {run:?}");
    }
    let dead = f.kept.0.to_string();
    let run = support::cli(&[
        &url,
        "--pg-schema",
        &schema,
        "requeue",
        WALLET,
        "alice",
        &dead,
    ]);
    assert_eq!(run.code, code::REFUSED, "{run:?}");
    assert!(
        export() == before,
        "reading and refused commands wrote nothing"
    );
}

/// `verify` on PostgreSQL names the backend's check in one sentence. open.rs's
/// `integrity_check` has a string broken over two lines without a `\`, so its output holds a
/// run of 18 spaces ("data checksums                  apply").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_on_postgres_prints_its_backend_check_in_one_sentence() {
    let Some(server) = persist_postgres::TestCluster::shared() else {
        eprintln!("SKIPPED: no PostgreSQL server");
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let storage = Storage::new(ractor_persist::PostgresStore::open(options.clone()).unwrap());
    support::populate(&storage).await;
    let params = server.params();
    let url = if params.starts_with("postgres") {
        params.clone()
    } else {
        format!("postgres:{params}")
    };
    let run = support::cli(&[&url, "--pg-schema", &schema, "verify"]).expect(code::SUCCESS);
    assert!(!run.stdout.contains("   "), "{}", run.stdout);
}

// ---------------------------------------------------------------------------------------
// A store holding every kind of row the runtime writes verifies clean, and the tool's
// summaries of it are right.

mod kinds {
    use std::time::Duration;

    use ractor_persist::prelude::*;
    use ractor_persist::{Control, EventSourced, Once};
    use serde::{Deserialize, Serialize};

    pub enum EvMsg {
        Send(String, u64, RpcReplyPort<Settlement>),
        Got(u64),
        Timer(RpcReplyPort<()>),
        Fire,
        Map(String, u64, RpcReplyPort<()>),
        Once(String, u64, RpcReplyPort<u64>),
        /// 0: kept until confirmed; 1: retried after an hour; 2: fails (a dead letter with a
        /// one-attempt policy).
        Push(u32, RpcReplyPort<Settlement>),
        Persist(Control<u32>),
    }

    #[derive(Default, Persistent)]
    #[persistent(name = "everything")]
    pub struct Everything;

    impl PersistentActor for Everything {
        type Msg = EvMsg;
        type State = u64;
        type Op = u32;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            msg: EvMsg,
            st: &mut u64,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                EvMsg::Send(to, n, port) => {
                    let id = tx.send_to::<Everything, u64>(&to, &n)?;
                    let s = tx.settlement(&id);
                    tx.reply(port, s);
                }
                EvMsg::Got(n) => *st += n,
                EvMsg::Timer(port) => {
                    tx.set_timer_after("later", Duration::from_secs(3600), &1u64)?;
                    tx.reply(port, ());
                }
                EvMsg::Fire => {}
                EvMsg::Map(k, v, port) => {
                    tx.map::<String, u64>("m")?.insert(k, v);
                    tx.reply(port, ());
                }
                EvMsg::Once(k, n, port) => match tx.once(&k, &n, port) {
                    Once::First(first) => {
                        *st += n;
                        tx.reply_once(first, *st)?;
                    }
                    Once::Repeated => {}
                    Once::Refused(port, _) => tx.reply(port, 0),
                },
                EvMsg::Push(n, port) => {
                    let id = tx.push(n)?;
                    let s = tx.settlement(&id);
                    tx.reply(port, s);
                }
                EvMsg::Persist(_) => {}
            }
            Ok(())
        }

        async fn perform(&self, op: &Pending<u32>, _: &u64) -> Result<Outcome, ActorProcessingErr> {
            Ok(match op.op() {
                0 => Outcome::KeepUntilConfirmed,
                _ => Outcome::Retry,
            })
        }

        fn control(msg: EvMsg) -> Result<Control<u32>, EvMsg> {
            match msg {
                EvMsg::Persist(c) => Ok(c),
                other => Err(other),
            }
        }

        fn wrap_control(c: Control<u32>) -> Option<EvMsg> {
            Some(EvMsg::Persist(c))
        }

        fn inbound(msg: Inbound) -> Result<EvMsg, DecodeReason> {
            Ok(EvMsg::Got(msg.decode()?))
        }

        fn timer(_: Fired) -> Result<EvMsg, DecodeReason> {
            Ok(EvMsg::Fire)
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Entry {
        Added(u32),
    }

    pub enum LedgerMsg {
        Add(u32, RpcReplyPort<u32>),
    }

    #[derive(Default, Persistent)]
    #[persistent(name = "ledger", event_sourced)]
    pub struct Ledger;

    impl PersistentActor for Ledger {
        type Msg = LedgerMsg;
        type State = u32;
        type Op = u32;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
            Ok(0)
        }

        async fn handle(
            &self,
            tx: &mut Tx<'_, Self>,
            LedgerMsg::Add(n, reply): LedgerMsg,
            state: &mut u32,
        ) -> Result<(), ActorProcessingErr> {
            tx.emit(state, Entry::Added(n))?;
            tx.map::<u32, u32>("seen")?.insert(n, *state);
            if n % 2 == 0 {
                tx.push(n)?;
            }
            tx.reply(reply, *state);
            Ok(())
        }

        async fn perform(&self, _: &Pending<u32>, _: &u32) -> Result<Outcome, ActorProcessingErr> {
            Ok(Outcome::KeepUntilConfirmed)
        }
    }

    impl EventSourced for Ledger {
        type Event = Entry;
        fn apply(state: &mut u32, Entry::Added(n): &Entry) -> Result<(), ActorProcessingErr> {
            *state += n;
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_row_the_runtime_writes_verifies_clean() {
    use kinds::{EvMsg, Everything, Ledger, LedgerMsg};
    use ractor_persist::{Retention, RetryPolicy};
    use std::time::Duration;

    let store = TestStore::new(Backend::Redb);
    let storage = store.storage();
    let (a, _) = Actor::spawn(None, Everything, Start::new(&storage, "a", ()))
        .await
        .unwrap();
    let (b, _) = Actor::spawn(None, Everything, Start::new(&storage, "b", ()))
        .await
        .unwrap();
    // A letter acknowledged (a channel at a, an inbox entry at b), one to an actor that never
    // runs (in a's outbox).
    let s = call!(a, EvMsg::Send, "b".into(), 5).unwrap();
    assert_eq!(s.wait().await, Settled::Delivered);
    let _ = call!(a, EvMsg::Send, "absent".into(), 6).unwrap();
    call!(a, EvMsg::Timer).unwrap();
    call!(a, EvMsg::Map, "k".into(), 1).unwrap();
    assert_eq!(call!(a, EvMsg::Once, "req-1".into(), 2).unwrap(), 2);
    let _ = call!(a, EvMsg::Push, 0).unwrap();
    a.stop_and_wait(None, None).await.unwrap();
    b.stop_and_wait(None, None).await.unwrap();
    // A retried operation waiting an hour, and a dead letter with its count.
    let slow = RetryPolicy::new(Duration::from_secs(3600), Duration::from_secs(3600), 5).unwrap();
    let (c, _) = Actor::spawn(
        None,
        Everything,
        Start::new(&storage, "c", ()).retry_policy(slow),
    )
    .await
    .unwrap();
    let _ = call!(c, EvMsg::Push, 1).unwrap();
    let (d, _) = Actor::spawn(
        None,
        Everything,
        Start::new(&storage, "d", ()).retry_policy(one_attempt()),
    )
    .await
    .unwrap();
    let dead = call!(d, EvMsg::Push, 1).unwrap();
    assert_eq!(dead.wait().await, Settled::DeadLetter);
    call!(d, EvMsg::Map, "x".into(), 1).unwrap();
    c.stop_and_wait(None, None).await.unwrap();
    d.stop_and_wait(None, None).await.unwrap();
    // Journals: with snapshots kept full and compacted.
    for (key, retention) in [("full", Retention::Full), ("light", Retention::Light)] {
        let start = Start::new(&storage, key, ())
            .snapshot_every(2)
            .retention(retention);
        let (l, _) = Actor::spawn(None, Ledger, start).await.unwrap();
        for n in 1..=5 {
            call!(l, LedgerMsg::Add, n).unwrap();
        }
        l.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();

    // The store holds every space of a record, so a clean verify means something.
    let spaces: std::collections::BTreeSet<Space> = store.with(|s| {
        let mut spaces = std::collections::BTreeSet::new();
        for (key, _) in s.scan().unwrap() {
            for row in s.read(&key, None, 0..=u64::MAX).unwrap() {
                spaces.insert(row.space);
            }
        }
        spaces
    });
    for space in Space::RECORD {
        assert!(
            spaces.contains(&space),
            "{space} is in the store: {spaces:?}"
        );
    }
    let run = store.cli(&["verify"]);
    assert_eq!(run.code, code::SUCCESS, "no false positive: {run:?}");
    read_everything(&store, "ledger", "light");
    read_everything(&store, "everything", "a");

    let v = store
        .cli(&["--json", "list", "ledger"])
        .expect(code::SUCCESS)
        .json();
    for a in v.as_array().unwrap() {
        assert_eq!(a["model"], "event-sourced", "{v:#}");
        assert_eq!(a["pending"], 2, "ops 2 and 4 kept: {v:#}");
    }
    let v = store
        .cli(&["--json", "list", "everything"])
        .expect(code::SUCCESS)
        .json();
    let d = v
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "d")
        .unwrap();
    assert_eq!(
        (&d["dead"], &d["pending"]),
        (&serde_json::json!(1), &serde_json::json!(0))
    );
    let c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "c")
        .unwrap();
    assert_eq!(c["pending"], 1, "a waiting op is pending: {v:#}");
    let v = store.cli(&["--json", "stats"]).expect(code::SUCCESS).json();
    assert_eq!(v["total"]["damaged"], 0, "{v:#}");

    // Typed: an event-sourced actor's events, state snapshot and ops decode.
    let admin = Admin::new().event_sourced::<Ledger>();
    let (code, out, err) = run_admin(admin, &["--json", &store.url(), "show", "ledger", "full"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    for r in v["records"].as_array().unwrap() {
        if let Some(value) = r.get("value") {
            assert!(value.get("decode_error").is_none(), "{r:#}");
        }
        if r["space"] == "journal" || r["space"] == "ops" {
            assert!(r.get("value").is_some(), "typed: {r:#}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// `--json` on a command line that does not parse.

/// docs/operations.md: "With `--json`, a failure is also printed to stdout as
/// `{"error": {"kind": ..., "message": ...}}`", and exit 2 ("the command line does not parse")
/// is one of the failures listed. A script passing `--json` with a bad argument (an id that is
/// not a number) gets clap's text on stderr and an empty stdout (lib.rs `run_with` returns
/// before it knows of `--json`).
#[test]
fn a_usage_error_with_json_is_printed_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("x.redb").display());
    let run = support::cli(&[
        url.as_str(),
        "--json",
        "requeue",
        WALLET,
        "alice",
        "notanumber",
    ]);
    assert_eq!(run.code, 2, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {run:?}"));
    assert!(v["error"]["kind"].is_string(), "{v}");
}

// ---------------------------------------------------------------------------------------
// The documented flow: the tool on an SQLite store while the application runs.

/// operations.md: "SQLite and PostgreSQL stores can be inspected while the application runs; a
/// writing command then fences the actor it changes".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_repairs_an_sqlite_store_while_the_application_runs() {
    let store = TestStore::new(Backend::Sqlite);
    let storage = store.storage();
    let start = Start::new(&storage, "alice", ()).retry_policy(one_attempt());
    let (alice, _) = Actor::spawn(None, Wallet::failing(), start).await.unwrap();
    let (id, settled) = call!(alice, WalletMsg::Push, Job::flaky(7)).unwrap();
    assert_eq!(settled.wait().await, Settled::DeadLetter);
    call!(alice, WalletMsg::Add, 1).unwrap();
    let (bob, _) = Actor::spawn(None, Wallet::default(), Start::new(&storage, "bob", ()))
        .await
        .unwrap();
    call!(bob, WalletMsg::Add, 2).unwrap();

    // Reading while it runs.
    let v = store
        .cli(&["--json", "dead-letters", WALLET])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(v[0]["id"], id, "{v:#}");
    store.cli(&["verify"]).expect(code::SUCCESS);
    // Writing while it runs: alice is fenced, bob is not.
    store
        .cli(&["requeue", WALLET, "alice", &id.to_string()])
        .expect(code::SUCCESS);
    assert!(call!(alice, WalletMsg::Add, 1).is_err(), "alice is fenced");
    assert_eq!(call!(bob, WalletMsg::Add, 3).unwrap(), 5, "bob runs on");
    store.cli(&["delete", WALLET, "bob"]).expect(code::SUCCESS);
    assert!(call!(bob, WalletMsg::Add, 1).is_err(), "bob is fenced");
    alice.stop_and_wait(None, None).await.ok();
    bob.stop_and_wait(None, None).await.ok();

    let healthy = Wallet::default();
    let mut performs = healthy.performs();
    let (alice, _) = Actor::spawn(None, healthy, Start::new(&storage, "alice", ()))
        .await
        .unwrap();
    assert_eq!(performs.recv().await.unwrap(), (Job::flaky(7), 0));
    assert_eq!(call!(alice, WalletMsg::Peek).unwrap().total, 8);
    alice.stop_and_wait(None, None).await.unwrap();
    let (bob, _) = Actor::spawn(None, Wallet::default(), Start::new(&storage, "bob", ()))
        .await
        .unwrap();
    assert_eq!(
        call!(bob, WalletMsg::Peek).unwrap().total,
        0,
        "deleted, not resurrected"
    );
    bob.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    assert!(performs.try_recv().is_err(), "performed once");
}
