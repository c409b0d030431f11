//! The commands: each opens the store, does its one thing, prints what it read or changed.

use std::fs::{File, OpenOptions as FileOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use persist_core::admin::{self, Changed, Payload};
use persist_core::{ActorKey, ImportMode, Space, Store};
use serde_json::{Value, json};

use crate::open::{Location, OpenOptions};
use crate::output::{bar, header_json, header_line, hex, table};
use crate::{Admin, Cli, CliError, Command, QuarantineCommand, exit};

/// How many payload bytes `show` prints without `--full`.
const SHOWN: usize = 64;

/// Runs `cli`; returns the exit code of a command that ran (verify's tells whether all was
/// well).
pub(crate) fn run(admin: &Admin, cli: Cli, out: &mut dyn Write) -> Result<u8, CliError> {
    let location = Location::parse(&cli.store)?;
    let options = OpenOptions {
        table_prefix: cli.table_prefix.clone(),
        schema: cli.pg_schema.clone(),
    };
    // An edit needs the type: refused before the store is opened.
    if let Command::Edit { namespace, .. } = &cli.command
        && admin.typed(namespace).is_none()
    {
        return Err(CliError::NotTyped {
            namespace: namespace.clone(),
            what: "edit",
        });
    }
    // An export's file is checked before the store is opened, so a refusal opens nothing.
    if let Command::Export { file } = &cli.command
        && file.as_os_str() != "-"
        && file.exists()
    {
        return Err(CliError::ExportExists { path: file.clone() });
    }
    // An import's stream must be readable before a store is opened (or created) for it.
    if let Command::Import { file, .. } = &cli.command
        && file.as_os_str() != "-"
    {
        File::open(file).map_err(|source| CliError::Io {
            path: file.clone(),
            source,
        })?;
    }
    let create = matches!(cli.command, Command::Import { create: true, .. });
    // The file `import --create` makes, to be removed again if the import fails.
    let created = match &location {
        Location::Redb(path) | Location::Sqlite(path) if create && !path.exists() => {
            Some(path.clone())
        }
        _ => None,
    };
    let store = location.open(&options, create)?;
    let result = command(admin, cli, &location, &*store, out);
    if let (Err(_), Some(path)) = (&result, created) {
        drop(store);
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = path.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
    result
}

/// Runs `cli`'s command on the opened `store`.
fn command(
    admin: &Admin,
    cli: Cli,
    location: &Location,
    store: &dyn Store,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let json = cli.json;
    let mut p = Printer { out, json };
    match cli.command {
        Command::Namespaces => namespaces(store, &mut p)?,
        Command::List { namespace } => list(store, &namespace, &mut p)?,
        Command::Show {
            namespace,
            key,
            full,
        } => show(admin, store, &ActorKey::new(namespace, key), full, &mut p)?,
        Command::Verify => return verify(admin, store, location, &mut p),
        Command::DeadLetters { namespace } => {
            dead_letters(admin, store, namespace.as_deref(), &mut p)?
        }
        Command::Requeue { namespace, key, id } => {
            let key = ActorKey::new(namespace, key);
            let changed = admin::requeue(store, &key, id, &admin.transforms)?;
            p.changed(
                &changed,
                &format!(
                    "requeued operation #{id} of {key} under the new epoch {}: rewritten as a \
                     pending operation with no failed attempts; the actor performs it at its \
                     next start",
                    changed.epoch
                ),
                json!({"command": "requeue", "id": id}),
            )?;
        }
        Command::Delete { namespace, key } => {
            let key = ActorKey::new(namespace, key);
            let changed = admin::delete(store, &key)?;
            p.changed(
                &changed,
                &format!(
                    "deleted {key} under the new epoch {}: {} rows removed; its quarantined \
                     records and its marks stay, so no operation id is used again",
                    changed.epoch, changed.removed
                ),
                json!({"command": "delete"}),
            )?;
        }
        Command::Quarantine(QuarantineCommand::List { namespace }) => {
            quarantine_list(store, namespace.as_deref(), &mut p)?
        }
        Command::Quarantine(QuarantineCommand::Restore {
            namespace,
            key,
            epoch,
        }) => {
            let key = ActorKey::new(namespace, key);
            let changed = admin::restore(store, &key, epoch)?;
            p.changed(
                &changed,
                &format!(
                    "restored the record of {key} quarantined by epoch {epoch}, under the new \
                     epoch {}: {} rows put back, the quarantined copy removed",
                    changed.epoch, changed.written
                ),
                json!({"command": "quarantine restore", "quarantined_by": epoch}),
            )?;
        }
        Command::Export { file } => export(store, &file, &mut p)?,
        Command::Import { file, replace, .. } => import(store, &file, replace, &mut p)?,
        Command::Stats => stats(store, location, &mut p)?,
        Command::Edit {
            namespace,
            key,
            state,
        } => {
            let typed = admin.typed(&namespace).expect("checked above");
            let key = ActorKey::new(namespace, key);
            let changed = typed.edit(store, &key, &state, &admin.transforms)?;
            p.changed(
                &changed,
                &format!(
                    "replaced the state of {key} under the new epoch {}; its pending operations \
                     are unchanged",
                    changed.epoch
                ),
                json!({"command": "edit"}),
            )?;
        }
    }
    Ok(exit::SUCCESS)
}

/// Where a command prints, and how.
struct Printer<'a> {
    out: &'a mut dyn Write,
    json: bool,
}

impl Printer<'_> {
    fn json(&mut self, v: &Value) -> Result<(), CliError> {
        writeln!(self.out, "{v:#}").map_err(stdout)
    }

    fn line(&mut self, text: &str) -> Result<(), CliError> {
        writeln!(self.out, "{text}").map_err(stdout)
    }

    fn table(&mut self, heads: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
        table(self.out, heads, rows).map_err(stdout)
    }

    /// What a writing command changed.
    fn changed(&mut self, c: &Changed, text: &str, mut v: Value) -> Result<(), CliError> {
        if self.json {
            v["namespace"] = json!(c.key.namespace());
            v["key"] = json!(c.key.key());
            v["epoch"] = json!(c.epoch);
            v["rows_written"] = json!(c.written);
            v["rows_removed"] = json!(c.removed);
            self.json(&v)
        } else {
            self.line(text)
        }
    }
}

