use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(name = "account ")]
struct AccountActor;

fn main() {}
