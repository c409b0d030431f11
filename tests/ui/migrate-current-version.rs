use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(version = 3, migrate(1 = AccountV1, 2 = AccountV2, 3 = AccountV3))]
struct AccountActor;

fn main() {}
