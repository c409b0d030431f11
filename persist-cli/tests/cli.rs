//! The `ractor-persist` binary, run as a user runs it, on stores the library made: every
//! command's output (text and `--json`), its exit code, and what it left in the store.

mod support;

use persist_core::admin;
use ractor_persist::{Persistent, Space, shape_fingerprint};
use serde_json::{Value, json};
use support::actors::{Job, Memo, MemoMsg, Purse, WALLET, Wallet, one_attempt};
use support::{Backend, TestStore, code, hex, populated, postcard, wallet};

/// Runs each named `async fn(Backend)` as a test on a redb store and on an SQLite store.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Redb).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
    };
}

on_both_backends!(
    namespaces_counts_the_keys_of_each_namespace,
    list_shows_each_actor_with_its_counts_and_marks,
    show_prints_every_header_field_the_op_ids_and_the_payloads,
    stats_counts_per_namespace_and_in_total,
    verify_names_exactly_the_damaged_records,
);

fn row_bytes(rows: &[ractor_persist::Row]) -> usize {
    rows.iter().map(|r| r.bytes.len()).sum()
}

async fn namespaces_counts_the_keys_of_each_namespace(backend: Backend) {
    let (store, _) = populated(backend).await;
    let before = store.export();
    let v = store
        .cli(&["--json", "namespaces"])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(
        v,
        json!([{"namespace": "memo", "keys": 1}, {"namespace": "wallet", "keys": 2}])
    );
    let text = store.cli(&["namespaces"]).expect(code::SUCCESS).stdout;
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec!["NAMESPACE", "KEYS"],
            vec!["memo", "1"],
            vec!["wallet", "2"]
        ],
        "{text}"
    );

    assert_eq!(store.export(), before, "a reading command writes nothing");
}

async fn list_shows_each_actor_with_its_counts_and_marks(backend: Backend) {
    let (store, _) = populated(backend).await;
    let before = store.export();
    let (alice_rows, alice_marks) = (store.rows(&wallet("alice")), store.marks(&wallet("alice")));
    let bob_rows = store.rows(&wallet("bob"));
    let v = store
        .cli(&["--json", "list", WALLET])
        .expect(code::SUCCESS)
        .json();
    let list = v.as_array().expect("an array");
    assert_eq!(list.len(), 2, "{v:#}");
    let alice = &list[0];
    assert_eq!(alice["key"], "alice");
    assert_eq!(alice["model"], "snapshot");
    assert_eq!(alice["rows"], 3);
    assert_eq!(alice["bytes"], row_bytes(&alice_rows));
    assert_eq!(alice["pending"], 1);
    assert_eq!(alice["dead"], 1);
    assert_eq!(alice["quarantined"], 0);
    assert_eq!(alice["damaged"], 0);
    assert_eq!(alice["epoch"], alice_marks.epoch);
    assert_eq!(alice["floor"], alice_marks.floor);
    let bob = &list[1];
    assert_eq!(bob["key"], "bob");
    assert_eq!(
        (&bob["rows"], &bob["pending"], &bob["dead"]),
        (&json!(1), &json!(0), &json!(0))
    );
    assert_eq!(bob["bytes"], row_bytes(&bob_rows));
    let text = store.cli(&["list", WALLET]).expect(code::SUCCESS).stdout;
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][0], "KEY", "{text}");
    let alice_bytes = row_bytes(&alice_rows).to_string();
    let (epoch, floor) = (alice_marks.epoch.to_string(), alice_marks.floor.to_string());
    assert_eq!(
        lines[1],
        vec![
            "alice",
            "snapshot",
            "3",
            &alice_bytes,
            "1",
            "1",
            "0",
            "0",
            &epoch,
            &floor
        ],
        "{text}"
    );
    assert_eq!(lines[2][0], "bob", "{text}");
    assert_eq!(lines.len(), 3, "{text}");
    let missing = store
        .cli(&["--json", "list", "nowhere"])
        .expect(code::REFUSED);
    assert_eq!(missing.json()["error"]["kind"], "no_namespace");

    assert_eq!(store.export(), before, "a reading command writes nothing");
}

