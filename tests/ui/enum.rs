use ractor_persist::Persistent;

#[derive(Persistent)]
enum AccountActor {
    Open,
    Closed,
}

fn main() {}
