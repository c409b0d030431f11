use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(version = 2, migrate(1 = AccountV1, 1 = AccountV1b))]
struct AccountActor;

fn main() {}
