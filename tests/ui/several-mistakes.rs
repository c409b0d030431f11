use ractor_persist::Persistent;

#[derive(Persistent)]
#[persistent(name = "", nmae = "account", crate = 1)]
#[persistent(name = "ledger")]
struct AccountActor<'a> {
    owner: &'a str,
}

fn main() {}
