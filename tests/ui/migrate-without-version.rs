use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(migrate(1 = AccountV1))]
struct AccountActor;

fn main() {}
