//! The rules an input must follow beyond parsing: what may be an actor, and what may be
//! a storage namespace.

use syn::LitStr;

use crate::ast::{Actor, Shape};
use crate::ctxt::Ctxt;

/// Records every rule `actor` breaks in `cx`.
pub(crate) fn check(cx: &Ctxt, actor: &Actor) {
    check_shape(cx, actor);
    check_generics(cx, actor);
    if let Some(name) = &actor.attrs.name {
        check_name(cx, name);
    }
}

fn check_shape(cx: &Ctxt, actor: &Actor) {
    match actor.shape {
        Shape::Struct => {}
        Shape::Enum(token) => cx.error_spanned_by(
            token,
            "#[derive(Persistent)] applies to the actor struct, not an enum",
        ),
        Shape::Union(token) => cx.error_spanned_by(
            token,
            "#[derive(Persistent)] applies to the actor struct, not a union",
        ),
    }
}

fn check_generics(cx: &Ctxt, actor: &Actor) {
    // The namespace is one string per type; `Foo<A>` and `Foo<B>` would share it
    // and read each other's records.
    if !actor.generics.params.is_empty() {
        cx.error_spanned_by(
            actor.generics,
            "#[derive(Persistent)] does not support generic actors: \
             the storage namespace must name one concrete type",
        );
    }
}

/// The namespace is stored in every actor key, so it must be stable and unambiguous.
fn check_name(cx: &Ctxt, lit: &LitStr) {
    let name = lit.value();
    if name.is_empty() {
        cx.error_spanned_by(
            lit,
            "the persistent name must not be empty: it is the storage namespace of this actor type",
        );
        return;
    }
    if name.contains('/') {
        cx.error_spanned_by(
            lit,
            "the persistent name must not contain `/`: it separates the name from the actor key",
        );
    }
    if name.trim() != name {
        cx.error_spanned_by(
            lit,
            "the persistent name must not begin or end with whitespace",
        );
    }
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use crate::expand::error_messages;

    const GENERIC: &str = "#[derive(Persistent)] does not support generic actors: \
                           the storage namespace must name one concrete type";

    #[test]
    fn every_struct_form_is_an_actor() {
        assert!(
            error_messages(&parse_quote!(
                struct A;
            ))
            .is_empty()
        );
        assert!(
            error_messages(&parse_quote!(
                struct A(u8);
            ))
            .is_empty()
        );
        assert!(
            error_messages(&parse_quote!(
                struct A {
                    a: u8,
                }
            ))
            .is_empty()
        );
    }

    #[test]
    fn enum_is_not_an_actor() {
        assert_eq!(
            error_messages(&parse_quote!(
                enum A {
                    B,
                }
            )),
            ["#[derive(Persistent)] applies to the actor struct, not an enum"]
        );
    }

    #[test]
    fn union_is_not_an_actor() {
        assert_eq!(
            error_messages(&parse_quote!(union A { b: u8 })),
            ["#[derive(Persistent)] applies to the actor struct, not a union"]
        );
    }

    #[test]
    fn generic_parameters_of_every_kind_are_rejected() {
        let inputs: [syn::DeriveInput; 3] = [
            parse_quote!(
                struct A<T>(T);
            ),
            parse_quote!(
                struct A<'a>(&'a u8);
            ),
            parse_quote!(
                struct A<const N: usize>;
            ),
        ];
        for input in inputs {
            assert_eq!(error_messages(&input), [GENERIC]);
        }
    }

    #[test]
    fn name_must_not_be_empty() {
        assert_eq!(
            error_messages(&parse_quote!(
                #[persistent(name = "")]
                struct A;
            )),
            [
                "the persistent name must not be empty: it is the storage namespace of this actor type"
            ]
        );
    }

    #[test]
    fn name_must_not_contain_a_slash() {
        assert_eq!(
            error_messages(&parse_quote!(
                #[persistent(name = "bank/account")]
                struct A;
            )),
            ["the persistent name must not contain `/`: it separates the name from the actor key"]
        );
    }

    #[test]
    fn name_must_not_begin_or_end_with_whitespace() {
        for bad in [" account", "account\n", "\taccount "] {
            let input = syn::parse_str(&format!("#[persistent(name = {bad:?})] struct A;"))
                .expect("test input parses");
            assert_eq!(
                error_messages(&input),
                ["the persistent name must not begin or end with whitespace"],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn inner_spaces_and_unicode_are_allowed() {
        let input = parse_quote!(
            #[persistent(name = "bank account é")]
            struct A;
        );
        assert!(error_messages(&input).is_empty());
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let input = parse_quote!(
            #[persistent(name = "", nme = "x", crate = 1)]
            #[persistent(name = "again")]
            enum A<T> {
                B(T),
            }
        );
        assert_eq!(
            error_messages(&input),
            [
                "unknown persistent attribute `nme`",
                "expected a string literal for `crate`, e.g. #[persistent(crate = \"ractor_persist\")]",
                "duplicate persistent attribute `name`",
                "#[derive(Persistent)] applies to the actor struct, not an enum",
                GENERIC,
                "the persistent name must not be empty: it is the storage namespace of this actor type",
            ]
        );
    }
}
