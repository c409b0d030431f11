//! Writes the impls for a valid actor, or hands a broken one to `fallback.rs`.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident};

use crate::ast::Actor;
use crate::attr::Chain;
use crate::ctxt::Ctxt;
use crate::{fallback, valid};

/// The whole derive: model, checks, then either the impls or the errors.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let actor = Actor::from_syn(&cx, input);
    valid::check(&cx, &actor);
    match cx.check() {
        Ok(()) => impls(&actor),
        Err(errors) => fallback::expand(&actor, &errors),
    }
}

/// `Persistent` (the namespace, the schema version and its migrations) and, through
/// persist-core's `impl_actor!`, ractor's `Actor`: the macro picks the async-trait or
/// native form with persist-core's own cfg, which a derive crate cannot see.
fn impls(actor: &Actor) -> TokenStream {
    let krate = actor.krate();
    let ident = actor.ident;
    let name = actor.name();
    let current = actor.version().expect("checked by valid");
    let version = actor.attrs.version.as_ref().map(|version| {
        let value = Literal::u32_unsuffixed(version.value);
        quote!(const VERSION: u32 = #value;)
    });
    let migrate_state = actor.attrs.migrate.as_ref().map(|chain| {
        let state = Ident::new("State", Span::call_site());
        let name = Ident::new("migrate_state", Span::call_site());
        migration(&krate, chain, current, &name, &state, "state")
    });
    let migrate_op = actor.attrs.migrate_ops.as_ref().map(|chain| {
        let op = Ident::new("Op", Span::call_site());
        let name = Ident::new("migrate_op", Span::call_site());
        migration(&krate, chain, current, &name, &op, "operation")
    });
    let journal = actor.attrs.event_sourced.as_ref().map(|path| {
        quote_spanned! {Span::call_site().located_at(path.span())=>
            fn __journal() -> ::core::option::Option<#krate::__private::JournalHooks<Self>> {
                ::core::option::Option::Some(#krate::__private::JournalHooks::<Self>::of())
            }
        }
    });
    // The event chain decodes to the current event type, which only `EventSourced` names:
    // it is handed over boxed, and `EventSourced::migrate_event` unboxes it.
    let migrate_events = actor.attrs.migrate_events.as_ref().map(|chain| {
        let event = quote!(<#ident as #krate::__private::EventSourced>::Event);
        let name = Ident::new("__chain", Span::call_site());
        let inner = migration_to(&krate, chain, current, &name, &event, "event");
        quote! {
            fn __migrate_event(
                stored: #krate::__private::Stored<'_>,
            ) -> ::core::option::Option<
                ::core::result::Result<#krate::__private::AnyEvent, #krate::__private::DecodeReason>,
            > {
                #inner
                ::core::option::Option::Some(
                    __chain(stored).map(|e| ::std::boxed::Box::new(e) as #krate::__private::AnyEvent),
                )
            }
        }
    });
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #krate::__private::Persistent for #ident {
            const NAME: &'static str = #name;
            #version
            #migrate_state
            #migrate_op
            #journal
            #migrate_events
        }
        #krate::__private::impl_actor!(#ident);
    }
}

/// A migration hook: one arm per older version, decoding that version's type and walking
/// the `From`s up to the current `assoc` type. Each step is spanned at the user's type in
/// the attribute, so a missing `From` impl is reported there.
fn migration(
    krate: &TokenStream,
    chain: &Chain,
    current: u32,
    name: &Ident,
    assoc: &Ident,
    what: &str,
) -> TokenStream {
    let target = quote!(<Self as #krate::__private::PersistentActor>::#assoc);
    migration_to(krate, chain, current, name, &target, what)
}

/// A migration function `name` returning `target`: one arm per older version.
fn migration_to(
    krate: &TokenStream,
    chain: &Chain,
    current: u32,
    name: &Ident,
    target: &TokenStream,
    what: &str,
) -> TokenStream {
    let mut steps: Vec<_> = chain.steps.iter().collect();
    steps.sort_by_key(|step| step.value);
    let arms = steps.iter().enumerate().map(|(i, step)| {
        let version = Literal::u32_unsuffixed(step.value);
        let ty = &step.ty;
        let mut body = quote_spanned! {at(ty)=>
            let v: #ty = stored.decode_declared()?;
        };
        for pair in steps[i..].windows(2) {
            let (from, to) = (&pair[0].ty, &pair[1].ty);
            body.extend(quote_spanned! {at(from)=>
                let v: #to = ::core::convert::From::from(v);
            });
        }
        let last = &steps[steps.len() - 1].ty;
        body.extend(quote_spanned! {at(last)=>
            ::core::result::Result::Ok(::core::convert::From::from(v))
        });
        quote!(#version => { #body })
    });
    let current = Literal::u32_unsuffixed(current);
    quote! {
        fn #name(stored: #krate::__private::Stored<'_>) -> ::core::result::Result<
            #target,
            #krate::__private::DecodeReason
        > {
            match stored.schema() {
                #(#arms)*
                version => ::core::result::Result::Err(
                    #krate::__private::no_migration(#what, version, #current)
                ),
            }
        }
    }
}

/// Where `ty` is written, but resolving names as the rest of the expansion does.
fn at(ty: &syn::Type) -> Span {
    Span::call_site().located_at(ty.span())
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

/// Every error message for a unit struct carrying `#[persistent(<attr>)]`.
#[cfg(test)]
pub(crate) fn attr_messages(attr: &str) -> Vec<String> {
    let input =
        syn::parse_str(&format!("#[persistent({attr})] struct A;")).expect("test input parses");
    error_messages(&input)
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

    #[test]
    fn version_is_written_when_given() {
        expands_to(
            parse_quote!(
                #[persistent(name = "account", version = 2)]
                struct AccountActor;
            ),
            quote! {
                #[automatically_derived]
                #[allow(unused_qualifications)]
                impl ::ractor_persist::__private::Persistent for AccountActor {
                    const NAME: &'static str = "account";
                    const VERSION: u32 = 2;
                }
                ::ractor_persist::__private::impl_actor!(AccountActor);
            },
        );
    }

    #[test]
    fn a_state_chain_walks_every_from_up_to_the_current_state() {
        expands_to(
            parse_quote!(
                #[persistent(version = 3, migrate(2 = AccountV2, 1 = v1::Account))]
                struct AccountActor;
            ),
            quote! {
                #[automatically_derived]
                #[allow(unused_qualifications)]
                impl ::ractor_persist::__private::Persistent for AccountActor {
                    const NAME: &'static str = "AccountActor";
                    const VERSION: u32 = 3;
                    fn migrate_state(stored: ::ractor_persist::__private::Stored<'_>) -> ::core::result::Result<
                        <Self as ::ractor_persist::__private::PersistentActor>::State,
                        ::ractor_persist::__private::DecodeReason
                    > {
                        match stored.schema() {
                            1 => {
                                let v: v1::Account = stored.decode_declared()?;
                                let v: AccountV2 = ::core::convert::From::from(v);
                                ::core::result::Result::Ok(::core::convert::From::from(v))
                            }
                            2 => {
                                let v: AccountV2 = stored.decode_declared()?;
                                ::core::result::Result::Ok(::core::convert::From::from(v))
                            }
                            version => ::core::result::Result::Err(
                                ::ractor_persist::__private::no_migration("state", version, 3)
                            ),
                        }
                    }
                }
                ::ractor_persist::__private::impl_actor!(AccountActor);
            },
        );
    }

    #[test]
    fn an_op_chain_writes_migrate_op() {
        let out = derive(&parse_quote!(
            #[persistent(crate = "persist_core", migrate_ops(1 = OpV1), version = 2)]
            struct A;
        ))
        .to_string();
        assert!(out.contains(
            "fn migrate_op (stored : persist_core :: __private :: Stored < '_ >) -> :: core :: result :: Result < \
             < Self as persist_core :: __private :: PersistentActor > :: Op"
        ));
        assert!(out.contains(
            "1 => { let v : OpV1 = stored . decode_declared () ? ; \
             :: core :: result :: Result :: Ok (:: core :: convert :: From :: from (v)) }"
        ));
        assert!(out.contains(r#"no_migration ("operation" , version , 2)"#));
        assert!(!out.contains("migrate_state"));
    }

    #[test]
    fn chain_mistakes_keep_only_the_stub() {
        let out = derive(&parse_quote!(
            #[persistent(version = 3, migrate(1 = A))]
            struct AccountActor;
        ))
        .to_string();
        assert!(out.contains("compile_error"));
        assert!(!out.contains("migrate_state"));
        assert!(!out.contains("VERSION"));
    }
}