fn stdout(source: std::io::Error) -> CliError {
    CliError::Io {
        path: PathBuf::from("<stdout>"),
        source,
    }
}

fn namespaces(store: &dyn Store, p: &mut Printer<'_>) -> Result<(), CliError> {
    let list = admin::namespaces(store)?;
    if p.json {
        let v: Vec<Value> = list
            .iter()
            .map(|(ns, keys)| json!({"namespace": ns, "keys": keys}))
            .collect();
        return p.json(&Value::Array(v));
    }
    let rows: Vec<Vec<String>> = list
        .into_iter()
        .map(|(ns, keys)| vec![ns, keys.to_string()])
        .collect();
    p.table(&["NAMESPACE", "KEYS"], &rows)
}

fn list(store: &dyn Store, namespace: &str, p: &mut Printer<'_>) -> Result<(), CliError> {
    let actors = admin::actors(store, namespace)?;
    if p.json {
        let v: Vec<Value> = actors
            .iter()
            .map(|a| {
                json!({
                    "key": a.key.key(), "model": a.model, "rows": a.rows, "bytes": a.bytes,
                    "pending": a.pending, "dead": a.dead, "quarantined": a.quarantined,
                    "damaged": a.damaged, "epoch": a.marks.epoch, "floor": a.marks.floor,
                })
            })
            .collect();
        return p.json(&Value::Array(v));
    }
    let rows: Vec<Vec<String>> = actors
        .iter()
        .map(|a| {
            vec![
                a.key.key().to_owned(),
                a.model.to_owned(),
                a.rows.to_string(),
                a.bytes.to_string(),
                a.pending.to_string(),
                a.dead.to_string(),
                a.quarantined.to_string(),
                a.damaged.to_string(),
                a.marks.epoch.to_string(),
                a.marks.floor.to_string(),
            ]
        })
        .collect();
    p.table(
        &[
            "KEY",
            "MODEL",
            "ROWS",
            "BYTES",
            "PENDING",
            "DEAD",
            "QUARANTINED",
            "DAMAGED",
            "EPOCH",
            "FLOOR",
        ],
        &rows,
    )
}

/// The typed value of a record, if the namespace's type is known and the record holds one.
fn typed_value(admin: &Admin, key: &ActorKey, space: Space, p: &Payload) -> Option<Value> {
    let typed = admin.typed(key.namespace())?;
    let r = match space {
        Space::SNAPSHOT | Space::JOURNAL_SNAPSHOT if p.header.kind_name == "snapshot" => {
            typed.state(p)
        }
        Space::OPS => typed.op(p),
        Space::JOURNAL => typed.event(p)?,
        _ => return None,
    };
    Some(match r {
        Ok(v) => v,
        Err(e) => json!({"decode_error": e}),
    })
}

