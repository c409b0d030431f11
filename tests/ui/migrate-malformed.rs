use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(version = 3, migrate(1 => AccountV1, AccountV2))]
struct AccountActor;

fn main() {}
