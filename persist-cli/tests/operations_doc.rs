//! `docs/operations.md` shows every command with its real output: this test runs each
//! ```` ```console ```` block's commands, in order, against the demo stores of the
//! `bank_admin` example, and compares what they print with what the document says.
//!
//! `ractor-persist ...` runs the built binary; `bank-admin ...` runs the example's typed
//! admin (the bank's own binary) in this process. A command that exits non-zero shows
//! `[exit N]` after its output. Run with `BLESS=1` to write today's output into the document.

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
#[path = "../examples/bank_admin.rs"]
mod bank_admin;

fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md")
}

/// Splits a command line on spaces, keeping 'single-quoted' words whole.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// Runs one command line in `dir`; returns what it printed, as the document shows it.
fn run(dir: &Path, line: &str) -> String {
    let args = words(line);
    let (program, args) = args.split_first().expect("a command");
    let (code, stdout, stderr) = match program.as_str() {
        "ractor-persist" => {
            let out = Command::new(env!("CARGO_BIN_EXE_ractor-persist"))
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run the tool");
            (
                out.status.code().expect("exited") as u8,
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        }
        "bank-admin" => {
            // In this process: paths are made absolute, and shown relative again below.
            let args = args.iter().map(|a| {
                for scheme in ["redb:", "sqlite:"] {
                    if let Some(path) = a.strip_prefix(scheme) {
                        return format!("{scheme}{}", dir.join(path).display());
                    }
                }
                a.clone()
            });
            let argv = std::iter::once("bank-admin".to_owned()).chain(args);
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = bank_admin::admin().run_with(argv, &mut out, &mut err);
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        }
        other => panic!("the document runs `ractor-persist` and `bank-admin`, not `{other}`"),
    };
    let mut shown = stdout + &stderr;
    if code != 0 {
        shown.push_str(&format!("[exit {code}]\n"));
    }
    shown.replace(&format!("{}/", dir.display()), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_operations_md_prints_what_the_document_shows() {
    let dir = tempfile::tempdir().unwrap();
    bank_admin::make_demo(dir.path()).await.unwrap();
    let doc = std::fs::read_to_string(doc_path()).unwrap();

    let mut blessed = String::new();
    let mut wrong = Vec::new();
    let mut commands = 0;
    let mut in_console = false;
    let mut expected = String::new();
    let mut pending: Option<String> = None;
    let mut flush = |pending: &mut Option<String>, expected: &mut String, out: &mut String| {
        if let Some(line) = pending.take() {
            let got = run(dir.path(), &line);
            if got != *expected {
                wrong.push(format!(
                    "$ {line}\n--- the document shows:\n{expected}--- the command printed:\n{got}"
                ));
            }
            out.push_str(&got);
        }
        expected.clear();
    };
    for line in doc.lines() {
        if !in_console {
            blessed.push_str(line);
            blessed.push('\n');
            in_console = line.trim_end() == "```console";
            continue;
        }
        if line.trim_end() == "```" {
            flush(&mut pending, &mut expected, &mut blessed);
            blessed.push_str("```\n");
            in_console = false;
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            flush(&mut pending, &mut expected, &mut blessed);
            blessed.push_str(line);
            blessed.push('\n');
            pending = Some(cmd.to_owned());
            commands += 1;
        } else {
            expected.push_str(line);
            expected.push('\n');
        }
    }
    assert!(commands >= 20, "the document runs {commands} commands");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(doc_path(), blessed).unwrap();
        return;
    }
    assert!(
        wrong.is_empty(),
        "{} of {commands} commands print other than docs/operations.md shows (BLESS=1 \
         rewrites it):\n\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
