//! The rules an input must follow beyond parsing: what may be an actor, what may be a
//! storage namespace, and what makes a schema version and its migrations complete.

use std::collections::BTreeSet;

use syn::LitStr;

use crate::ast::{Actor, Shape};
use crate::attr::Chain;
use crate::ctxt::Ctxt;

/// Records every rule `actor` breaks in `cx`.
pub(crate) fn check(cx: &Ctxt, actor: &Actor) {
    check_shape(cx, actor);
    check_generics(cx, actor);
    if let Some(name) = &actor.attrs.name {
        check_name(cx, name);
    }
    check_version(cx, actor);
    if let Some(chain) = &actor.attrs.migrate {
        check_chain(cx, actor, chain, "state");
    }
    if let Some(chain) = &actor.attrs.migrate_ops {
        check_chain(cx, actor, chain, "operation");
    }
    if let Some(chain) = &actor.attrs.migrate_events {
        if actor.attrs.event_sourced.is_none() {
            cx.error_spanned_by(
                &chain.key,
                "`migrate_events` needs `event_sourced`: only an event-sourced actor has events",
            );
        } else {
            check_chain(cx, actor, chain, "event");
        }
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

fn check_version(cx: &Ctxt, actor: &Actor) {
    if let Some(version) = &actor.attrs.version
        && version.value == 0
    {
        cx.error_spanned_by(&version.lit, "`version` starts at 1");
    }
}

/// A chain names every older version exactly once, so that a record of any older version
/// has a path of `From`s to the current type, and nothing else.
fn check_chain(cx: &Ctxt, actor: &Actor, chain: &Chain, what: &str) {
    let key = &chain.key;
    // Unknown when `version` itself is wrong, which is reported already.
    let current = actor.version().filter(|&n| n >= 1);
    if current == Some(1) {
        cx.error_spanned_by(key, format!("`{key}` needs `version` above 1"));
        return;
    }
    let mut seen = BTreeSet::new();
    for step in &chain.steps {
        let v = step.value;
        if !seen.insert(v) {
            cx.error_spanned_by(
                &step.version,
                format!("duplicate migration for version {v}"),
            );
        } else if v == 0 {
            cx.error_spanned_by(
                &step.version,
                format!("`{key}` names version 0, but versions start at 1"),
            );
        } else if current == Some(v) {
            cx.error_spanned_by(
                &step.version,
                format!(
                    "`{key}` names version {v}, but {v} is the current version: \
                     migrations name only older versions"
                ),
            );
        } else if let Some(n) = current
            && v > n
        {
            cx.error_spanned_by(
                &step.version,
                format!(
                    "`{key}` names version {v}, but the current version is {n}: \
                     migrations name only older versions"
                ),
            );
        }
    }
    // A malformed entry (reported already) may be the version that looks missing.
    let Some(current) = current.filter(|_| !chain.malformed) else {
        return;
    };
    // Gaps as ranges, never one entry per version: `version` may be up to u32::MAX.
    let mut gaps = Vec::new();
    let mut next = 1;
    for &v in seen.range(1..current) {
        if v > next {
            gaps.push((next, v - 1));
        }
        next = v + 1;
    }
    if next < current {
        gaps.push((next, current - 1));
    }
    let gap = match gaps.as_slice() {
        [] => return,
        [(first, last)] if first == last => format!("no {what} type for version {first}"),
        _ => {
            let runs: Vec<String> = gaps
                .iter()
                .map(|(first, last)| {
                    if first == last {
                        first.to_string()
                    } else {
                        format!("{first}-{last}")
                    }
                })
                .collect();
            format!("no {what} types for versions {}", runs.join(", "))
        }
    };
    cx.syn_error(syn::Error::new(
        chain.list,
        format!("migration chain has a gap: {gap}"),
    ));
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use crate::expand::{attr_messages as messages, error_messages};

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

    #[test]
    fn event_migrations_need_an_event_sourced_actor_and_a_complete_chain() {
        assert!(messages("version = 3, event_sourced, migrate_events(2 = B, 1 = A)").is_empty());
        assert_eq!(
            messages("version = 2, migrate_events(1 = A)"),
            ["`migrate_events` needs `event_sourced`: only an event-sourced actor has events"]
        );
        assert_eq!(
            messages("version = 3, event_sourced, migrate_events(1 = A)"),
            ["migration chain has a gap: no event type for version 2"]
        );
        assert_eq!(
            messages("event_sourced = true, event_sourced, event_sourced"),
            [
                "`event_sourced` takes no value, e.g. #[persistent(event_sourced)]",
                "duplicate persistent attribute `event_sourced`",
            ]
        );
    }

    #[test]
    fn version_starts_at_1() {
        assert_eq!(messages("version = 0"), ["`version` starts at 1"]);
        assert!(messages("version = 1").is_empty());
    }

    #[test]
    fn a_complete_chain_in_any_order_is_accepted() {
        assert!(
            messages("version = 3, migrate(2 = B, 1 = A), migrate_ops(1 = C, 2 = D)").is_empty()
        );
        assert!(messages("migrate_ops(1 = C), version = 2").is_empty());
    }

    #[test]
    fn a_chain_needs_version_above_1() {
        assert_eq!(
            messages("migrate(1 = A)"),
            ["`migrate` needs `version` above 1"]
        );
        assert_eq!(
            messages("version = 1, migrate(1 = A), migrate_ops()"),
            [
                "`migrate` needs `version` above 1",
                "`migrate_ops` needs `version` above 1",
            ]
        );
    }

    #[test]
    fn a_gap_names_the_missing_version_and_what_it_is_for() {
        assert_eq!(
            messages("version = 3, migrate(1 = A)"),
            ["migration chain has a gap: no state type for version 2"]
        );
        assert_eq!(
            messages("version = 3, migrate_ops(2 = B)"),
            ["migration chain has a gap: no operation type for version 1"]
        );
    }

    #[test]
    fn many_missing_versions_make_one_short_error() {
        assert_eq!(
            messages("version = 9, migrate(2 = B, 5 = E, 6 = F)"),
            ["migration chain has a gap: no state types for versions 1, 3-4, 7-8"]
        );
        assert_eq!(
            messages("version = 4294967295, migrate(1 = A)"),
            ["migration chain has a gap: no state types for versions 2-4294967294"]
        );
    }

    #[test]
    fn a_chain_names_only_older_versions() {
        assert_eq!(
            messages("version = 2, migrate(1 = A, 2 = B, 3 = C, 0 = Z)"),
            [
                "`migrate` names version 2, but 2 is the current version: \
                 migrations name only older versions",
                "`migrate` names version 3, but the current version is 2: \
                 migrations name only older versions",
                "`migrate` names version 0, but versions start at 1",
            ]
        );
    }

    #[test]
    fn a_version_named_twice_is_reported_at_the_second() {
        assert_eq!(
            messages("version = 3, migrate(1 = A, 2 = B, 1 = C, 1 = D)"),
            [
                "duplicate migration for version 1",
                "duplicate migration for version 1",
            ]
        );
    }

    #[test]
    fn a_wrong_version_does_not_add_chain_errors() {
        assert_eq!(
            messages("version = \"3\", migrate(1 = A, 7 = B)"),
            ["expected an integer literal for `version`, e.g. #[persistent(version = 2)]"]
        );
        assert_eq!(
            messages("version = 0, migrate(1 = A)"),
            ["`version` starts at 1"]
        );
        // What does not depend on the version is still checked.
        assert_eq!(
            messages("version = 0, migrate(1 = A, 1 = B)"),
            ["`version` starts at 1", "duplicate migration for version 1"]
        );
    }

    #[test]
    fn a_malformed_entry_does_not_add_a_gap() {
        assert_eq!(
            messages("version = 3, migrate(1 = A, 2 => B)"),
            ["expected `VERSION = Type`"]
        );
    }
}