async fn show_prints_every_header_field_the_op_ids_and_the_payloads(backend: Backend) {
    let (store, f) = populated(backend).await;
    let before = store.export();
    let (alice_rows, alice_marks) = (store.rows(&wallet("alice")), store.marks(&wallet("alice")));
    let v = store
        .cli(&["--json", "show", WALLET, "alice"])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(
        (&v["namespace"], &v["key"]),
        (&json!("wallet"), &json!("alice"))
    );
    assert_eq!(v["epoch"], alice_marks.epoch);
    let records = v["records"].as_array().expect("records");
    assert_eq!(records.len(), 3, "{v:#}");
    let schema = <Wallet as Persistent>::VERSION;
    assert_eq!(schema, 2);
    let fingerprint = |fp: Option<u64>| format!("{:#018x}", fp.expect("a traceable type"));
    let snapshot = &records[0];
    assert_eq!(
        (&snapshot["space"], &snapshot["id"]),
        (&json!("snapshot"), &json!(0))
    );
    let h = &snapshot["header"];
    assert_eq!(h["format"], 1);
    assert_eq!(h["kind"], 1);
    assert_eq!(h["kind_name"], "snapshot");
    assert_eq!(h["schema"], schema);
    assert_eq!(h["epoch"], alice_marks.epoch);
    assert_eq!(
        h["sequence"],
        f.kept.0 + 1,
        "a snapshot holds the next op id"
    );
    assert_eq!(h["fingerprint"], fingerprint(shape_fingerprint::<Purse>()));
    assert_eq!(
        (&h["compressed"], &h["encrypted_key"]),
        (&json!(false), &Value::Null)
    );
    assert_eq!(h["body_len"], postcard(&f.alice).len());
    assert_eq!(snapshot["payload_hex"], hex(&postcard(&f.alice)));
    assert_eq!(snapshot["len"], alice_rows[0].bytes.len());

    let op_fingerprint = fingerprint(shape_fingerprint::<Job>());
    let dead = &records[1];
    assert_eq!(
        (&dead["space"], &dead["id"]),
        (&json!("ops"), &json!(f.dead.0))
    );
    assert_eq!(dead["header"]["kind_name"], "dead-letter operation");
    assert_eq!(dead["header"]["kind"], 5);
    assert_eq!(dead["header"]["sequence"], f.dead.0);
    assert_eq!(dead["header"]["schema"], schema);
    assert_eq!(dead["header"]["fingerprint"], op_fingerprint);
    assert_eq!(dead["attempts"], 1);
    assert_eq!(dead["payload_hex"], hex(&postcard(&f.dead.1)));
    let kept = &records[2];
    assert_eq!(
        (&kept["space"], &kept["id"]),
        (&json!("ops"), &json!(f.kept.0))
    );
    assert_eq!(kept["header"]["kind_name"], "operation");
    assert_eq!(kept["header"]["kind"], 2);
    assert_eq!(kept["header"]["sequence"], f.kept.0);
    assert_eq!(kept["payload_hex"], hex(&postcard(&f.kept.1)));
    assert_eq!(kept.get("attempts"), None, "a pending op never failed");

    let text = store
        .cli(&["show", WALLET, "alice"])
        .expect(code::SUCCESS)
        .stdout;
    let snapshot_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("snapshot #0"))
        .unwrap_or_else(|| panic!("no snapshot line:\n{text}"));
    for field in [
        "format 1".to_owned(),
        format!("schema {schema}"),
        format!("epoch {}", alice_marks.epoch),
        format!("seq {}", f.kept.0 + 1),
        format!("fingerprint {}", fingerprint(shape_fingerprint::<Purse>())),
        "transforms none".to_owned(),
    ] {
        assert!(
            snapshot_line.contains(&field),
            "{field:?} in {snapshot_line:?}"
        );
    }
    assert!(
        text.contains(&format!("ops #{}  dead-letter operation", f.dead.0)),
        "{text}"
    );
    assert!(
        text.contains(&format!("ops #{}  operation (kind 2)", f.kept.0)),
        "{text}"
    );
    assert!(text.contains("failed attempts 1"), "{text}");
    for payload in [postcard(&f.alice), postcard(&f.dead.1), postcard(&f.kept.1)] {
        assert!(
            text.contains(&format!("payload {}\n", hex(&payload))),
            "{text}"
        );
    }

    // What is not there.
    let missing = store
        .cli(&["--json", "show", WALLET, "nobody"])
        .expect(code::REFUSED);
    assert_eq!(missing.json()["error"]["kind"], "no_actor");

    assert_eq!(store.export(), before, "a reading command writes nothing");
}

