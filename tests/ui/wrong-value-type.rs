use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(crate = ractor_persist)]
struct AccountActor;

fn main() {}
