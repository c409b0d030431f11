use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(nmae = "account")]
struct AccountActor;

fn main() {}