fn show(
    admin: &Admin,
    store: &dyn Store,
    key: &ActorKey,
    full: bool,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    let (marks, rows) = admin::record(store, key)?;
    let limit = if full { None } else { Some(SHOWN) };
    let mut records = Vec::new();
    let mut text = vec![format!(
        "{key}  epoch {}  floor {}  ({} rows)",
        marks.epoch,
        marks.floor,
        rows.len()
    )];
    for row in &rows {
        let place = format!("{} #{}", row.space, row.id);
        if row.space == Space::QUARANTINE {
            let (reason, kept) = match admin::quarantine_row(key, row.clone()) {
                Ok(q) => (q.reason, q.rows.len()),
                Err(e) => (format!("(unreadable) {e}"), 0),
            };
            text.push(format!(
                "  {place}  quarantined by epoch {}: {kept} rows kept; reason: {reason}",
                row.id
            ));
            records.push(json!({
                "space": row.space.to_string(), "id": row.id, "len": row.bytes.len(),
                "quarantined_by": row.id, "rows_kept": kept, "reason": reason,
            }));
            continue;
        }
        let header = match admin::inspect(&row.bytes) {
            Ok(h) => h,
            Err(e) => {
                text.push(format!("  {place}  BAD: {e}"));
                text.push(format!("    bytes   {}", hex(&row.bytes, limit)));
                records.push(json!({
                    "space": row.space.to_string(), "id": row.id, "len": row.bytes.len(),
                    "error": e.to_string(), "bytes_hex": hex(&row.bytes, None),
                }));
                continue;
            }
        };
        text.push(format!("  {place}  {}", header_line(&header)));
        let mut rec = json!({
            "space": row.space.to_string(), "id": row.id, "len": row.bytes.len(),
            "header": header_json(&header),
        });
        match admin::payload(key, row.id, &row.bytes, &admin.transforms) {
            Ok(payload) => {
                if let Some(n) = payload.attempts {
                    text.push(format!("    failed attempts {n}"));
                    rec["attempts"] = json!(n);
                }
                if let Some(due) = payload.due_ms {
                    text.push(format!("    retry due at {due} ms since the Unix epoch"));
                    rec["retry_due_ms"] = json!(due);
                }
                text.push(format!("    payload {}", hex(&payload.value, limit)));
                rec["payload_hex"] = json!(hex(&payload.value, None));
                if let Some(v) = typed_value(admin, key, row.space, &payload) {
                    text.push(format!("    value   {v}"));
                    rec["value"] = v;
                }
            }
            Err(e) => {
                text.push(format!("    payload not shown: {e}"));
                rec["payload_error"] = json!(e.to_string());
            }
        }
        records.push(rec);
    }
    if p.json {
        return p.json(&json!({
            "namespace": key.namespace(), "key": key.key(),
            "epoch": marks.epoch, "floor": marks.floor, "records": records,
        }));
    }
    for line in text {
        p.line(&line)?;
    }
    Ok(())
}

fn verify(
    admin: &Admin,
    store: &dyn Store,
    location: &Location,
    p: &mut Printer<'_>,
) -> Result<u8, CliError> {
    let progress = bar(None, p.json, "verifying", false);
    let mut tick = |done: usize, total: usize| {
        progress.set_length(total as u64);
        progress.set_position(done as u64);
    };
    let report = admin::verify(store, &admin.transforms, &mut tick)?;
    progress.finish_and_clear();
    let code = if report.bad.is_empty() {
        exit::SUCCESS
    } else {
        exit::DAMAGED
    };
    if p.json {
        let bad: Vec<Value> = report
            .bad
            .iter()
            .map(|b| {
                json!({"namespace": b.key.namespace(), "key": b.key.key(),
                       "space": b.space.to_string(), "id": b.id, "reason": b.reason})
            })
            .collect();
        p.json(&json!({
            "ok": report.bad.is_empty(), "keys": report.keys, "rows": report.rows,
            "bytes": report.bytes, "backend_check": location.integrity_check(), "bad": bad,
        }))?;
        return Ok(code);
    }
    p.line(&format!(
        "checked {} keys, {} rows, {} bytes ({}): {}",
        report.keys,
        report.rows,
        report.bytes,
        location.integrity_check(),
        match report.bad.len() {
            0 => "every record is sound".to_owned(),
            1 => "1 bad record".to_owned(),
            n => format!("{n} bad records"),
        }
    ))?;
    for b in &report.bad {
        p.line(&format!("  {}  {} #{}: {}", b.key, b.space, b.id, b.reason))?;
    }
    Ok(code)
}

