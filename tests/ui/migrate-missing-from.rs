use ractor::ActorProcessingErr;
use ractor_persist::{Persistent, PersistentActor, Tx};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct AccountV1 {
    balance: u64,
}

#[derive(Serialize, Deserialize)]
struct AccountV2 {
    balance: i128,
}

#[derive(Serialize, Deserialize)]
struct Account {
    balance: i128,
    owner: String,
}

// There is no `From<AccountV1> for AccountV2`: the chain breaks at its first step.
impl From<AccountV2> for Account {
    fn from(v2: AccountV2) -> Self {
        Account {
            balance: v2.balance,
            owner: String::new(),
        }
    }
}

#[derive(Persistent)]
#[persistent(name = "account", version = 3, migrate(1 = AccountV1, 2 = AccountV2))]
struct AccountActor;

impl PersistentActor for AccountActor {
    type Msg = ();
    type State = Account;
    type Op = ();
    type Arguments = ();

    async fn init(&self, _: ()) -> Result<Account, ActorProcessingErr> {
        Ok(Account {
            balance: 0,
            owner: String::new(),
        })
    }

    async fn handle(
        &self,
        _: &mut Tx<'_, Self>,
        _: (),
        _: &mut Account,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

fn main() {}
