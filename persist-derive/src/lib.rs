//! `#[derive(Persistent)]` for [ractor-persist](https://docs.rs/ractor-persist).
//!
//! Use it through the facade, which re-exports it as `ractor_persist::Persistent`;
//! this crate is an implementation detail, released in lock-step with the facade.
#![deny(missing_docs, unreachable_pub, unused_crate_dependencies)]

mod ast;
mod attr;
mod ctxt;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Makes a ractor actor type durable.
///
/// Put it on the actor struct (unit, named or tuple; no generics) whose logic is a
/// `PersistentActor` impl. It implements `Persistent` (the type's storage namespace, schema
/// version and migrations) and ractor's `Actor` for the type, so `ActorRef`, `call!`,
/// `cast!`, supervision and `spawn_linked` work as they always do.
///
/// # Attributes
///
/// All keys go inside `#[persistent(...)]`, in one attribute or several, each at most once:
///
/// - `name = "account"`: the storage namespace of this actor type, stored in every
///   record's key. Defaults to the type's identifier, so renaming the type would orphan
///   its records: set `name` before the first release. It must be a non-empty string
///   without `/` and without leading or trailing whitespace.
/// - `crate = "path"`: where the runtime is, for users who renamed the dependency or use
///   the core crate alone (`crate = "persist_core"`). Defaults to `::ractor_persist`.
/// - `version = 2`: the schema version written into every record, a `u32` from 1 (the
///   default). Bump it whenever the state or operation type changes shape; a record of a
///   newer version than the running code is refused with a typed error.
/// - `migrate(1 = AccountV1, 2 = AccountV2)`: the state type of every older version, each
///   `From`-convertible into the next and the last into `State`. It must name each version
///   from 1 to `version - 1` exactly once; a record of version `k` is decoded as its type and
///   converted up the chain on load, and rewritten in the current version by the next change.
///   A missing `From` impl is reported at the type in the attribute.
/// - `migrate_ops(1 = OpV1, ...)`: the same for the operation type. Without it, an operation
///   of an older version is decoded as the current `Op` only if `Op`'s shape fingerprint is
///   the one stored with it; otherwise loading fails with a typed error naming both versions
///   and both fingerprints. The same holds for the state without `migrate`.
///
/// # ractor's `async-trait` feature
///
/// The emitted `Actor` impl takes the form ractor's `async-trait` feature selects, and Cargo
/// gives a derive no way to see that feature. If ractor's `async-trait` is on anywhere in the
/// build, turn on ractor-persist's `async-trait` feature too; without it the derive reports
/// `E0195` ("lifetime parameters or bounds on method `pre_start` do not match the trait
/// declaration") for each of the impl's methods.
///
/// # Example
///
/// ```ignore
/// use ractor_persist::{Persistent, PersistentActor};
///
/// #[derive(Persistent)]
/// #[persistent(name = "account", version = 3, migrate(1 = AccountV1, 2 = AccountV2))]
/// struct AccountActor;
///
/// impl PersistentActor for AccountActor {
///     type State = Account; // with `From<AccountV1> for AccountV2`, `From<AccountV2> for Account`
///     // Msg, Op, Arguments, init, handle, perform
/// }
/// ```
///
/// Every mistake in the attributes is reported in one compile, each at its own token.
#[proc_macro_derive(Persistent, attributes(persistent))]
pub fn derive_persistent(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