fn dead_letters(
    admin: &Admin,
    store: &dyn Store,
    namespace: Option<&str>,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    let letters = admin::dead_letters(store, namespace, &admin.transforms)?;
    let value = |d: &admin::DeadLetter| -> Option<Value> {
        let payload = admin::payload(&d.key, d.id, &d.bytes, &admin.transforms).ok()?;
        typed_value(admin, &d.key, Space::OPS, &payload)
    };
    if p.json {
        let v: Vec<Value> = letters
            .iter()
            .map(|d| {
                let mut v = json!({
                    "namespace": d.key.namespace(), "key": d.key.key(), "id": d.id,
                    "attempts": d.attempts, "header": header_json(&d.header),
                });
                if let Some(value) = value(d) {
                    v["value"] = value;
                }
                v
            })
            .collect();
        return p.json(&Value::Array(v));
    }
    if letters.is_empty() {
        return p.line("no dead letters");
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            vec![
                d.key.namespace().to_owned(),
                d.key.key().to_owned(),
                d.id.to_string(),
                d.attempts.map_or("-".to_owned(), |n| n.to_string()),
                d.header.schema.to_string(),
                d.header.body_len.to_string(),
                value(d).map_or_else(String::new, |v| v.to_string()),
            ]
        })
        .collect();
    p.table(
        &[
            "NAMESPACE",
            "KEY",
            "ID",
            "ATTEMPTS",
            "SCHEMA",
            "BYTES",
            "VALUE",
        ],
        &rows,
    )
}

fn quarantine_list(
    store: &dyn Store,
    namespace: Option<&str>,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    let entries = admin::quarantined(store, namespace)?;
    if p.json {
        let v: Vec<Value> = entries
            .iter()
            .map(|q| {
                json!({"namespace": q.key.namespace(), "key": q.key.key(), "epoch": q.epoch,
                       "rows": q.rows.len(), "reason": q.reason})
            })
            .collect();
        return p.json(&Value::Array(v));
    }
    if entries.is_empty() {
        return p.line("no quarantined records");
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|q| {
            vec![
                q.key.namespace().to_owned(),
                q.key.key().to_owned(),
                q.epoch.to_string(),
                q.rows.len().to_string(),
                q.reason.clone(),
            ]
        })
        .collect();
    p.table(&["NAMESPACE", "KEY", "EPOCH", "ROWS", "REASON"], &rows)
}

fn export(store: &dyn Store, file: &Path, p: &mut Printer<'_>) -> Result<(), CliError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CliError::Io { path, source }
    };
    let progress = bar(None, p.json || file.as_os_str() == "-", "exporting", true);
    let stats = if file.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut w = progress.wrap_write(BufWriter::new(stdout.lock()));
        let stats = persist_core::export(store, &mut w)?;
        w.flush().map_err(io(file))?;
        stats
    } else {
        // Written beside the file and renamed into place once whole: a failed export leaves
        // no file that looks like an export.
        let part = part_path(file);
        let f = FileOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => CliError::Io {
                    path: part.clone(),
                    source: std::io::Error::new(
                        source.kind(),
                        "left by an export that did not finish (or one running now): \
                         remove it and export again",
                    ),
                },
                _ => CliError::Io {
                    path: part.clone(),
                    source,
                },
            })?;
        let mut w = Ticking {
            inner: BufWriter::new(f),
            bar: &progress,
        };
        let result = persist_core::export(store, &mut w).and_then(|stats| {
            let synced = w
                .inner
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)
                .and_then(|f| f.sync_all());
            synced.map_err(|source| persist_core::TransferError::Io {
                offset: stats.bytes,
                source,
            })?;
            Ok(stats)
        });
        let stats = match result {
            Ok(stats) => stats,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e.into());
            }
        };
        if file.exists() {
            let _ = std::fs::remove_file(&part);
            return Err(CliError::ExportExists {
                path: file.to_owned(),
            });
        }
        std::fs::rename(&part, file).map_err(io(file))?;
        stats
    };
    progress.finish_and_clear();
    if file.as_os_str() == "-" {
        return Ok(());
    }
    if p.json {
        return p.json(
            &json!({"command": "export", "file": file, "actors": stats.actors,
                              "rows": stats.rows, "bytes": stats.bytes}),
        );
    }
    p.line(&format!(
        "exported {} actors, {} rows ({} bytes of rows) to {}",
        stats.actors,
        stats.rows,
        stats.bytes,
        file.display()
    ))
}

