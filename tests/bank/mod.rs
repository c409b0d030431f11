//! A bank of persistent accounts that move money with `Tx::send`: the actor the delivery
//! tests, the bank simulation and the kill loop share.
//!
//! A transfer debits its source and sends a `Credit` to the destination in the same commit;
//! the destination applies the credit through the runtime's inbox, exactly once in effect.
//! Deposits and transfers are idempotent requests (`Tx::once`): a client that repeats one
//! gets the first reply and nothing is applied twice. Each account records the transfer
//! ids it debited and credited, so a test can count what was applied.
#![allow(dead_code)]

use ractor::{ActorProcessingErr, RpcReplyPort};
use ractor_persist::{
    ActorKey, Control, DecodeReason, Inbound, Once, OpId, Persistent, PersistentActor, Settlement,
    Tx,
};
use serde::{Deserialize, Serialize};

/// The namespace of the accounts.
pub const NS: &str = "account";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub balance: u64,
    /// Deposits applied: (request key, amount).
    pub deposits: Vec<(String, u64)>,
    /// Transfers debited here: (transfer id, amount).
    pub debited: Vec<(u64, u64)>,
    /// Transfers credited here: (transfer id, amount).
    pub credited: Vec<(u64, u64)>,
}

/// What one account sends another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub transfer: u64,
    pub amount: u64,
}

pub enum AccountMsg {
    /// Adds `amount`, once per request key; replies with the balance after it.
    Deposit {
        request: String,
        amount: u64,
        reply: RpcReplyPort<Result<u64, String>>,
    },
    /// Moves `amount` to account `to`, once per transfer id; replies with the id of the
    /// credit message, or why it was refused.
    Transfer {
        transfer: u64,
        to: String,
        amount: u64,
        reply: RpcReplyPort<Result<OpId, String>>,
    },
    /// A credit from another account (through `inbound`).
    Credit(Credit),
    /// A future of how the message `id` ends.
    Settle(OpId, RpcReplyPort<Settlement>),
    Get(RpcReplyPort<Balance>),
    Persist(Control<()>),
}

#[derive(Default, Persistent)]
#[persistent(name = "account")]
pub struct Account;

impl PersistentActor for Account {
    type Msg = AccountMsg;
    type State = Balance;
    type Op = ();
    type Arguments = u64;

    async fn init(&self, opening: u64) -> Result<Balance, ActorProcessingErr> {
        Ok(Balance {
            balance: opening,
            ..Balance::default()
        })
    }

    async fn handle(
        &self,
        tx: &mut Tx<'_, Self>,
        msg: AccountMsg,
        state: &mut Balance,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AccountMsg::Deposit {
                request,
                amount,
                reply,
            } => match tx.once(&request, &amount, reply) {
                Once::First(first) => {
                    state.balance += amount;
                    state.deposits.push((request, amount));
                    tx.reply_once(first, Ok(state.balance))?;
                }
                Once::Repeated => {}
                Once::Refused(port, why) => tx.reply(port, Err(why.to_string())),
            },
            AccountMsg::Transfer {
                transfer,
                to,
                amount,
                reply,
            } => match tx.once(&format!("transfer-{transfer}"), &(&to, amount), reply) {
                Once::First(first) => {
                    if state.balance < amount {
                        tx.reply_once(first, Err("insufficient funds".to_owned()))?;
                        return Ok(());
                    }
                    state.balance -= amount;
                    state.debited.push((transfer, amount));
                    let id = tx.send_to::<Account, _>(&to, &Credit { transfer, amount })?;
                    tx.reply_once(first, Ok(id))?;
                }
                Once::Repeated => {}
                Once::Refused(port, why) => tx.reply(port, Err(why.to_string())),
            },
            AccountMsg::Credit(credit) => {
                state.balance += credit.amount;
                state.credited.push((credit.transfer, credit.amount));
            }
            AccountMsg::Settle(id, reply) => {
                let settlement = tx.settlement(&id);
                tx.reply(reply, settlement);
            }
            AccountMsg::Get(reply) => tx.reply(reply, state.clone()),
            AccountMsg::Persist(_) => {}
        }
        Ok(())
    }

    fn control(msg: AccountMsg) -> Result<Control<()>, AccountMsg> {
        match msg {
            AccountMsg::Persist(c) => Ok(c),
            other => Err(other),
        }
    }

    fn wrap_control(c: Control<()>) -> Option<AccountMsg> {
        Some(AccountMsg::Persist(c))
    }

    fn inbound(msg: Inbound) -> Result<AccountMsg, DecodeReason> {
        Ok(AccountMsg::Credit(msg.decode()?))
    }
}

pub fn account(key: &str) -> ActorKey {
    ActorKey::new(NS, key)
}
