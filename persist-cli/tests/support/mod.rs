//! What the CLI tests share: stores made by the library, the built binary run on them, and a
//! store populated through the runtime.
#![allow(dead_code)]

pub mod actors;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use actors::{Job, Memo, MemoMsg, Purse, WALLET, Wallet, WalletMsg, one_attempt};
use persist_core::admin;
use ractor::{Actor, call};
use ractor_persist::{
    ActorCommit, ActorKey, Marks, RedbStore, Row, Settled, Space, SqliteOptions, SqliteStore,
    Start, Storage, Store,
};
use serde_json::Value;

/// The tool's exit codes (persist-cli's `exit` module), as the process reports them.
pub mod code {
    pub const SUCCESS: i32 = 0;
    pub const REFUSED: i32 = 1;
    pub const DAMAGED: i32 = 3;
    pub const OPEN: i32 = 4;
}

/// What one run of the binary printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    /// Stdout as it was written (an export to `-`).
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// Fails the test unless the run ended with `code`; returns the run.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the built `ractor-persist` with `args` (the store first), its stdin empty.
pub fn cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    cli_with_input(args, &[])
}

/// Runs the built `ractor-persist` with `args`, writing `input` to its stdin.
pub fn cli_with_input<S: AsRef<std::ffi::OsStr>>(args: &[S], input: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ractor-persist"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the ractor-persist binary");
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    // Written from a thread, so a tool that does not read its stdin cannot block the test.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for the binary");
    writer.join().unwrap();
    Run {
        // Killed by a signal: no code, which no assertion expects.
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stdout_bytes: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The backends a store file can be of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Redb,
    Sqlite,
}

/// A store file in a temporary directory of its own.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub backend: Backend,
}

impl TestStore {
    /// A path for a new store of `backend`; no file is made yet.
    pub fn new(backend: Backend) -> TestStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(match backend {
            Backend::Redb => "store.redb",
            Backend::Sqlite => "store.sqlite",
        });
        TestStore { dir, path, backend }
    }

    /// The tool's argument for this store.
    pub fn url(&self) -> String {
        let scheme = match self.backend {
            Backend::Redb => "redb",
            Backend::Sqlite => "sqlite",
        };
        format!("{scheme}:{}", self.path.display())
    }

    /// Runs the tool on this store: `args` after the store argument.
    pub fn cli(&self, args: &[&str]) -> Run {
        let mut all = vec![self.url()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        cli(&all)
    }

    /// Opens (creating the file if needed) a runtime on the store.
    pub fn storage(&self) -> Storage {
        match self.backend {
            Backend::Redb => Storage::new(RedbStore::open(&self.path).expect("open redb")),
            Backend::Sqlite => Storage::new(SqliteStore::open(&self.path).expect("open sqlite")),
        }
    }

    /// Creates an empty store in the file, closed again.
    pub fn create_empty(&self) {
        match self.backend {
            Backend::Redb => RedbStore::open(&self.path).unwrap().close().unwrap(),
            Backend::Sqlite => SqliteStore::open(&self.path).unwrap().close().unwrap(),
        }
    }

    /// Runs `f` on the store opened through the library (an existing store only), and closes
    /// it before returning, so the tool may open it next.
    pub fn with<T>(&self, f: impl FnOnce(&dyn Store) -> T) -> T {
        match self.backend {
            Backend::Redb => {
                let s = RedbStore::open_existing(&self.path).expect("open redb");
                let out = f(&s);
                s.close().unwrap();
                out
            }
            Backend::Sqlite => {
                let o = SqliteOptions::new().existing_only();
                let s = SqliteStore::open_with(&self.path, o).expect("open sqlite");
                let out = f(&s);
                s.close().unwrap();
                out
            }
        }
    }

    /// The store's whole export stream: every row and every mark.
    pub fn export(&self) -> Vec<u8> {
        self.with(export_of)
    }

    /// Every row of `key`, read without taking an epoch.
    pub fn rows(&self, key: &ActorKey) -> Vec<Row> {
        self.with(|s| s.read(key, None, 0..=u64::MAX).unwrap())
    }

    /// The marks of `key`.
    pub fn marks(&self, key: &ActorKey) -> Marks {
        self.with(|s| marks_of(s, key))
    }

    /// Writes `rows` into `key`'s record through the seam, under a new epoch.
    pub fn plant(&self, key: &ActorKey, rows: Vec<(Space, u64, Vec<u8>)>) {
        self.with(|s| {
            let epoch = s.open_actor(key, &[]).unwrap().epoch;
            let mut commit = ActorCommit::new(key.clone(), epoch);
            for (space, id, bytes) in rows {
                commit = commit.put(space, id, bytes);
            }
            s.commit(&[commit]).unwrap();
        })
    }
}

