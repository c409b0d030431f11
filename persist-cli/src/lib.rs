//! The admin tool of ractor-persist: inspect, verify, repair, export and import a store
//! without running its actors.
//!
//! The `ractor-persist` binary of this crate is the generic tool (`cargo install --path
//! persist-cli`); it shows records as envelope headers and payload bytes. Mount the same
//! commands in your own binary, with your actor types registered, and `show` and
//! `dead-letters` print states, operations and events as JSON through your `Serialize` impls,
//! and `edit` can replace a state:
//!
//! ```no_run
//! # use ractor_persist::prelude::*;
//! # #[derive(Default, Persistent)]
//! # #[persistent(name = "counter")]
//! # struct Counter;
//! # impl PersistentActor for Counter {
//! #     type Msg = (); type State = u64; type Op = (); type Arguments = ();
//! #     async fn init(&self, _: ()) -> Result<u64, ActorProcessingErr> { Ok(0) }
//! #     async fn handle(&self, _: &mut Tx<'_, Self>, _: (), _: &mut u64)
//! #         -> Result<(), ActorProcessingErr> { Ok(()) }
//! # }
//! use persist_cli::Admin;
//!
//! fn main() -> std::process::ExitCode {
//!     Admin::new().actor::<Counter>().run()
//! }
//! ```
//!
//! `docs/operations.md` shows every command with its output. Exit codes: see [`exit`].
#![deny(missing_docs, unreachable_pub)]

mod commands;
mod open;
mod output;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use persist_core::admin::{self, AdminError, Changed, Payload};
use persist_core::{ActorKey, EventSourced, Persistent, Store, StoreError, Transforms};
use serde_json::Value;

/// The process exit codes of the tool.
pub mod exit {
    /// The command did what it says.
    pub const SUCCESS: u8 = 0;
    /// The command was refused: a namespace, key, id or quarantined record that does not
    /// exist, a requeue of an operation that is not dead, a restore over a record, an import
    /// into a store that is not empty, an export file that exists. Nothing was written.
    pub const REFUSED: u8 = 1;
    /// The command line does not parse (clap's own code).
    pub const USAGE: u8 = 2;
    /// `verify` found bad records, or a command met a record it cannot read.
    pub const DAMAGED: u8 = 3;
    /// The store could not be opened: an unknown scheme, no file, a file that is not a store,
    /// a store another process holds, a backend that fails its integrity check on open.
    pub const OPEN: u8 = 4;
    /// The store or a file failed during the command.
    pub const FAILED: u8 = 5;
}

