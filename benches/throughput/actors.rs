//! The actors measured: the persistent one, the hand-written redb baseline, and a plain
//! in-memory ractor actor (the floor: what a message costs with no persistence at all).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_persist::prelude::*;
use redb::{Database, Durability, TableDefinition};
use serde::{Deserialize, Serialize};

/// Padding that makes the snapshot envelope about 100 bytes (32-byte header + ~68 payload).
pub const ROW_PAD: usize = 64;

/// The durable state: a counter and `pad` real bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub n: u64,
    pub pad: Vec<u8>,
}

impl Account {
    /// A state whose `pad` is `len` filled (non-zero, touched) bytes.
    pub fn new(len: usize) -> Self {
        Account {
            n: 0,
            pad: (0..len).map(|i| (i * 31 + 7) as u8).collect(),
        }
    }

    /// The state change every measured message makes: the counter and one byte.
    pub fn bump(&mut self) -> u64 {
        self.n += 1;
        let i = self.n as usize % self.pad.len();
        self.pad[i] = self.pad[i].wrapping_add(1);
        self.n
    }
}

/// The side effect each state-changing message pushes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub n: u64,
    pub keep: bool,
    /// Empty, or 64 bytes for the wide-op workload.
    pub blob: Vec<u8>,
}

/// Length of the wide op's blob.
pub const WIDE_OP: usize = 64;

pub enum Msg {
    /// Changes the state and pushes one op that `perform` reports `Done`.
    Add(RpcReplyPort<u64>),
    /// Changes the state and pushes one op kept until confirmed (to build the recovery store).
    AddKept(RpcReplyPort<u64>),
    /// Changes nothing.
    Peek(RpcReplyPort<u64>),
    /// Like `Add`, with a 64-byte blob in the op.
    AddWide(RpcReplyPort<u64>),
}

/// The library's actor. `Arguments` is the length of the state's padding.
#[derive(Default, Persistent)]
#[persistent(name = "bench")]
pub struct Acct;

impl PersistentActor for Acct {
    type Msg = Msg;
    type State = Account;
    type Op = Note;
    type Arguments = usize;

    async fn init(&self, pad: usize) -> Result<Account, ActorProcessingErr> {
        Ok(Account::new(pad))
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: Msg,
        state: &mut Account,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Add(port) => {
                let n = state.bump();
                tx.push(Note {
                    n,
                    keep: false,
                    blob: Vec::new(),
                })?;
                tx.reply(port, n);
            }
            Msg::AddWide(port) => {
                let n = state.bump();
                tx.push(Note {
                    n,
                    keep: false,
                    blob: vec![0x5A; WIDE_OP],
                })?;
                tx.reply(port, n);
            }
            Msg::AddKept(port) => {
                let n = state.bump();
                tx.push(Note {
                    n,
                    keep: true,
                    blob: Vec::new(),
                })?;
                tx.reply(port, n);
            }
            Msg::Peek(port) => tx.reply(port, state.n),
        }
        Ok(())
    }

    async fn perform(
        &self,
        op: &Pending<Note>,
        _: &Account,
    ) -> Result<Outcome, ActorProcessingErr> {
        Ok(if op.op().keep {
            Outcome::KeepUntilConfirmed
        } else {
            Outcome::Done
        })
    }
}

/// The hand-written baseline's tables (its own file, so its own names).
pub const NAIVE_STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("naive.states");
pub const NAIVE_OPS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("naive.ops");

/// The hand-written baseline: a plain ractor actor that, per message, clones its state,
/// mutates the clone, and commits state + op in one redb transaction (`Durability::Immediate`)
/// called on its own tokio task, as a naive user would. The previous message's op (performed
/// at once) is deleted in the same transaction, so it writes the same rows as the library.
pub struct Naive;

pub struct NaiveState {
    db: Arc<Database>,
    key: String,
    account: Account,
    seq: u64,
}

impl Actor for Naive {
    type Msg = Msg;
    type State = NaiveState;
    type Arguments = (Arc<Database>, String);

    async fn pre_start(
        &self,
        _: ActorRef<Msg>,
        (db, key): (Arc<Database>, String),
    ) -> Result<NaiveState, ActorProcessingErr> {
        Ok(NaiveState {
            db,
            key,
            account: Account::new(ROW_PAD),
            seq: 0,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        msg: Msg,
        st: &mut NaiveState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(NaiveWrite {
            port,
            next,
            n,
            state_row,
            op_row,
        }) = NaiveWrite::of(msg, &st.account)?
        else {
            return Ok(());
        };
        let mut txn = st.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut states = txn.open_table(NAIVE_STATES)?;
            states.insert(st.key.as_str(), state_row.as_slice())?;
            let mut ops = txn.open_table(NAIVE_OPS)?;
            ops.insert((st.key.as_str(), st.seq), op_row.as_slice())?;
            if st.seq > 0 {
                ops.remove((st.key.as_str(), st.seq - 1))?;
            }
        }
        txn.commit()?;
        st.account = next;
        st.seq += 1;
        let _ = port.send(n);
        Ok(())
    }
}

/// What a hand-written baseline actor writes for one state-changing message.
pub struct NaiveWrite {
    /// Where the reply goes once the write returned.
    pub port: RpcReplyPort<u64>,
    /// The state after the message.
    pub next: Account,
    /// The reply.
    pub n: u64,
    /// The state's row, as the library would encode it.
    pub state_row: Vec<u8>,
    /// The op's row, as the library would encode it.
    pub op_row: Vec<u8>,
}

impl NaiveWrite {
    /// The write `msg` asks of an actor holding `account`; `None` after answering a `Peek`,
    /// which writes nothing.
    pub fn of(msg: Msg, account: &Account) -> Result<Option<NaiveWrite>, postcard::Error> {
        let port = match msg {
            Msg::Add(port) | Msg::AddKept(port) | Msg::AddWide(port) => port,
            Msg::Peek(port) => {
                let _ = port.send(account.n);
                return Ok(None);
            }
        };
        let mut next = account.clone();
        let n = next.bump();
        let state_row = postcard::to_allocvec(&next)?;
        let op_row = postcard::to_allocvec(&Note {
            n,
            keep: false,
            blob: Vec::new(),
        })?;
        Ok(Some(NaiveWrite {
            port,
            next,
            n,
            state_row,
            op_row,
        }))
    }
}

/// A plain ractor actor holding the same state in memory, persisting nothing: the floor.
pub struct Plain;

impl Actor for Plain {
    type Msg = Msg;
    type State = Account;
    type Arguments = usize;

    async fn pre_start(&self, _: ActorRef<Msg>, pad: usize) -> Result<Account, ActorProcessingErr> {
        Ok(Account::new(pad))
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        msg: Msg,
        state: &mut Account,
    ) -> Result<(), ActorProcessingErr> {
        let _ = match msg {
            Msg::Add(port) | Msg::AddKept(port) | Msg::AddWide(port) => port.send(state.bump()),
            Msg::Peek(port) => port.send(state.n),
        };
        Ok(())
    }
}
