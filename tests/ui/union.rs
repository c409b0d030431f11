use ractor_persist::Persistent;

#[derive(Persistent)]
union AccountActor {
    balance: u64,
}

fn main() {}
