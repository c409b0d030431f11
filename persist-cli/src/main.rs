//! `ractor-persist`: the admin tool for ractor-persist stores. `ractor-persist --help` lists the
//! commands; `docs/operations.md` shows each with its output.

fn main() -> std::process::ExitCode {
    persist_cli::Admin::new().run()
}
