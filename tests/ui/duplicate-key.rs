use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(name = "account")]
#[persistent(name = "ledger")]
struct AccountActor;

fn main() {}
