use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(crate = "ractor persist")]
struct AccountActor;

fn main() {}