/// Why a command failed; [`CliError::exit_code`] maps it to the process's exit code.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store argument starts with no scheme this tool knows.
    #[error("`{arg}` names no store this tool opens: use {}", open::SCHEMES)]
    UnknownScheme {
        /// The argument.
        arg: String,
    },
    /// The store argument has a scheme but no path.
    #[error("`{arg}` names no file after its scheme")]
    NoPath {
        /// The argument.
        arg: String,
    },
    /// The tool was built without the backend the argument names.
    #[error("this build of the tool has no backend for `{arg}` (a cargo feature left out)")]
    NotBuilt {
        /// The argument.
        arg: String,
    },
    /// Another process holds the store (redb's lock). Nothing was read or written.
    #[error("{store} is in use by another process; stop it first ({source})")]
    InUse {
        /// The store.
        store: String,
        /// The backend's error.
        source: StoreError,
    },
    /// The store could not be opened: no file, not a store, damage found by the backend's
    /// integrity check on open.
    #[error("cannot open {store}: {source}")]
    Open {
        /// The store.
        store: String,
        /// The backend's error.
        source: StoreError,
    },
    /// An admin call refused or failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// An export or an import failed; an import that fails wrote nothing.
    #[error(transparent)]
    Transfer(#[from] persist_core::TransferError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `import` without `--replace` into a store that holds something; nothing was written.
    #[error(
        "the store is not empty ({keys} keys, the first `{first}`): nothing imported (--replace \
         imports into it anyway, replacing the stream's keys)"
    )]
    NotEmpty {
        /// How many keys it holds.
        keys: usize,
        /// The first of them.
        first: String,
    },
    /// `export` refuses to overwrite a file.
    #[error("{path} exists; export writes a new file only (remove it or choose another name)")]
    ExportExists {
        /// The file.
        path: PathBuf,
    },
    /// A command needs the actor's type, which this binary does not know.
    #[error(
        "`{what}` needs the type of namespace `{namespace}`, which this binary does not know: \
         mount the admin in your own binary with `Admin::new().actor::<YourActor>()`"
    )]
    NotTyped {
        /// The namespace.
        namespace: String,
        /// The command.
        what: &'static str,
    },
    /// A JSON value given on the command line is not a value of the type.
    #[error("the JSON value is not a state of namespace `{namespace}`: {source}")]
    Json {
        /// The namespace.
        namespace: String,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CliError {
    /// The exit code this failure ends the process with (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        use persist_core::TransferError as T;
        match self {
            CliError::UnknownScheme { .. }
            | CliError::NoPath { .. }
            | CliError::NotBuilt { .. }
            | CliError::InUse { .. }
            | CliError::Open { .. } => exit::OPEN,
            CliError::Admin(AdminError::Store(_)) | CliError::Store(_) | CliError::Io { .. } => {
                exit::FAILED
            }
            CliError::Admin(AdminError::Damaged { .. }) => exit::DAMAGED,
            CliError::Transfer(T::Store(_) | T::Io { .. }) => exit::FAILED,
            _ => exit::REFUSED,
        }
    }

    /// A short name of the failure for `--json` output.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::UnknownScheme { .. } => "unknown_scheme",
            CliError::NoPath { .. } => "no_path",
            CliError::NotBuilt { .. } => "not_built",
            CliError::InUse { .. } => "in_use",
            CliError::Open { .. } => "open",
            CliError::Admin(AdminError::NoNamespace { .. }) => "no_namespace",
            CliError::Admin(AdminError::NoActor { .. }) => "no_actor",
            CliError::Admin(AdminError::NotDeadLetter { .. }) => "not_dead_letter",
            CliError::Admin(AdminError::NoQuarantine { .. }) => "no_quarantine",
            CliError::Admin(AdminError::RecordExists { .. }) => "record_exists",
            CliError::Admin(AdminError::NotEditable { .. }) => "not_editable",
            CliError::Admin(AdminError::Damaged { .. }) => "damaged",
            CliError::Admin(AdminError::NeedsKey { .. }) => "needs_key",
            CliError::Admin(_) | CliError::Store(_) => "store",
            CliError::Transfer(_) => "transfer",
            CliError::Io { .. } => "io",
            CliError::ExportExists { .. } => "export_exists",
            CliError::NotEmpty { .. } => "not_empty",
            CliError::NotTyped { .. } => "not_typed",
            CliError::Json { .. } => "json",
        }
    }
}

