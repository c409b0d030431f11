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
/// `PersistentActor` impl. It implements `Persistent` (the type's storage namespace)
/// and ractor's `Actor` for the type, so `ActorRef`, `call!`, `cast!`, supervision and
/// `spawn_linked` work as they always do.
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
///
/// # Example
///
/// ```ignore
/// use ractor_persist::{Persistent, PersistentActor};
///
/// #[derive(Persistent)]
/// #[persistent(name = "account")]
/// struct AccountActor;
///
/// impl PersistentActor for AccountActor {
///     // Msg, State, Op, Arguments, init, handle, perform
/// }
/// ```
///
/// Every mistake in the attributes is reported in one compile, each at its own token.
#[proc_macro_derive(Persistent, attributes(persistent))]
pub fn derive_persistent(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