async fn stats_counts_per_namespace_and_in_total(backend: Backend) {
    let (store, _) = populated(backend).await;
    let before = store.export();
    let (alice_rows, bob_rows) = (store.rows(&wallet("alice")), store.rows(&wallet("bob")));
    let v = store.cli(&["--json", "stats"]).expect(code::SUCCESS).json();
    assert_eq!(v["store"], store.url());
    let namespaces = v["namespaces"].as_array().expect("namespaces");
    assert_eq!(namespaces.len(), 2, "{v:#}");
    assert_eq!(namespaces[0]["namespace"], "memo");
    assert_eq!(namespaces[0]["actors"], 1);
    assert_eq!(namespaces[0]["rows"], 1);
    let w = &namespaces[1];
    assert_eq!(w["namespace"], "wallet");
    assert_eq!(w["actors"], 2);
    assert_eq!(w["rows"], 4);
    assert_eq!(w["bytes"], row_bytes(&alice_rows) + row_bytes(&bob_rows));
    assert_eq!((&w["pending"], &w["dead"]), (&json!(1), &json!(1)));
    assert_eq!(
        (&w["quarantined"], &w["damaged"], &w["marks_only"]),
        (&json!(0), &json!(0), &json!(0))
    );
    let total = &v["total"];
    assert_eq!(total["actors"], 3);
    assert_eq!(total["rows"], 5);
    assert_eq!(
        total["file_bytes"],
        std::fs::metadata(&store.path).unwrap().len()
    );
    let text = store.cli(&["stats"]).expect(code::SUCCESS).stdout;
    let total_line: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("(total)"))
        .unwrap_or_else(|| panic!("no total:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(&total_line[..4], ["(total)", "3", "0", "5"], "{text}");

    assert_eq!(store.export(), before, "a reading command writes nothing");
}

async fn verify_names_exactly_the_damaged_records(backend: Backend) {
    let (store, _) = populated(backend).await;
    let v = store
        .cli(&["--json", "verify"])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["bad"], json!([]));
    assert_eq!((&v["keys"], &v["rows"]), (&json!(3), &json!(5)), "{v:#}");
    let text = store.cli(&["verify"]).expect(code::SUCCESS).stdout;
    assert!(text.contains("every record is sound"), "{text}");

    // A valid envelope with its last byte flipped, and a valid snapshot stored as an
    // operation: planted through the seam, as damage on disk or a bad tool would leave them.
    let mut flipped = store.rows(&wallet("bob"))[0].bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x01;
    store.plant(&wallet("bob"), vec![(Space::SNAPSHOT, 0, flipped)]);
    let snapshot = store.rows(&wallet("alice"))[0].bytes.clone();
    let m1 = ractor_persist::ActorKey::new("memo", "m1");
    store.plant(&m1, vec![(Space::OPS, 3, snapshot)]);
    let before = store.export();

    let v = store
        .cli(&["--json", "verify"])
        .expect(code::DAMAGED)
        .json();
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!((&v["keys"], &v["rows"]), (&json!(3), &json!(6)), "{v:#}");
    let mut bad: Vec<(String, String, String, u64, String)> = v["bad"]
        .as_array()
        .expect("bad records")
        .iter()
        .map(|b| {
            let s = |f: &str| {
                b[f].as_str()
                    .unwrap_or_else(|| panic!("{f} in {b}"))
                    .to_owned()
            };
            (
                s("namespace"),
                s("key"),
                s("space"),
                b["id"].as_u64().unwrap(),
                s("reason"),
            )
        })
        .collect();
    bad.sort();
    assert_eq!(bad.len(), 2, "{v:#}");
    assert_eq!(
        (&bad[0].0[..], &bad[0].1[..], &bad[0].2[..], bad[0].3),
        ("memo", "m1", "ops", 3),
        "{v:#}"
    );
    assert!(
        bad[0].4.contains("snapshot record in the ops space"),
        "{}",
        bad[0].4
    );
    assert_eq!(
        (&bad[1].0[..], &bad[1].1[..], &bad[1].2[..], bad[1].3),
        ("wallet", "bob", "snapshot", 0),
        "{v:#}"
    );
    assert!(bad[1].4.contains("checksum"), "{}", bad[1].4);

    let list = store
        .cli(&["--json", "list", WALLET])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(
        (&list[1]["key"], &list[1]["damaged"]),
        (&json!("bob"), &json!(1)),
        "{list:#}"
    );
    let text = store.cli(&["verify"]).expect(code::DAMAGED).stdout;
    assert!(text.contains("2 bad records"), "{text}");
    let mut listed: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    listed.sort();
    assert_eq!(listed.len(), 2, "{text}");
    assert!(listed[0].starts_with("  memo/m1  ops #3: "), "{text}");
    assert!(
        listed[1].starts_with("  wallet/bob  snapshot #0: checksum"),
        "{text}"
    );
    assert_eq!(store.export(), before, "verify writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_file_whose_page_checksum_fails_cannot_be_opened() {
    const MARKER: &[u8] = b"a marker in the leaf page of the memo's snapshot";
    let store = TestStore::new(Backend::Redb);
    let storage = store.storage();
    let (m1, _) = ractor::Actor::spawn(None, Memo, ractor_persist::Start::new(&storage, "m1", ()))
        .await
        .unwrap();
    let memo = String::from_utf8(MARKER.to_vec()).unwrap();
    ractor::call!(m1, MemoMsg::Set, memo).unwrap();
    m1.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    store.cli(&["verify"]).expect(code::SUCCESS);

    // Every copy of the value in the file (the live page, and any freed one) gets one bit
    // flipped: redb's checksum of the live page no longer holds.
    let mut bytes = std::fs::read(&store.path).unwrap();
    let at: Vec<usize> = bytes
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MARKER)
        .map(|(i, _)| i + MARKER.len() / 2)
        .collect();
    assert!(!at.is_empty(), "the value is stored in the file as it is");
    for i in at {
        bytes[i] ^= 0x04;
    }
    std::fs::write(&store.path, &bytes).unwrap();

    for args in [
        &["verify"][..],
        &["--json", "verify"],
        &["show", "memo", "m1"],
    ] {
        let run = store.cli(args).expect(code::OPEN);
        assert!(
            run.stderr.contains("cannot open")
                && run.stderr.contains(&store.url())
                && run.stderr.contains("corrupt"),
            "{run:?}"
        );
    }
    let v = store.cli(&["--json", "verify"]).expect(code::OPEN).json();
    assert_eq!(v["error"]["kind"], "open", "{v:#}");
    assert_eq!(
        std::fs::read(&store.path).unwrap(),
        bytes,
        "the damaged file is left as it is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_turns_a_dead_letter_into_a_pending_op_the_next_start_performs() {
    let (store, f) = populated(Backend::Redb).await;
    let (dead_id, kept_id) = (f.dead.0, f.kept.0);

    // dead-letters
    let v = store
        .cli(&["--json", "dead-letters"])
        .expect(code::SUCCESS)
        .json();
    let letters = v.as_array().expect("an array");
    assert_eq!(letters.len(), 1, "{v:#}");
    let d = &letters[0];
    assert_eq!(
        (&d["namespace"], &d["key"], &d["id"]),
        (&json!("wallet"), &json!("alice"), &json!(dead_id))
    );
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["header"]["kind"], 5);
    assert_eq!(d["header"]["sequence"], dead_id);
    let only = store
        .cli(&["--json", "dead-letters", WALLET])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(only, v, "the namespace's dead letters are all of them");
    let none = store
        .cli(&["--json", "dead-letters", "memo"])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(none, json!([]));
    let text = store.cli(&["dead-letters"]).expect(code::SUCCESS).stdout;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(
        &rows[0][..4],
        ["NAMESPACE", "KEY", "ID", "ATTEMPTS"],
        "{text}"
    );
    assert_eq!(
        &rows[1][..5],
        ["wallet", "alice", &dead_id.to_string(), "1", "2"],
        "{text}"
    );
    let missing = store
        .cli(&["--json", "dead-letters", "nowhere"])
        .expect(code::REFUSED);
    assert_eq!(missing.json()["error"]["kind"], "no_namespace");

    // Refused, writing nothing: a pending op, an id the actor never had, a key with no record.
    let before = store.export();
    let run = store
        .cli(&["requeue", WALLET, "alice", &kept_id.to_string()])
        .expect(code::REFUSED);
    assert!(
        run.stderr.contains(&format!(
            "operation #{kept_id} of `wallet/alice` is not a dead letter"
        )) && run.stderr.contains("operation"),
        "{run:?}"
    );
    assert_eq!(store.export(), before, "a refused requeue writes nothing");
    let run = store
        .cli(&["--json", "requeue", WALLET, "alice", "99"])
        .expect(code::REFUSED);
    assert_eq!(run.json()["error"]["kind"], "not_dead_letter");
    assert_eq!(store.export(), before, "a refused requeue writes nothing");
    let run = store
        .cli(&["--json", "requeue", WALLET, "nobody", "0"])
        .expect(code::REFUSED);
    assert_eq!(run.json()["error"]["kind"], "no_actor");
    assert_eq!(store.export(), before, "a refused requeue writes nothing");

    // The requeue.
    let old_epoch = store.marks(&wallet("alice")).epoch;
    let run = store
        .cli(&["requeue", WALLET, "alice", &dead_id.to_string()])
        .expect(code::SUCCESS);
    let epoch = store.marks(&wallet("alice")).epoch;
    assert!(epoch > old_epoch, "the requeue took a new epoch");
    assert!(
        run.stdout
            .contains(&format!("requeued operation #{dead_id} of wallet/alice"))
            && run.stdout.contains(&format!("under the new epoch {epoch}")),
        "{run:?}"
    );
    let (letters, row) = store.with(|s| {
        let letters = admin::dead_letters(s, None, &Default::default()).unwrap();
        let row = s
            .read(&wallet("alice"), Some(Space::OPS), dead_id..=dead_id)
            .unwrap();
        (letters, row)
    });
    assert!(letters.is_empty(), "no dead letter left: {letters:?}");
    let p = admin::payload(
        &wallet("alice"),
        dead_id,
        &row[0].bytes,
        &Default::default(),
    )
    .unwrap();
    assert!(p.header.is_pending_op(), "{:?}", p.header);
    assert_eq!(p.attempts, None, "no failed attempts");
    assert_eq!(p.value, postcard(&f.dead.1), "the same job");

    // The next start performs it, as a first attempt.
    let storage = store.storage();
    let w = Wallet::default();
    let mut performs = w.performs();
    let start = ractor_persist::Start::new(&storage, "alice", ()).retry_policy(one_attempt());
    let (alice, _) = ractor::Actor::spawn(None, w, start).await.unwrap();
    let requeued = async {
        loop {
            let (job, attempts) = performs.recv().await.expect("the actor performs");
            if job == f.dead.1 {
                return attempts;
            }
        }
    };
    // A guard against a hang only: the perform is awaited, not timed.
    let attempts = tokio::time::timeout(std::time::Duration::from_secs(60), requeued)
        .await
        .expect("the requeued job is performed at the start");
    assert_eq!(attempts, 0, "performed with no failed attempt behind it");
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_record_and_refuses_what_does_not_exist() {
    let (store, _) = populated(Backend::Redb).await;
    let before = store.export();
    for (ns, key) in [(WALLET, "nobody"), ("nowhere", "alice")] {
        let run = store.cli(&["delete", ns, key]).expect(code::REFUSED);
        assert!(
            run.stderr
                .contains(&format!("the store holds no record of `{ns}/{key}`")),
            "{run:?}"
        );
        let run = store
            .cli(&["--json", "delete", ns, key])
            .expect(code::REFUSED);
        assert_eq!(run.json()["error"]["kind"], "no_actor");
        assert_eq!(store.export(), before, "a refused delete writes nothing");
    }

    let alice = store.rows(&wallet("alice"));
    let v = store
        .cli(&["--json", "delete", WALLET, "bob"])
        .expect(code::SUCCESS)
        .json();
    let marks = store.marks(&wallet("bob"));
    assert_eq!(
        v,
        json!({"command": "delete", "namespace": "wallet", "key": "bob", "epoch": marks.epoch,
               "rows_written": 0, "rows_removed": 1})
    );
    assert!(
        store.rows(&wallet("bob")).is_empty(),
        "bob's record is gone"
    );
    assert_eq!(store.rows(&wallet("alice")), alice, "alice is untouched");
    let list = store
        .cli(&["--json", "list", WALLET])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list[0]["key"], "alice");

    let stats = store.cli(&["--json", "stats"]).expect(code::SUCCESS).json();
    let w = &stats["namespaces"][1];
    assert_eq!(w["namespace"], "wallet");
    assert_eq!(
        (&w["actors"], &w["marks_only"]),
        (&json!(1), &json!(1)),
        "{stats:#}"
    );

    // Deleted: only its marks are left, and a second delete is refused.
    let after = store.export();
    store.cli(&["delete", WALLET, "bob"]).expect(code::REFUSED);
    assert_eq!(store.export(), after, "a refused delete writes nothing");

    let run = store
        .cli(&["delete", WALLET, "alice"])
        .expect(code::SUCCESS);
    assert!(
        run.stdout
            .contains("deleted wallet/alice under the new epoch")
            && run.stdout.contains(": 3 rows removed"),
        "{run:?}"
    );
    assert!(store.rows(&wallet("alice")).is_empty());
}

