use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(name = "bank/account")]
struct AccountActor;

fn main() {}
