//! What a broken input expands to: the errors, plus a stand-in `Persistent` impl where
//! one can be written, so uses of the actor's name do not add errors to ours.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ast::Actor;

pub(crate) fn expand(actor: &Actor, errors: &syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    // An enum, a union, a generic type, or an unusable runtime path: any impl we could
    // write would fail for reasons of its own, so the errors stand alone.
    if !actor.can_stub() {
        return errors;
    }
    let krate = actor.krate();
    let ident = actor.ident;
    // The bound holds in real code (the user implements `PersistentActor`) and is
    // merely false, not an error, where they have not yet: rustc accepts an impl with
    // an unsatisfiable bound only under a binder (rust-lang/rust#48214), hence `for<>`.
    // No `Actor` stub: `impl_actor!` cannot take the bound, and without it the stub
    // would itself fail wherever `PersistentActor` is missing.
    quote! {
        #errors

        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #krate::__private::Persistent for #ident
        where
            for<'__stub> #ident: #krate::__private::PersistentActor,
        {
            const NAME: &'static str = "";
        }
    }
}
