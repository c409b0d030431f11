use ractor_persist::Persistent;

#[derive(Persistent)]
struct AccountActor<T> {
    balance: T,
}

fn main() {}
