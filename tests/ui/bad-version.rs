use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(version = "2")]
struct AccountActor;

#[derive(Persistent)]
#[persistent(version = 0)]
struct LedgerActor;

fn main() {}