pub fn export_of(store: &dyn Store) -> Vec<u8> {
    let mut out = Vec::new();
    ractor_persist::export(store, &mut out).expect("export");
    out
}

pub fn marks_of(store: &dyn Store, key: &ActorKey) -> Marks {
    store
        .scan()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, m)| m)
        .unwrap_or_default()
}

pub fn wallet(key: &str) -> ActorKey {
    ActorKey::new(WALLET, key)
}

/// `bytes` as the tool prints them: two hex digits a byte, separated by spaces.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn postcard<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap()
}

/// What [`populate`] stored.
pub struct Fixture {
    /// Alice's state.
    pub alice: Purse,
    /// Alice's dead letter: its id and job.
    pub dead: (u64, Job),
    /// Alice's pending operation (kept until confirmed): its id and job.
    pub kept: (u64, Job),
    /// Bob's state (no operations).
    pub bob: Purse,
    /// The memo of `memo/m1`.
    pub memo: String,
}

/// Stores, through the runtime: `wallet/alice` with a state, a dead letter and a pending
/// operation; `wallet/bob` with a state only; `memo/m1` with a state. Closes the storage.
pub async fn populate(storage: &Storage) -> Fixture {
    let alice_wallet = Wallet::failing();
    let start = Start::new(storage, "alice", ()).retry_policy(one_attempt());
    let (alice, _) = Actor::spawn(None, alice_wallet, start).await.unwrap();
    let flaky = Job::flaky(7);
    let (dead_id, settled) = call!(alice, WalletMsg::Push, flaky.clone()).unwrap();
    assert_eq!(
        settled.wait().await,
        Settled::DeadLetter,
        "the flaky job died"
    );
    let kept = Job::kept(8);
    // The burial of the dead letter rides on this message's commit.
    let (kept_id, _) = call!(alice, WalletMsg::Push, kept.clone()).unwrap();
    let alice_state = call!(alice, WalletMsg::Peek).unwrap();
    alice.stop_and_wait(None, None).await.unwrap();

    let (bob, _) = Actor::spawn(None, Wallet::default(), Start::new(storage, "bob", ()))
        .await
        .unwrap();
    call!(bob, WalletMsg::Add, 5).unwrap();
    let bob_state = call!(bob, WalletMsg::Peek).unwrap();
    bob.stop_and_wait(None, None).await.unwrap();

    let (m1, _) = Actor::spawn(None, Memo, Start::new(storage, "m1", ()))
        .await
        .unwrap();
    call!(m1, MemoMsg::Set, "hello".to_owned()).unwrap();
    m1.stop_and_wait(None, None).await.unwrap();
    storage.close().await.unwrap();
    Fixture {
        alice: alice_state,
        dead: (dead_id, flaky),
        kept: (kept_id, kept),
        bob: bob_state,
        memo: "hello".to_owned(),
    }
}

/// A populated store of `backend`, checked through the library: alice's dead letter and
/// pending operation are stored as such.
pub async fn populated(backend: Backend) -> (TestStore, Fixture) {
    let store = TestStore::new(backend);
    let fixture = populate(&store.storage()).await;
    let (dead, pending) = store.with(|s| {
        let dead: Vec<u64> = admin::dead_letters(s, Some(WALLET), &Default::default())
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        let (_, rows) = admin::record(s, &wallet("alice")).unwrap();
        let pending: Vec<u64> = rows
            .iter()
            .filter(|r| r.space == Space::OPS)
            .filter(|r| admin::inspect(&r.bytes).unwrap().is_pending_op())
            .map(|r| r.id)
            .collect();
        (dead, pending)
    });
    assert_eq!(dead, vec![fixture.dead.0], "the dead letter is stored");
    assert_eq!(pending, vec![fixture.kept.0], "the kept job is stored");
    (store, fixture)
}

/// Whether `dir` holds exactly the files named.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
