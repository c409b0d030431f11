//! Output for people (aligned tables, headers on one line) and for scripts (JSON).

use std::io::{self, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use persist_core::admin::RecordHeader;
use serde_json::{Value, json};

/// Writes `rows` under `heads` as columns aligned on the widest cell.
pub(crate) fn table(out: &mut dyn Write, heads: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = heads.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = w - cell.chars().count();
            text.extend(std::iter::repeat_n(' ', pad));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut heads.iter().copied())?;
    for row in rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// `bytes` as hex, the first `limit` bytes when given.
pub(crate) fn hex(bytes: &[u8], limit: Option<usize>) -> String {
    let shown = limit.map_or(bytes.len(), |l| l.min(bytes.len()));
    let mut s = String::with_capacity(shown * 3 + 24);
    for (i, b) in bytes[..shown].iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    if shown < bytes.len() {
        s.push_str(&format!(" … ({} more bytes)", bytes.len() - shown));
    }
    s
}

/// A header's transforms, for people.
pub(crate) fn transforms(h: &RecordHeader) -> String {
    match (h.compressed, h.encrypted) {
        (false, None) => "none".to_owned(),
        (true, None) => "lz4".to_owned(),
        (false, Some(k)) => format!("encrypted (key {k})"),
        (true, Some(k)) => format!("lz4, encrypted (key {k})"),
    }
}

/// A header on one line, for people.
pub(crate) fn header_line(h: &RecordHeader) -> String {
    format!(
        "{} (kind {})  format {}  schema {}  epoch {}  seq {}  fingerprint {:#018x}  \
         transforms {}  body {} bytes",
        h.kind_name,
        h.kind,
        h.format,
        h.schema,
        h.epoch,
        h.sequence,
        h.fingerprint,
        transforms(h),
        h.body_len
    )
}

/// A header as JSON.
pub(crate) fn header_json(h: &RecordHeader) -> Value {
    json!({
        "format": h.format,
        "kind": h.kind,
        "kind_name": h.kind_name,
        "schema": h.schema,
        "epoch": h.epoch,
        "sequence": h.sequence,
        "fingerprint": format!("{:#018x}", h.fingerprint),
        "compressed": h.compressed,
        "encrypted_key": h.encrypted,
        "body_len": h.body_len,
    })
}

/// A progress bar on stderr for `len` steps; hidden when stderr is not a terminal, or with
/// `--json`.
pub(crate) fn bar(len: Option<u64>, json: bool, what: &str, bytes: bool) -> ProgressBar {
    let target = if json {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(len, target);
    let template = match (len.is_some(), bytes) {
        (true, true) => "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
        (true, false) => "{msg} [{bar:40}] {pos}/{len} ({eta})",
        (false, _) => "{msg} {spinner} {bytes}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}
