use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(name = 5)]
struct AccountActor;

#[derive(Persistent)]
#[persistent(name)]
struct LedgerActor;

fn main() {}