/// The command line of the tool.
#[derive(Debug, Parser)]
#[command(
    name = "ractor-persist",
    version,
    about = "Inspect, verify, repair, export and import a ractor-persist store.",
    long_about = "Inspect, verify, repair, export and import a ractor-persist store, without \
                  running its actors. Read-only unless the command writes (requeue, delete, \
                  quarantine restore, import, edit); a writing command takes a new epoch of the \
                  actor it changes, fencing a running instance, and says what it changed."
)]
pub(crate) struct Cli {
    /// The store: redb:PATH, sqlite:PATH, or postgres://USER@HOST/DB.
    pub(crate) store: String,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The table prefix of an SQLite or PostgreSQL store (default `ractor_persist_`).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub(crate) table_prefix: Option<String>,
    /// The schema of a PostgreSQL store (default `public`).
    #[arg(long, global = true, value_name = "SCHEMA")]
    pub(crate) pg_schema: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// One subcommand per verb.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The namespaces of the store, with how many keys each holds.
    Namespaces,
    /// The actors of a namespace: model, rows, bytes, pending operations, dead letters.
    List {
        /// The namespace (`#[persistent(name = ...)]`).
        namespace: String,
    },
    /// One actor: its marks and every record's envelope header, with ids and payloads.
    Show {
        /// The namespace.
        namespace: String,
        /// The actor's key.
        key: String,
        /// Print whole payloads (by default the first 64 bytes).
        #[arg(long)]
        full: bool,
    },
    /// Checks every record (envelope, checksum, kind, number); exits 3 if one is bad.
    Verify,
    /// The dead letters, with the ids `requeue` takes.
    DeadLetters {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Puts a dead letter back among its actor's pending operations (writes).
    Requeue {
        /// The namespace.
        namespace: String,
        /// The actor's key.
        key: String,
        /// The dead letter's operation id (see `dead-letters`).
        id: u64,
    },
    /// Deletes an actor's record; its quarantined records and marks stay (writes).
    Delete {
        /// The namespace.
        namespace: String,
        /// The actor's key.
        key: String,
    },
    /// Records moved aside because they could not be decoded.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Writes every row and mark of the store to FILE as an export stream (`-`: stdout).
    Export {
        /// A new file (an existing one is not overwritten), or `-`.
        file: PathBuf,
    },
    /// Reads an export stream into the store, in one commit (writes).
    Import {
        /// The stream (`-`: stdin).
        file: PathBuf,
        /// Import into a store that holds other keys too, replacing the stream's keys.
        #[arg(long)]
        replace: bool,
        /// Create the store if there is no file (PostgreSQL: no tables); an existing file
        /// must still be a store.
        #[arg(long)]
        create: bool,
    },
    /// Counts per namespace: actors, rows, bytes, pending, dead, quarantined.
    Stats,
    /// Replaces a snapshot-mode actor's state with a JSON value of its type (writes; needs
    /// the type: only in a binary that registered it).
    Edit {
        /// The namespace.
        namespace: String,
        /// The actor's key.
        key: String,
        /// The new state, as JSON.
        #[arg(long, value_name = "JSON")]
        state: String,
    },
}

/// `quarantine list|restore`.
#[derive(Debug, Subcommand)]
pub(crate) enum QuarantineCommand {
    /// The quarantined records, with the epochs `restore` takes.
    List {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Puts a quarantined record back as the actor's record (writes).
    Restore {
        /// The namespace.
        namespace: String,
        /// The actor's key.
        key: String,
        /// The epoch that moved it aside (see `quarantine list`).
        epoch: u64,
    },
}

/// What the tool knows of one namespace's types.
trait Typed: Send + Sync {
    fn state(&self, p: &Payload) -> Result<Value, String>;
    fn op(&self, p: &Payload) -> Result<Value, String>;
    fn event(&self, p: &Payload) -> Option<Result<Value, String>>;
    fn edit(
        &self,
        store: &dyn Store,
        key: &ActorKey,
        json: &str,
        transforms: &Transforms,
    ) -> Result<Changed, CliError>;
}

fn to_json<T: serde::Serialize>(r: Result<T, persist_core::DecodeReason>) -> Result<Value, String> {
    r.map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
}

struct Snapshots<A>(PhantomData<fn() -> A>);

impl<A: Persistent> Typed for Snapshots<A> {
    fn state(&self, p: &Payload) -> Result<Value, String> {
        to_json(admin::decode_state::<A>(p))
    }
    fn op(&self, p: &Payload) -> Result<Value, String> {
        to_json(admin::decode_op::<A>(p))
    }
    fn event(&self, _: &Payload) -> Option<Result<Value, String>> {
        None
    }
    fn edit(
        &self,
        store: &dyn Store,
        key: &ActorKey,
        json: &str,
        transforms: &Transforms,
    ) -> Result<Changed, CliError> {
        let state: A::State = serde_json::from_str(json).map_err(|source| CliError::Json {
            namespace: A::NAME.to_owned(),
            source,
        })?;
        Ok(admin::replace_state::<A>(store, key, &state, transforms)?)
    }
}

struct Events<A>(PhantomData<fn() -> A>);

impl<A: EventSourced> Typed for Events<A> {
    fn state(&self, p: &Payload) -> Result<Value, String> {
        Snapshots::<A>(PhantomData).state(p)
    }
    fn op(&self, p: &Payload) -> Result<Value, String> {
        Snapshots::<A>(PhantomData).op(p)
    }
    fn event(&self, p: &Payload) -> Option<Result<Value, String>> {
        Some(to_json(admin::decode_event::<A>(p)))
    }
    fn edit(
        &self,
        store: &dyn Store,
        key: &ActorKey,
        json: &str,
        transforms: &Transforms,
    ) -> Result<Changed, CliError> {
        Snapshots::<A>(PhantomData).edit(store, key, json, transforms)
    }
}

/// The admin commands, with the actor types the binary knows and the store's transforms.
///
/// `Admin::new().run()` is the generic `ractor-persist` tool; register actor types with
/// [`Admin::actor`] and [`Admin::event_sourced`] to see their records as JSON.
#[derive(Clone, Default)]
pub struct Admin {
    types: BTreeMap<String, Arc<dyn Typed>>,
    transforms: Transforms,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// The commands with no actor type known: records show as headers and bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Knows the snapshot-mode actor `A`: its namespace's states and operations show as JSON,
    /// and `edit` can replace its states.
    pub fn actor<A: Persistent>(mut self) -> Self {
        self.types
            .insert(A::NAME.to_owned(), Arc::new(Snapshots::<A>(PhantomData)));
        self
    }

