use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(name = "")]
struct AccountActor;

fn main() {}
