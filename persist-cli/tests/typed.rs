//! The admin commands mounted in a user's binary with its actor types registered: `show` and
//! `dead-letters` print states, operations and events as JSON through the user's `Serialize`
//! impls, and `edit` replaces a state in a commit of its own.

use std::path::Path;

use persist_cli::{Admin, exit};
use ractor::call;
use ractor_persist::prelude::*;
use ractor_persist::{EventSourced, RedbStore, Start};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Balance {
    owner: String,
    cents: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Notice {
    Sms { to: String, text: String },
}

enum AccountMsg {
    Open(String, RpcReplyPort<()>),
    Deposit(i64, RpcReplyPort<i64>),
    Peek(RpcReplyPort<Balance>),
    /// A notice to a phone that does not exist: it fails, and with one attempt allowed
    /// becomes a dead letter.
    Bounce(RpcReplyPort<ractor_persist::Settlement>),
}

/// A snapshot-mode account whose notices stay pending until confirmed.
#[derive(Default, Persistent)]
#[persistent(name = "account")]
struct Account;

impl PersistentActor for Account {
    type Msg = AccountMsg;
    type State = Balance;
    type Op = Notice;
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Balance, ActorProcessingErr> {
        Ok(Balance::default())
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: AccountMsg,
        state: &mut Balance,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AccountMsg::Open(owner, reply) => {
                state.owner = owner;
                tx.reply(reply, ());
            }
            AccountMsg::Deposit(cents, reply) => {
                state.cents += cents;
                tx.push(Notice::Sms {
                    to: state.owner.clone(),
                    text: format!("+{cents}"),
                })?;
                tx.reply(reply, state.cents);
            }
            AccountMsg::Peek(reply) => tx.reply(reply, state.clone()),
            AccountMsg::Bounce(reply) => {
                let id = tx.push(Notice::Sms {
                    to: "nowhere".into(),
                    text: "?".into(),
                })?;
                let settled = tx.settlement(&id);
                tx.reply(reply, settled);
            }
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Notice>,
        _: &Balance,
    ) -> Result<Outcome, ActorProcessingErr> {
        Ok(match op.op() {
            Notice::Sms { to, .. } if to == "nowhere" => Outcome::Retry,
            _ => Outcome::KeepUntilConfirmed,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Tally {
    Added(u32),
}

enum TallyMsg {
    Add(u32, RpcReplyPort<u32>),
}

/// An event-sourced counter.
#[derive(Default, Persistent)]
#[persistent(name = "tally", event_sourced)]
struct Counter;

impl PersistentActor for Counter {
    type Msg = TallyMsg;
    type State = u32;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<u32, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        TallyMsg::Add(n, reply): TallyMsg,
        state: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        tx.emit(state, Tally::Added(n))?;
        tx.reply(reply, *state);
        Ok(())
    }
}

impl EventSourced for Counter {
    type Event = Tally;
    fn apply(state: &mut u32, Tally::Added(n): &Tally) -> Result<(), ActorProcessingErr> {
        *state += n;
        Ok(())
    }
}

/// Alice's account with 90 cents and two pending notices, and a tally of 5, in `path`.
async fn make_store(path: &Path) {
    let storage = Storage::new(RedbStore::open(path).unwrap());
    let (alice, _) = Account::spawn_persistent(&storage, "alice", ())
        .await
        .unwrap();
    call!(alice, AccountMsg::Open, "alice".to_owned()).unwrap();
    call!(alice, AccountMsg::Deposit, 40).unwrap();
    call!(alice, AccountMsg::Deposit, 50).unwrap();
    alice.stop_and_wait(None, None).await.unwrap();
    let (tally, _) = ractor::Actor::spawn(None, Counter, Start::new(&storage, "t", ()))
        .await
        .unwrap();
    call!(tally, TallyMsg::Add, 2).unwrap();
    call!(tally, TallyMsg::Add, 3).unwrap();
    tally.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
}

fn typed() -> Admin {
    Admin::new().actor::<Account>().event_sourced::<Counter>()
}

/// Runs `args` (after the program name) through `admin`; returns the exit code and stdout.
fn run(admin: Admin, args: &[&str]) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut argv = vec!["ractor-persist"];
    argv.extend_from_slice(args);
    let code = admin.run_with(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn export(path: &Path) -> Vec<u8> {
    let store = RedbStore::open_existing(path).unwrap();
    let mut out = Vec::new();
    ractor_persist::export(&store, &mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn show_prints_a_registered_actors_state_and_operations_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.redb");
    make_store(&path).await;
    let url = format!("redb:{}", path.display());

    let (code, out, err) = run(typed(), &["--json", &url, "show", "account", "alice"]);
    assert_eq!(code, exit::SUCCESS, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let records = v["records"].as_array().unwrap();
    let snapshot = records.iter().find(|r| r["space"] == "snapshot").unwrap();
    assert_eq!(snapshot["value"], json!({"owner": "alice", "cents": 90}));
    let ops: Vec<&Value> = records.iter().filter(|r| r["space"] == "ops").collect();
    assert_eq!(ops.len(), 2, "two pending notices: {out}");
    assert_eq!(
        ops[0]["value"],
        json!({"Sms": {"to": "alice", "text": "+40"}})
    );
    assert_eq!(
        ops[1]["value"],
        json!({"Sms": {"to": "alice", "text": "+50"}})
    );
    assert_eq!(ops[0]["header"]["kind_name"], "operation");

    // For people too.
    let (code, out, _) = run(typed(), &[&url, "show", "account", "alice"]);
    assert_eq!(code, exit::SUCCESS);
    assert!(
        out.contains(r#"value   {"cents":90,"owner":"alice"}"#),
        "{out}"
    );

    // Every record of both models checks: kinds in their spaces, numbers equal to row ids.
    let (code, out, err) = run(typed(), &["--json", &url, "verify"]);
    assert_eq!(code, exit::SUCCESS, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bad"], json!([]));
    assert_eq!(v["keys"], 2);

    // The generic tool shows the bytes only.
    let (code, out, _) = run(Admin::new(), &["--json", &url, "show", "account", "alice"]);
    assert_eq!(code, exit::SUCCESS);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["records"][0].get("value").is_none());
    assert!(v["records"][0]["payload_hex"].as_str().unwrap().len() > 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn show_prints_an_event_sourced_actors_events_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.redb");
    make_store(&path).await;
    let url = format!("redb:{}", path.display());

    let (code, out, err) = run(typed(), &["--json", &url, "show", "tally", "t"]);
    assert_eq!(code, exit::SUCCESS, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let events: Vec<&Value> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["space"] == "journal")
        .map(|r| &r["value"])
        .collect();
    assert_eq!(events, [&json!({"Added": 2}), &json!({"Added": 3})]);
    let snapshot = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["space"] == "journal snapshot")
        .unwrap();
    assert_eq!(snapshot["value"], json!(0), "init's state, before event 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_replaces_a_state_in_a_commit_of_its_own_and_keeps_the_pending_operations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.redb");
    make_store(&path).await;
    let url = format!("redb:{}", path.display());

    // Bad input writes nothing: a value of another type, an event-sourced actor, an unknown
    // key, and an edit from a binary that does not know the type.
    let before = export(&path);
    for (admin, args, code) in [
        (
            typed(),
            vec!["edit", "account", "alice", "--state", r#"{"cents":"x"}"#],
            exit::REFUSED,
        ),
        (
            typed(),
            vec!["edit", "tally", "t", "--state", "7"],
            exit::REFUSED,
        ),
        (
            typed(),
            vec![
                "edit",
                "account",
                "nobody",
                "--state",
                r#"{"owner":"n","cents":1}"#,
            ],
            exit::REFUSED,
        ),
        (
            Admin::new(),
            vec![
                "edit",
                "account",
                "alice",
                "--state",
                r#"{"owner":"a","cents":1}"#,
            ],
            exit::REFUSED,
        ),
    ] {
        let mut argv = vec![url.as_str()];
        argv.extend(args.iter().copied());
        let (got, _, err) = run(admin, &argv);
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(export(&path), before, "{args:?} wrote nothing");
    }

    let (code, out, err) = run(
        typed(),
        &[
            &url,
            "edit",
            "account",
            "alice",
            "--state",
            r#"{"owner":"alice","cents":100}"#,
        ],
    );
    assert_eq!(code, exit::SUCCESS, "{err}");
    assert!(out.contains("replaced the state of account/alice"), "{out}");

    let storage = Storage::new(RedbStore::open(&path).unwrap());
    let (alice, _) = Account::spawn_persistent(&storage, "alice", ())
        .await
        .unwrap();
    let state = call!(alice, AccountMsg::Peek).unwrap();
    assert_eq!(
        state,
        Balance {
            owner: "alice".into(),
            cents: 100
        }
    );
    // The notices are still pending, under their ids, and new ones number after them.
    assert_eq!(call!(alice, AccountMsg::Deposit, 1).unwrap(), 101);
    alice.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let (code, out, _) = run(typed(), &["--json", &url, "list", "account"]);
    assert_eq!(code, exit::SUCCESS);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["pending"], 3, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_and_list_refuse_a_namespace_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.redb");
    make_store(&path).await;
    let url = format!("redb:{}", path.display());
    for cmd in [["list", "nope"], ["dead-letters", "nope"]] {
        let mut argv = vec!["--json", url.as_str()];
        argv.extend(cmd);
        let (code, out, err) = run(typed(), &argv);
        assert_eq!(code, exit::REFUSED, "{cmd:?}");
        assert!(err.contains("namespace `nope`"), "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"]["kind"], "no_namespace");
    }
}

fn keyring() -> ractor_persist::Transforms {
    let keys = ractor_persist::Keyring::new(1, &[7u8; ractor_persist::KEY_LEN]).unwrap();
    ractor_persist::Transforms::none().encrypt(keys)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_dead_letter_is_requeued_only_with_the_keyring_and_stays_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sealed.redb");
    let config = ractor_persist::StorageConfig::with_transforms(keyring());
    let storage = Storage::with_config(RedbStore::open(&path).unwrap(), config);
    let once =
        ractor_persist::RetryPolicy::new(std::time::Duration::ZERO, std::time::Duration::ZERO, 1)
            .unwrap();
    let start = Start::<Account>::new(&storage, "eve", ()).retry_policy(once);
    let (eve, _) = ractor::Actor::spawn(None, Account, start).await.unwrap();
    let settled = call!(eve, AccountMsg::Bounce).unwrap();
    assert_eq!(settled.wait().await, ractor_persist::Settled::DeadLetter);
    eve.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    let url = format!("redb:{}", path.display());

    // Without the keyring: the header shows, the payload does not, and a requeue (which must
    // rewrite the sealed record) is refused, writing nothing.
    let (code, out, _) = run(Admin::new(), &["--json", &url, "dead-letters"]);
    assert_eq!(code, exit::SUCCESS);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["header"]["encrypted_key"], 1, "{out}");
    let id = v[0]["id"].as_u64().unwrap().to_string();
    let before = export(&path);
    let (code, out, err) = run(typed(), &["--json", &url, "requeue", "account", "eve", &id]);
    assert_eq!(code, exit::REFUSED, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["kind"], "needs_key");
    assert!(err.contains("encrypted with key 1"), "{err}");
    assert_eq!(export(&path), before, "nothing written");

    // An edit without it would write the state in plain text: refused too.
    let (code, out, err) = run(
        typed(),
        &[
            "--json",
            &url,
            "edit",
            "account",
            "eve",
            "--state",
            r#"{"owner":"eve","cents":5}"#,
        ],
    );
    assert_eq!(code, exit::REFUSED, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["kind"], "needs_key");
    assert_eq!(export(&path), before, "nothing written");

    // With it: requeued, sealed again, and the actor's own build reads it.
    let admin = || typed().transforms(keyring());
    let (code, _, err) = run(admin(), &[&url, "requeue", "account", "eve", &id]);
    assert_eq!(code, exit::SUCCESS, "{err}");
    let (code, out, _) = run(admin(), &["--json", &url, "show", "account", "eve"]);
    assert_eq!(code, exit::SUCCESS);
    let v: Value = serde_json::from_str(&out).unwrap();
    let op = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["space"] == "ops")
        .unwrap();
    assert_eq!(
        op["header"]["kind_name"], "operation",
        "pending again: {out}"
    );
    assert_eq!(op["header"]["encrypted_key"], 1, "still encrypted");
    assert_eq!(op["value"], json!({"Sms": {"to": "nowhere", "text": "?"}}));
    // And an edit with it seals the new state.
    let (code, _, err) = run(
        admin(),
        &[
            &url,
            "edit",
            "account",
            "eve",
            "--state",
            r#"{"owner":"eve","cents":5}"#,
        ],
    );
    assert_eq!(code, exit::SUCCESS, "{err}");
    let (_, out, _) = run(admin(), &["--json", &url, "show", "account", "eve"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"][0]["header"]["encrypted_key"], 1, "{out}");
    assert_eq!(
        v["records"][0]["value"],
        json!({"owner": "eve", "cents": 5})
    );
    let (code, out, err) = run(admin(), &["--json", &url, "verify"]);
    assert_eq!(code, exit::SUCCESS, "{out}{err}");

    // verify tells its progress once per key.
    let store = RedbStore::open_existing(&path).unwrap();
    let mut ticks = Vec::new();
    let report =
        ractor_persist::admin::verify(&store, &keyring(), &mut |done, all| ticks.push((done, all)))
            .unwrap();
    assert!(report.bad.is_empty());
    assert_eq!(ticks, [(1, 1)]);
}

/// The next release of the account: a new field, and a migration from version 1.
mod v2 {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub(crate) struct Balance2 {
        pub owner: String,
        pub cents: i64,
        pub frozen: bool,
    }

    impl From<Balance> for Balance2 {
        fn from(v1: Balance) -> Self {
            Balance2 {
                owner: v1.owner,
                cents: v1.cents,
                frozen: false,
            }
        }
    }

    #[derive(Default, Persistent)]
    #[persistent(name = "account", version = 2, migrate(1 = Balance))]
    pub(crate) struct Account2;

    impl PersistentActor for Account2 {
        type Msg = ();
        type State = Balance2;
        type Op = Notice;
        type Arguments = ();

        async fn init(&self, _: ()) -> Result<Balance2, ActorProcessingErr> {
            Ok(Balance2::from(Balance::default()))
        }

        async fn handle(
            &self,
            _: &mut Tx<'_, Self>,
            _: (),
            _: &mut Balance2,
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn show_reads_an_older_schema_through_the_types_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.redb");
    make_store(&path).await;
    let url = format!("redb:{}", path.display());

    let admin = Admin::new().actor::<v2::Account2>();
    let (code, out, err) = run(admin, &["--json", &url, "show", "account", "alice"]);
    assert_eq!(code, exit::SUCCESS, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let snapshot = &v["records"][0];
    assert_eq!(snapshot["header"]["schema"], 1, "stored by version 1");
    assert_eq!(
        snapshot["value"],
        json!({"owner": "alice", "cents": 90, "frozen": false}),
        "shown as version 2 reads it"
    );
    assert_eq!(
        v["records"][1]["value"],
        json!({"Sms": {"to": "alice", "text": "+40"}})
    );
}