    /// Knows the event-sourced actor `A`: its states, operations and events show as JSON.
    pub fn event_sourced<A: EventSourced>(mut self) -> Self {
        self.types
            .insert(A::NAME.to_owned(), Arc::new(Events::<A>(PhantomData)));
        self
    }

    /// The store's record transforms: the keyring to read encrypted records with, and what a
    /// rewritten record (requeue, edit) is sealed with. Give the same the application uses.
    pub fn transforms(mut self, transforms: Transforms) -> Self {
        self.transforms = transforms;
        self
    }

    /// Runs the command line of this process, printing to stdout and stderr; returns the
    /// exit code (see [`exit`]).
    pub fn run(self) -> ExitCode {
        let code = self.run_with(
            std::env::args_os(),
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        );
        ExitCode::from(code)
    }

    /// Runs the command line `args` (the program's name first), printing the output to `out`
    /// and errors to `err`; returns the exit code (see [`exit`]).
    pub fn run_with<I, T>(self, args: I, out: &mut dyn Write, err: &mut dyn Write) -> u8
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cli = match Cli::try_parse_from(&args) {
            Ok(cli) => cli,
            Err(e) => {
                if !e.use_stderr() {
                    // --help, --version.
                    let _ = write!(out, "{}", e.render());
                    return exit::SUCCESS;
                }
                let _ = write!(err, "{}", e.render());
                if args.iter().skip(1).any(|a| a == "--json") {
                    let message = e.render().to_string();
                    let message = message.lines().next().unwrap_or_default();
                    let message = message.trim_start_matches("error: ");
                    let v = serde_json::json!({"error": {"kind": "usage", "message": message}});
                    let _ = writeln!(out, "{v}");
                }
                return exit::USAGE;
            }
        };
        let json = cli.json;
        match commands::run(&self, cli, out) {
            Ok(code) => code,
            Err(e) => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    let text = s.to_string();
                    if !message.contains(&text) {
                        message.push_str(": ");
                        message.push_str(&text);
                    }
                    source = s.source();
                }
                if json {
                    let v = serde_json::json!({"error": {"kind": e.kind(), "message": message}});
                    let _ = writeln!(out, "{v}");
                }
                let _ = writeln!(err, "error: {message}");
                e.exit_code()
            }
        }
    }

    fn typed(&self, namespace: &str) -> Option<&dyn Typed> {
        self.types.get(namespace).map(|t| &**t)
    }
}
