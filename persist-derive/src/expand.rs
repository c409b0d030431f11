//! Writes the impls for a valid actor, or hands a broken one to `fallback.rs`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DeriveInput, Ident, LitStr};

use crate::ast::Actor;
use crate::ctxt::Ctxt;
use crate::{fallback, valid};

/// The whole derive: model, checks, then either the impls or the errors.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let actor = Actor::from_syn(&cx, input);
    valid::check(&cx, &actor);
    match cx.check() {
        Ok(()) => impls(&actor.krate(), actor.ident, &actor.name()),
        Err(errors) => fallback::expand(&actor, &errors),
    }
}

/// `Persistent` (the namespace) and, through persist-core's `impl_actor!`, ractor's
/// `Actor`: the macro picks the async-trait or native form with persist-core's own cfg,
/// which a derive crate cannot see.
fn impls(krate: &TokenStream, ident: &Ident, name: &LitStr) -> TokenStream {
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #krate::__private::Persistent for #ident {
            const NAME: &'static str = #name;
        }
        #krate::__private::impl_actor!(#ident);
    }
}

/// Every error message the derive reports for `input`, in order.
#[cfg(test)]
pub(crate) fn error_messages(input: &DeriveInput) -> Vec<String> {
    let cx = Ctxt::new();
    let actor = Actor::from_syn(&cx, input);
    valid::check(&cx, &actor);
    match cx.check() {
        Ok(()) => Vec::new(),
        Err(errors) => errors.into_iter().map(|err| err.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;
    use syn::parse_quote;

    use super::derive;

    fn expands_to(input: syn::DeriveInput, expected: proc_macro2::TokenStream) {
        assert_eq!(derive(&input).to_string(), expected.to_string());
    }

    #[test]
    fn name_defaults_to_the_type_identifier() {
        expands_to(
            parse_quote!(
                struct AccountActor;
            ),
            quote! {
                #[automatically_derived]
                #[allow(unused_qualifications)]
                impl ::ractor_persist::__private::Persistent for AccountActor {
                    const NAME: &'static str = "AccountActor";
                }
                ::ractor_persist::__private::impl_actor!(AccountActor);
            },
        );
    }

    #[test]
    fn raw_identifier_names_the_namespace_without_r_hash() {
        let out = derive(&parse_quote!(
            struct r#Actor;
        ));
        assert!(
            out.to_string()
                .contains(r#"const NAME : & 'static str = "Actor" ;"#)
        );
    }

    #[test]
    fn name_and_crate_attributes_are_used() {
        expands_to(
            parse_quote!(
                #[persistent(name = "account", crate = "persist_core")]
                struct AccountActor {
                    limit: u64,
                }
            ),
            quote! {
                #[automatically_derived]
                #[allow(unused_qualifications)]
                impl persist_core::__private::Persistent for AccountActor {
                    const NAME: &'static str = "account";
                }
                persist_core::__private::impl_actor!(AccountActor);
            },
        );
    }

    #[test]
    fn keys_may_be_split_over_several_attributes() {
        expands_to(
            parse_quote!(
                #[derive(Debug)]
                #[persistent(crate = "crate")]
                #[persistent(name = "account")]
                struct AccountActor(u64);
            ),
            quote! {
                #[automatically_derived]
                #[allow(unused_qualifications)]
                impl crate::__private::Persistent for AccountActor {
                    const NAME: &'static str = "account";
                }
                crate::__private::impl_actor!(AccountActor);
            },
        );
    }

    #[test]
    fn absolute_crate_path_is_kept_absolute() {
        let out = derive(&parse_quote!(
            #[persistent(crate = "::renamed::inner")]
            struct A;
        ));
        assert!(
            out.to_string()
                .contains(":: renamed :: inner :: __private :: Persistent")
        );
    }

    #[test]
    fn attribute_mistakes_keep_a_stub_impl_beside_the_errors() {
        let out = derive(&parse_quote!(
            #[persistent(name = 5)]
            struct AccountActor;
        ))
        .to_string();
        assert!(out.contains("compile_error"));
        assert!(out.contains(
            "impl :: ractor_persist :: __private :: Persistent for AccountActor where for < '__stub > \
             AccountActor : :: ractor_persist :: __private :: PersistentActor"
        ));
        assert!(out.contains(r#"const NAME : & 'static str = "" ;"#));
        assert!(!out.contains("impl_actor"));
    }

    #[test]
    fn stub_uses_the_given_crate_path() {
        let out = derive(&parse_quote!(
            #[persistent(crate = "persist_core", nme = "x")]
            struct A;
        ))
        .to_string();
        assert!(out.contains("persist_core :: __private :: Persistent for A"));
    }

    #[test]
    fn unusable_inputs_expand_to_errors_only() {
        let inputs: [syn::DeriveInput; 4] = [
            parse_quote!(
                enum E {}
            ),
            parse_quote!(
                union U {
                    a: u8,
                }
            ),
            parse_quote!(
                struct G<T>(T);
            ),
            parse_quote!(
                #[persistent(crate = "not a path")]
                struct A;
            ),
        ];
        for input in inputs {
            let out = derive(&input).to_string();
            assert!(out.contains("compile_error"), "{out}");
            assert!(!out.contains("impl"), "{out}");
        }
    }
}