/// A writer that moves a progress bar by the bytes written.
struct Ticking<'a, W> {
    inner: W,
    bar: &'a indicatif::ProgressBar,
}

impl<W: Write> Write for Ticking<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(".part");
    file.with_file_name(name)
}

fn import(
    store: &dyn Store,
    file: &Path,
    replace: bool,
    p: &mut Printer<'_>,
) -> Result<(), CliError> {
    let mode = if replace {
        ImportMode::Replace
    } else {
        ImportMode::IntoEmpty
    };
    let stats = if file.as_os_str() == "-" {
        let stdin = std::io::stdin();
        let mut r = BufReader::new(stdin.lock());
        persist_core::import(store, &mut r, mode).map_err(not_empty)?
    } else {
        let f = File::open(file).map_err(|source| CliError::Io {
            path: file.to_owned(),
            source,
        })?;
        let len = f.metadata().map(|m| m.len()).ok();
        let progress = bar(len, p.json, "importing", true);
        let mut r: Box<dyn Read> = Box::new(progress.wrap_read(BufReader::new(f)));
        let stats = persist_core::import(store, &mut r, mode).map_err(not_empty)?;
        progress.finish_and_clear();
        stats
    };
    if p.json {
        return p.json(&json!({"command": "import", "actors": stats.actors,
                              "rows": stats.rows, "bytes": stats.bytes, "replace": replace}));
    }
    p.line(&format!(
        "imported {} actors, {} rows ({} bytes of rows) in one commit",
        stats.actors, stats.rows, stats.bytes
    ))
}

/// An import into a store that is not empty, in the tool's words.
fn not_empty(e: persist_core::TransferError) -> CliError {
    match e {
        persist_core::TransferError::NotEmpty { keys, first, .. } => CliError::NotEmpty {
            keys,
            first: first.to_string(),
        },
        e => e.into(),
    }
}

fn stats(store: &dyn Store, location: &Location, p: &mut Printer<'_>) -> Result<(), CliError> {
    let list = admin::stats(store)?;
    let file = match location {
        Location::Redb(path) | Location::Sqlite(path) => {
            std::fs::metadata(path).ok().map(|m| m.len())
        }
        Location::Postgres(_) => None,
    };
    let mut total = admin::NamespaceStats::default();
    for n in &list {
        total.actors += n.actors;
        total.marks_only += n.marks_only;
        total.rows += n.rows;
        total.bytes += n.bytes;
        total.pending += n.pending;
        total.dead += n.dead;
        total.quarantined += n.quarantined;
        total.damaged += n.damaged;
    }
    let as_json = |n: &admin::NamespaceStats| {
        json!({"namespace": n.namespace, "actors": n.actors, "marks_only": n.marks_only,
               "rows": n.rows, "bytes": n.bytes, "pending": n.pending, "dead": n.dead,
               "quarantined": n.quarantined, "damaged": n.damaged})
    };
    if p.json {
        let mut t = as_json(&total);
        t["file_bytes"] = json!(file);
        if let Some(obj) = t.as_object_mut() {
            obj.remove("namespace");
        }
        return p.json(&json!({
            "store": location.to_string(),
            "namespaces": list.iter().map(as_json).collect::<Vec<_>>(),
            "total": t,
        }));
    }
    let row = |name: &str, n: &admin::NamespaceStats| {
        vec![
            name.to_owned(),
            n.actors.to_string(),
            n.marks_only.to_string(),
            n.rows.to_string(),
            n.bytes.to_string(),
            n.pending.to_string(),
            n.dead.to_string(),
            n.quarantined.to_string(),
            n.damaged.to_string(),
        ]
    };
    let mut rows: Vec<Vec<String>> = list.iter().map(|n| row(&n.namespace, n)).collect();
    rows.push(row("(total)", &total));
    p.line(&match file {
        Some(len) => format!("{location}: {len} bytes on disk"),
        None => location.to_string(),
    })?;
    p.table(
        &[
            "NAMESPACE",
            "ACTORS",
            "NO-RECORD",
            "ROWS",
            "BYTES",
            "PENDING",
            "DEAD",
            "QUARANTINED",
            "DAMAGED",
        ],
        &rows,
    )
}