/// Stores `wallet/q` (a state and a kept job) and `wallet/r` (a state), damages both
/// snapshots, and starts both with `quarantine_undecodable`: q's record is moved aside and q
/// stays empty; r's is moved aside and r commits a new record. Returns q's rows as they were
/// before the quarantine.
async fn quarantined_store() -> (TestStore, Vec<ractor_persist::Row>) {
    use ractor::{Actor, call};
    use ractor_persist::Start;
    use support::actors::WalletMsg;

    let store = TestStore::new(Backend::Redb);
    let storage = store.storage();
    for key in ["q", "r"] {
        let (a, _) = Actor::spawn(None, Wallet::default(), Start::new(&storage, key, ()))
            .await
            .unwrap();
        call!(a, WalletMsg::Push, Job::kept(3)).unwrap();
        call!(a, WalletMsg::Peek).unwrap();
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
    for key in ["q", "r"] {
        store.plant(
            &wallet(key),
            vec![(Space::SNAPSHOT, 0, b"not a purse".to_vec())],
        );
    }
    let q_rows = store.rows(&wallet("q"));
    assert_eq!(q_rows.len(), 2, "a snapshot and a kept job");

    let storage = store.storage();
    for key in ["q", "r"] {
        let start = Start::new(&storage, key, ()).quarantine_undecodable();
        let (a, _) = Actor::spawn(None, Wallet::default(), start).await.unwrap();
        assert_eq!(
            call!(a, WalletMsg::Peek).unwrap(),
            Purse::default(),
            "started afresh"
        );
        if key == "r" {
            call!(a, WalletMsg::Add, 1).unwrap();
        }
        a.stop_and_wait(None, None).await.unwrap();
    }
    storage.close().await.unwrap();
    (store, q_rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_list_shows_the_records_and_restore_puts_one_back() {
    let (store, q_rows) = quarantined_store().await;
    let entries = store.with(|s| admin::quarantined(s, Some(WALLET)).unwrap());
    let epoch_of = |key: &str| {
        entries
            .iter()
            .find(|e| e.key == wallet(key))
            .unwrap_or_else(|| panic!("{key} is quarantined"))
            .epoch
    };
    let (q_epoch, r_epoch) = (epoch_of("q"), epoch_of("r"));

    // list
    let v = store
        .cli(&["--json", "quarantine", "list"])
        .expect(code::SUCCESS)
        .json();
    let listed = v.as_array().expect("an array");
    assert_eq!(listed.len(), 2, "{v:#}");
    for (entry, key, epoch, rows) in [(&listed[0], "q", q_epoch, 2), (&listed[1], "r", r_epoch, 2)]
    {
        assert_eq!(
            (&entry["namespace"], &entry["key"]),
            (&json!("wallet"), &json!(key)),
            "{v:#}"
        );
        assert_eq!(entry["epoch"], epoch, "{v:#}");
        assert_eq!(entry["rows"], rows, "{v:#}");
        let reason = entry["reason"].as_str().expect("a reason");
        assert!(reason.contains(&format!("wallet/{key}")), "{reason}");
    }
    let of_wallet = store
        .cli(&["--json", "quarantine", "list", WALLET])
        .expect(code::SUCCESS);
    assert_eq!(of_wallet.json(), v);
    let text = store
        .cli(&["quarantine", "list", WALLET])
        .expect(code::SUCCESS)
        .stdout;
    let q_line: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&"q"))
        .unwrap_or_else(|| panic!("q is listed:\n{text}"));
    assert_eq!(
        &q_line[..4],
        ["wallet", "q", &q_epoch.to_string(), "2"],
        "{text}"
    );
    let reason = &entries
        .iter()
        .find(|e| e.key == wallet("q"))
        .unwrap()
        .reason;
    assert!(
        text.contains(reason.as_str()),
        "the reason is shown:\n{text}"
    );
    store
        .cli(&["quarantine", "list", "nowhere"])
        .expect(code::REFUSED);

    let stats = store.cli(&["--json", "stats"]).expect(code::SUCCESS).json();
    let total = &stats["total"];
    assert_eq!(
        (
            &total["quarantined"],
            &total["actors"],
            &total["marks_only"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{stats:#}"
    );

    // Refused, writing nothing: an epoch that quarantined nothing, a key with a record again.
    let before = store.export();
    let wrong = (q_epoch + 100).to_string();
    let run = store
        .cli(&["--json", "quarantine", "restore", WALLET, "q", &wrong])
        .expect(code::REFUSED);
    assert_eq!(run.json()["error"]["kind"], "no_quarantine");
    assert_eq!(store.export(), before, "a refused restore writes nothing");
    let run = store
        .cli(&["quarantine", "restore", WALLET, "r", &r_epoch.to_string()])
        .expect(code::REFUSED);
    assert!(
        run.stderr.contains("`wallet/r` has a record again"),
        "{run:?}"
    );
    assert_eq!(store.export(), before, "a refused restore writes nothing");

    // The restore.
    let run = store
        .cli(&["quarantine", "restore", WALLET, "q", &q_epoch.to_string()])
        .expect(code::SUCCESS);
    assert!(
        run.stdout.contains(&format!(
            "restored the record of wallet/q quarantined by epoch {q_epoch}, under the new epoch"
        )) && run.stdout.contains(": 2 rows put back"),
        "{run:?}"
    );
    let rows = store.rows(&wallet("q"));
    assert!(
        rows.iter().all(|r| r.space != Space::QUARANTINE),
        "the quarantined copy is gone: {rows:?}"
    );
    assert_eq!(rows, q_rows, "the rows are back as they were");
    let left = store.with(|s| admin::quarantined(s, Some(WALLET)).unwrap());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, wallet("r"));

    // Once back, the same restore is refused: the key has a record.
    let after = store.export();
    store
        .cli(&["quarantine", "restore", WALLET, "q", &q_epoch.to_string()])
        .expect(code::REFUSED);
    assert_eq!(store.export(), after, "a refused restore writes nothing");

    // Deleting r's new record keeps its quarantined one, which may then be restored.
    store.cli(&["delete", WALLET, "r"]).expect(code::SUCCESS);
    let v = store
        .cli(&["--json", "quarantine", "list"])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v:#}");
    assert_eq!(
        (&v[0]["key"], &v[0]["epoch"]),
        (&json!("r"), &json!(r_epoch))
    );
    let restored = store
        .cli(&[
            "--json",
            "quarantine",
            "restore",
            WALLET,
            "r",
            &r_epoch.to_string(),
        ])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(
        (&restored["rows_written"], &restored["rows_removed"]),
        (&json!(2), &json!(1))
    );
    let v = store
        .cli(&["--json", "quarantine", "list"])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(v, json!([]));
    let snapshot = store.rows(&wallet("r"))[0].clone();
    assert_eq!(
        (snapshot.space, &snapshot.bytes[..]),
        (Space::SNAPSHOT, &b"not a purse"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_a_fresh_sqlite_store_gives_the_same_stream() {
    let (source, f) = populated(Backend::Redb).await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("backup.stream");
    let file_arg = file.to_str().unwrap();
    let run = source.cli(&["export", file_arg]).expect(code::SUCCESS);
    assert!(run.stdout.contains("exported 3 actors, 5 rows"), "{run:?}");
    let stream = std::fs::read(&file).unwrap();
    assert_eq!(
        stream,
        source.export(),
        "the file is the store's export stream"
    );
    assert_eq!(
        support::files_in(out.path()),
        ["backup.stream"],
        "no part file is left"
    );

    // An existing file is not overwritten.
    let taken = out.path().join("taken.stream");
    std::fs::write(&taken, b"precious").unwrap();
    let run = source
        .cli(&["export", taken.to_str().unwrap()])
        .expect(code::REFUSED);
    assert!(run.stderr.contains("exists"), "{run:?}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"precious");
    assert_eq!(
        support::files_in(out.path()),
        ["backup.stream", "taken.stream"],
        "no part file is left"
    );

    // To stdout, and from stdin into a fresh redb store.
    let run = source.cli(&["export", "-"]).expect(code::SUCCESS);
    assert_eq!(run.stdout_bytes, stream, "`-` writes the stream to stdout");
    let piped = TestStore::new(Backend::Redb);
    piped.create_empty();
    let run = support::cli_with_input(&[&piped.url(), "import", "-"], &stream);
    run.expect(code::SUCCESS);
    assert_eq!(piped.export(), stream, "`-` reads the stream from stdin");

    // Into a fresh SQLite store, made by the library, empty.
    let target = TestStore::new(Backend::Sqlite);
    target.create_empty();
    let empty = target.export();
    assert_ne!(empty, stream);
    let v = target
        .cli(&["--json", "import", file_arg])
        .expect(code::SUCCESS)
        .json();
    assert_eq!(
        (&v["command"], &v["actors"], &v["rows"]),
        (&json!("import"), &json!(3), &json!(5)),
        "{v:#}"
    );
    assert_eq!(target.export(), stream, "SQLite exports what redb exported");
    let again = out.path().join("again.stream");
    target
        .cli(&["export", again.to_str().unwrap()])
        .expect(code::SUCCESS);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        stream,
        "byte for byte, through the tool"
    );

    // Not empty any more: refused without --replace, and nothing written.
    let run = target
        .cli(&["--json", "import", file_arg])
        .expect(code::REFUSED);
    assert_eq!(run.json()["error"]["kind"], "not_empty");
    assert_eq!(target.export(), stream, "a refused import writes nothing");
    // With --replace, the stream's keys get its rows again, under a new epoch that fences
    // any running instance.
    let run = target
        .cli(&["import", "--replace", file_arg])
        .expect(code::SUCCESS);
    assert!(run.stdout.contains("imported 3 actors, 5 rows"), "{run:?}");
    let m1 = ractor_persist::ActorKey::new("memo", "m1");
    for key in [wallet("alice"), wallet("bob"), m1] {
        assert_eq!(target.rows(&key), source.rows(&key), "{key}");
        let (was, now) = (source.marks(&key), target.marks(&key));
        assert!(
            now.epoch > was.epoch && now.floor == was.floor,
            "{key}: {was:?} {now:?}"
        );
    }

    // The actors come back on the new backend.
    let storage = target.storage();
    let (alice, _) = ractor::Actor::spawn(
        None,
        Wallet::default(),
        ractor_persist::Start::new(&storage, "alice", ()),
    )
    .await
    .unwrap();
    let purse = ractor::call!(alice, support::actors::WalletMsg::Peek).unwrap();
    assert_eq!(purse, f.alice);
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

#[test]
fn an_unknown_scheme_is_refused_with_the_schemes_the_tool_opens() {
    for store in ["mysql://x", "bank.redb"] {
        let run = support::cli(&[store, "namespaces"]).expect(code::OPEN);
        assert!(
            run.stderr
                .contains(&format!("`{store}` names no store this tool opens"))
                && ["redb:PATH", "sqlite:PATH", "postgres://"]
                    .iter()
                    .all(|s| run.stderr.contains(s)),
            "{run:?}"
        );
        let run = support::cli(&[store, "--json", "delete", WALLET, "alice"]).expect(code::OPEN);
        assert_eq!(run.json()["error"]["kind"], "unknown_scheme");
    }
}

/// Runs a reading and a writing command on `store`; both must be refused as unopenable, and
/// leave `dir` as it was (no file changed, none created).
fn refused_to_open(store: &str, dir: &std::path::Path, says: &str) {
    let files = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        support::files_in(dir)
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(dir.join(&name)).unwrap();
                (name, bytes)
            })
            .collect()
    };
    let before = files(dir);
    for args in [
        &["namespaces"][..],
        &["verify"],
        &["delete", WALLET, "alice"],
        &["import", "-"],
    ] {
        let mut all = vec![store];
        all.extend_from_slice(args);
        let run = support::cli(&all).expect(code::OPEN);
        assert!(run.stderr.contains(says), "{store} {args:?}: {run:?}");
        assert_eq!(files(dir), before, "{store} {args:?} changed the directory");
    }
}

#[test]
fn a_foreign_file_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "a text file, not a store\n").unwrap();
    let foreign = dir.path().join("app.db");
    {
        let db = rusqlite::Connection::open(&foreign).unwrap();
        db.execute_batch(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO people (name) VALUES ('ada'), ('grace');",
        )
        .unwrap();
    }
    let (text, foreign) = (text.display(), foreign.display());
    refused_to_open(&format!("redb:{text}"), dir.path(), "not a redb database");
    refused_to_open(
        &format!("sqlite:{text}"),
        dir.path(),
        "not an SQLite database",
    );
    refused_to_open(
        &format!("redb:{foreign}"),
        dir.path(),
        "not a redb database",
    );
    refused_to_open(
        &format!("sqlite:{foreign}"),
        dir.path(),
        "without the store's tables",
    );
}

#[test]
fn a_missing_file_is_refused_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    for scheme in ["redb", "sqlite"] {
        let store = format!("{scheme}:{}", dir.path().join("missing").display());
        refused_to_open(&store, dir.path(), "no file at this path");
    }
    assert!(support::files_in(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_store_held_by_another_process_is_refused_as_in_use() {
    let (store, _) = populated(Backend::Redb).await;
    let held = ractor_persist::RedbStore::open(&store.path).unwrap();
    let before = support::export_of(&held);
    let reading: [&[&str]; 3] = [&["namespaces"], &["show", WALLET, "alice"], &["verify"]];
    let writing: [&[&str]; 3] = [
        &["delete", WALLET, "bob"],
        &["requeue", WALLET, "alice", "0"],
        &["quarantine", "restore", WALLET, "bob", "1"],
    ];
    for args in reading.iter().chain(&writing) {
        let run = store.cli(args).expect(code::OPEN);
        assert!(
            run.stderr.contains("is in use by another process"),
            "{args:?}: {run:?}"
        );
        let mut json = vec!["--json"];
        json.extend_from_slice(args);
        let run = store.cli(&json).expect(code::OPEN);
        assert_eq!(run.json()["error"]["kind"], "in_use", "{args:?}");
    }
    let file = store.dir.path().join("held.stream");
    let run = store
        .cli(&["export", file.to_str().unwrap()])
        .expect(code::OPEN);
    assert!(
        run.stderr.contains("is in use by another process"),
        "{run:?}"
    );
    assert_eq!(
        support::files_in(store.dir.path()),
        ["store.redb"],
        "no export file"
    );
    let run = support::cli_with_input(&[&store.url(), "import", "--replace", "-"], &before);
    run.expect(code::OPEN);
    assert_eq!(support::export_of(&held), before, "nothing was written");
    held.close().unwrap();
    assert_eq!(store.export(), before, "nothing was written");
    // Released, the same command runs.
    store.cli(&["delete", WALLET, "bob"]).expect(code::SUCCESS);
}

/// The shared PostgreSQL test server, or `None` (the test skips, saying so) when there is
/// none; with `PERSIST_PG_REQUIRED=1` a missing server fails the test instead.
fn pg_server() -> Option<&'static persist_postgres::TestCluster> {
    let server = persist_postgres::TestCluster::shared();
    if server.is_none() {
        eprintln!("SKIPPED: no PostgreSQL server for the CLI's PostgreSQL tests");
    }
    server
}

/// The server's connection string in the tool's two forms: a `postgres://` URL, and
/// `postgres:` followed by libpq's key=value parameters.
fn pg_arguments(params: &str) -> (String, String) {
    if params.starts_with("postgres://") || params.starts_with("postgresql://") {
        return (params.to_owned(), params.to_owned());
    }
    let field = |name: &str| {
        params
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("`{name}` in {params}"))
            .to_owned()
    };
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        field("user"),
        field("password"),
        field("host"),
        field("port"),
        field("dbname")
    );
    (url, format!("postgres:{params}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_and_export_read_a_postgres_store() {
    let Some(server) = pg_server() else {
        return;
    };
    let options = server.options();
    let schema = options.schema_name().to_owned();
    let storage =
        ractor_persist::Storage::new(ractor_persist::PostgresStore::open(options.clone()).unwrap());
    let f = support::populate(&storage).await;
    let (url, key_value) = pg_arguments(&server.params());
    let pg = |store: &str, args: &[&str]| {
        let mut all = vec![store, "--pg-schema", &schema];
        all.extend_from_slice(args);
        support::cli(&all)
    };

    let v = pg(&url, &["--json", "list", WALLET])
        .expect(code::SUCCESS)
        .json();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["alice", "bob"], "{v:#}");
    assert_eq!(
        (&v[0]["pending"], &v[0]["dead"], &v[0]["rows"]),
        (&json!(1), &json!(1), &json!(3))
    );
    let text = pg(&url, &["list", WALLET]).expect(code::SUCCESS).stdout;
    assert!(
        text.lines().nth(1).is_some_and(|l| l.starts_with("alice")),
        "{text}"
    );

    let v = pg(&key_value, &["--json", "show", WALLET, "alice"])
        .expect(code::SUCCESS)
        .json();
    let records = v["records"].as_array().expect("records");
    let places: Vec<(&str, u64)> = records
        .iter()
        .map(|r| (r["space"].as_str().unwrap(), r["id"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        places,
        [("snapshot", 0), ("ops", f.dead.0), ("ops", f.kept.0)],
        "{v:#}"
    );
    assert_eq!(records[0]["payload_hex"], hex(&postcard(&f.alice)));
    assert_eq!(records[0]["header"]["schema"], 2);
    assert_eq!(records[1]["header"]["kind_name"], "dead-letter operation");
    assert_eq!(records[1]["payload_hex"], hex(&postcard(&f.dead.1)));
    assert_eq!(records[2]["payload_hex"], hex(&postcard(&f.kept.1)));

    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("pg.stream");
    pg(&url, &["export", file.to_str().unwrap()]).expect(code::SUCCESS);
    let store = ractor_persist::PostgresStore::open(options).unwrap();
    let expected = support::export_of(&store);
    store.close().unwrap();
    assert_eq!(
        std::fs::read(&file).unwrap(),
        expected,
        "the file is the store's stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_schema_without_a_store_is_refused_and_not_created() {
    let Some(server) = pg_server() else {
        return;
    };
    // A schema name never used: nothing exists under it.
    let schema = server.options().schema_name().to_owned();
    let (url, _) = pg_arguments(&server.params());
    for _ in 0..2 {
        // Refused both times: the first run created nothing the second could open.
        let run = support::cli(&[&url, "--pg-schema", &schema, "namespaces"]);
        run.expect(code::OPEN);
    }
}

#[test]
fn a_postgres_password_is_never_printed() {
    // Nothing listens on port 1: the open fails at once, with a message naming the server.
    let stores = [
        "postgres://ops:S3CRET-PW@127.0.0.1:1/bank".to_owned(),
        "postgres:host=127.0.0.1 port=1 user=ops password=S3CRET-PW dbname=bank".to_owned(),
    ];
    for store in &stores {
        for json in [false, true] {
            let mut args = vec![store.as_str()];
            if json {
                args.push("--json");
            }
            args.push("namespaces");
            let run = support::cli(&args).expect(code::OPEN);
            assert!(
                run.stderr.contains("ops@127.0.0.1:1/bank"),
                "names the server: {run:?}"
            );
            assert!(
                !run.stderr.contains("S3CRET") && !run.stdout.contains("S3CRET"),
                "{run:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_is_refused_by_the_generic_tool_which_knows_no_types() {
    let (store, _) = populated(Backend::Redb).await;
    let before = store.export();
    let state = r#"{"total": 1000, "memo": "edited"}"#;
    let run = store
        .cli(&["edit", WALLET, "alice", "--state", state])
        .expect(code::REFUSED);
    assert!(
        run.stderr.contains("needs the type of namespace `wallet`")
            && run.stderr.contains("Admin::new().actor::<YourActor>()"),
        "{run:?}"
    );
    let run = store
        .cli(&["--json", "edit", WALLET, "alice", "--state", state])
        .expect(code::REFUSED);
    assert_eq!(run.json()["error"]["kind"], "not_typed");
    assert_eq!(store.export(), before, "a refused edit writes nothing");
}

#[test]
fn help_names_the_postgres_schema_the_tool_opens_by_default() {
    let run = support::cli(&["--help"]).expect(code::SUCCESS);
    let default = format!("default `{}`", persist_postgres::DEFAULT_SCHEMA);
    let line = run
        .stdout
        .lines()
        .skip_while(|l| !l.contains("--pg-schema"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(line.contains(&default), "{line}");
}
