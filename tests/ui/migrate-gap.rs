use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(version = 4, migrate(1 = AccountV1, 3 = AccountV3))]
struct AccountActor;

fn main() {}
