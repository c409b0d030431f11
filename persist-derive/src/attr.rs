//! Parses `#[persistent(...)]`: which keys were given, with which values.
//!
//! Only the shape of each attribute is checked here (known key, said once, a value of the
//! right kind); what a value means is checked in `valid.rs`.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::parse::discouraged::Speculative;
use syn::{Attribute, Ident, LitInt, LitStr, Path, Token, Type, parenthesized};

use crate::ctxt::Ctxt;

/// The keys of every `#[persistent(...)]` on one item, the first occurrence of each.
pub(crate) struct Attrs {
    /// `name = "..."`, kept as the literal so later errors can point at it.
    pub(crate) name: Option<LitStr>,
    /// `crate = "..."`, parsed as a path (its tokens carry the literal's span).
    pub(crate) krate: Option<Path>,
    /// `crate = "..."` was given but could not be used, so no default may stand in for it.
    pub(crate) krate_failed: bool,
    /// `version = N`.
    pub(crate) version: Option<Version>,
    /// `version` was given but is not a `u32` literal, so the current version is unknown.
    pub(crate) version_failed: bool,
    /// `migrate(...)`: the older state types.
    pub(crate) migrate: Option<Chain>,
    /// `migrate_ops(...)`: the older operation types.
    pub(crate) migrate_ops: Option<Chain>,
    /// `event_sourced`: the actor's journal is its truth (it implements `EventSourced`).
    pub(crate) event_sourced: Option<Path>,
    /// `migrate_events(...)`: the older event types.
    pub(crate) migrate_events: Option<Chain>,
}

/// `version = N`: the literal, for spans, and its value.
pub(crate) struct Version {
    pub(crate) lit: LitInt,
    pub(crate) value: u32,
}

/// `migrate(1 = StateV1, 2 = StateV2)` or `migrate_ops(...)`, entries in written order.
pub(crate) struct Chain {
    /// The key as written, for errors about the chain as a whole.
    pub(crate) key: Ident,
    /// The parenthesised list, where a missing version is reported.
    pub(crate) list: Span,
    /// Every well-formed entry (malformed ones were reported and dropped).
    pub(crate) steps: Vec<Step>,
    /// Some entry was malformed, so a version missing from `steps` may be the one it meant.
    pub(crate) malformed: bool,
}

/// One `VERSION = Type` entry of a chain.
pub(crate) struct Step {
    pub(crate) version: LitInt,
    pub(crate) value: u32,
    pub(crate) ty: Type,
}

/// Reads every `#[persistent(...)]` in `attrs`, recording each mistake in `cx` and
/// carrying on, so one compile reports them all.
pub(crate) fn get(cx: &Ctxt, attrs: &[Attribute]) -> Attrs {
    let mut out = Attrs {
        name: None,
        krate: None,
        krate_failed: false,
        version: None,
        version_failed: false,
        migrate: None,
        migrate_ops: None,
        event_sourced: None,
        migrate_events: None,
    };
    for attr in attrs
        .iter()
        .filter(|attr| attr.path().is_ident("persistent"))
    {
        let parsed = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let value = string_value(cx, &meta, "name", "account")?;
                if out.name.is_some() {
                    duplicate(cx, &meta);
                } else {
                    out.name = value;
                }
            } else if meta.path.is_ident("crate") {
                let value = string_value(cx, &meta, "crate", "ractor_persist")?;
                let path = value.and_then(|lit| crate_path(cx, &lit));
                if out.krate.is_some() || out.krate_failed {
                    duplicate(cx, &meta);
                } else {
                    out.krate_failed = path.is_none();
                    out.krate = path;
                }
            } else if meta.path.is_ident("version") {
                let value = version_value(cx, &meta)?;
                if out.version.is_some() || out.version_failed {
                    duplicate(cx, &meta);
                } else {
                    out.version_failed = value.is_none();
                    out.version = value;
                }
            } else if meta.path.is_ident("migrate")
                || meta.path.is_ident("migrate_ops")
                || meta.path.is_ident("migrate_events")
            {
                let chain = chain(cx, &meta)?;
                let slot = if meta.path.is_ident("migrate") {
                    &mut out.migrate
                } else if meta.path.is_ident("migrate_ops") {
                    &mut out.migrate_ops
                } else {
                    &mut out.migrate_events
                };
                if slot.is_some() {
                    duplicate(cx, &meta);
                } else {
                    *slot = chain;
                }
            } else if meta.path.is_ident("event_sourced") {
                if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                    cx.error_spanned_by(
                        &meta.path,
                        "`event_sourced` takes no value, e.g. #[persistent(event_sourced)]",
                    );
                    value_tokens(meta.input)?;
                } else if out.event_sourced.is_some() {
                    duplicate(cx, &meta);
                } else {
                    out.event_sourced = Some(meta.path.clone());
                }
            } else {
                let key = key_string(&meta.path);
                cx.error_spanned_by(&meta.path, format!("unknown persistent attribute `{key}`"));
                value_tokens(meta.input)?;
            }
            Ok(())
        });
        // Only malformed syntax (not a key list at all) ends up here; syn spans it.
        if let Err(err) = parsed {
            cx.syn_error(err);
        }
    }
    out
}

fn duplicate(cx: &Ctxt, meta: &ParseNestedMeta) {
    let key = key_string(&meta.path);
    cx.error_spanned_by(
        &meta.path,
        format!("duplicate persistent attribute `{key}`"),
    );
}

/// The string literal after `key =`; `None` (with an error recorded) for anything else.
fn string_value(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    key: &str,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    let expected =
        format!("expected a string literal for `{key}`, e.g. #[persistent({key} = \"{example}\")]");
    if !meta.input.peek(Token![=]) {
        // `name` alone, or `name(...)`: there is no value to point at, so point at the key.
        value_tokens(meta.input)?;
        cx.error_spanned_by(&meta.path, expected);
        return Ok(None);
    }
    meta.input.parse::<Token![=]>()?;
    let value = value_tokens(meta.input)?;
    if value.is_empty() {
        cx.error_spanned_by(&meta.path, expected);
        return Ok(None);
    }
    match syn::parse2::<LitStr>(value.clone()) {
        Ok(lit) if lit.suffix().is_empty() => Ok(Some(lit)),
        _ => {
            cx.error_spanned_by(value, expected);
            Ok(None)
        }
    }
}

/// The integer literal after `version =`; `None` (with an error recorded) for anything else.
fn version_value(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<Version>> {
    const EXPECTED: &str =
        "expected an integer literal for `version`, e.g. #[persistent(version = 2)]";
    if !meta.input.peek(Token![=]) {
        value_tokens(meta.input)?;
        cx.error_spanned_by(&meta.path, EXPECTED);
        return Ok(None);
    }
    meta.input.parse::<Token![=]>()?;
    let value = value_tokens(meta.input)?;
    if value.is_empty() {
        cx.error_spanned_by(&meta.path, EXPECTED);
        return Ok(None);
    }
    let Ok(lit) = syn::parse2::<LitInt>(value.clone()) else {
        cx.error_spanned_by(value, EXPECTED);
        return Ok(None);
    };
    if !matches!(lit.suffix(), "" | "u32") || lit.base10_digits().starts_with('-') {
        cx.error_spanned_by(value, EXPECTED);
        return Ok(None);
    }
    match lit.base10_parse::<u32>() {
        Ok(value) => Ok(Some(Version { lit, value })),
        Err(_) => {
            cx.error_spanned_by(&lit, "`version` must fit in a u32");
            Ok(None)
        }
    }
}

/// The list after `migrate` or `migrate_ops`. A malformed entry is reported and skipped, so
/// the others are still checked; `None` only when there is no list at all.
fn chain(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<Chain>> {
    let key = meta.path.get_ident().expect("checked by is_ident").clone();
    if !meta.input.peek(syn::token::Paren) {
        value_tokens(meta.input)?;
        cx.error_spanned_by(
            &key,
            format!(
                "expected a list for `{key}`, e.g. #[persistent({key}(1 = {}))]",
                match key.to_string().as_str() {
                    "migrate" => "StateV1",
                    "migrate_ops" => "OpV1",
                    _ => "EventV1",
                }
            ),
        );
        return Ok(None);
    }
    let content;
    let paren = parenthesized!(content in meta.input);
    let mut steps = Vec::new();
    let mut malformed = false;
    while !content.is_empty() {
        let fork = content.fork();
        match step(&fork) {
            Ok(step) if fork.is_empty() || fork.peek(Token![,]) => {
                content.advance_to(&fork);
                steps.push(step);
            }
            _ => {
                malformed = true;
                let at = content.span();
                let bad = value_tokens(&content)?;
                let err = if bad.is_empty() {
                    syn::Error::new(at, "expected `VERSION = Type`")
                } else {
                    syn::Error::new_spanned(bad, "expected `VERSION = Type`")
                };
                cx.syn_error(err);
            }
        }
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
        }
    }
    // Whatever follows the list (`migrate(..) = x`) is not ours to guess at.
    let rest = value_tokens(meta.input)?;
    if !rest.is_empty() {
        cx.error_spanned_by(rest, "unexpected tokens after the list");
    }
    Ok(Some(Chain {
        key,
        list: paren.span.join(),
        steps,
        malformed,
    }))
}

/// `VERSION = Type`, the version an unsuffixed (or `u32`) integer.
fn step(input: ParseStream) -> syn::Result<Step> {
    let version: LitInt = input.parse()?;
    if !matches!(version.suffix(), "" | "u32") {
        return Err(input.error("expected `VERSION = Type`"));
    }
    let value = version.base10_parse::<u32>()?;
    input.parse::<Token![=]>()?;
    let ty: Type = input.parse()?;
    Ok(Step { version, value, ty })
}

/// The path written inside `crate = "..."`; only plain module paths are accepted,
/// since the expansion appends `::__private::...` to it.
fn crate_path(cx: &Ctxt, lit: &LitStr) -> Option<Path> {
    let path = lit.parse::<Path>().ok().filter(|path| {
        path.segments
            .iter()
            .all(|segment| segment.arguments.is_none())
    });
    if path.is_none() {
        cx.error_spanned_by(
            lit,
            "expected a path for `crate`, e.g. #[persistent(crate = \"ractor_persist\")]",
        );
    }
    path
}

/// Consumes the rest of one `key ...` entry, up to the next top-level comma, so that
/// parsing can go on to the next key after a mistake.
fn value_tokens(input: ParseStream) -> syn::Result<TokenStream> {
    let mut tokens = TokenStream::new();
    while !input.is_empty() && !input.peek(Token![,]) {
        tokens.extend([input.parse::<TokenTree>()?]);
    }
    Ok(tokens)
}

/// `a::b` rather than quote's `a :: b`, for messages.
fn key_string(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use crate::expand::{attr_messages as messages, error_messages};

    const EXPECTED_NAME: &str =
        "expected a string literal for `name`, e.g. #[persistent(name = \"account\")]";
    const EXPECTED_CRATE: &str =
        "expected a string literal for `crate`, e.g. #[persistent(crate = \"ractor_persist\")]";
    const EXPECTED_PATH: &str =
        "expected a path for `crate`, e.g. #[persistent(crate = \"ractor_persist\")]";
    const EXPECTED_VERSION: &str =
        "expected an integer literal for `version`, e.g. #[persistent(version = 2)]";
    const EXPECTED_STEP: &str = "expected `VERSION = Type`";

    #[test]
    fn no_attribute_is_no_error() {
        assert!(
            error_messages(&parse_quote!(
                struct A;
            ))
            .is_empty()
        );
        assert!(
            error_messages(&parse_quote!(
                #[persistent()]
                struct A;
            ))
            .is_empty()
        );
    }

    #[test]
    fn other_attributes_are_ignored() {
        let input = parse_quote!(
            #[serde(name = 5)]
            #[doc = "x"]
            struct A;
        );
        assert!(error_messages(&input).is_empty());
    }

    #[test]
    fn unknown_key_is_named() {
        let input = parse_quote!(
            #[persistent(nmae = "account")]
            struct A;
        );
        assert_eq!(
            error_messages(&input),
            ["unknown persistent attribute `nmae`"]
        );
    }

    #[test]
    fn unknown_key_of_any_form_is_skipped_and_parsing_goes_on() {
        let input = parse_quote!(
            #[persistent(a, b(c, d), e::f = 1 + 2, name = 5)]
            struct A;
        );
        assert_eq!(
            error_messages(&input),
            [
                "unknown persistent attribute `a`",
                "unknown persistent attribute `b`",
                "unknown persistent attribute `e::f`",
                EXPECTED_NAME,
            ]
        );
    }

    #[test]
    fn duplicate_key_is_reported_once_per_repeat() {
        let input = parse_quote!(
            #[persistent(name = "a")]
            #[persistent(name = "b", name = "c")]
            struct A;
        );
        assert_eq!(
            error_messages(&input),
            [
                "duplicate persistent attribute `name`",
                "duplicate persistent attribute `name`",
            ]
        );
    }

    #[test]
    fn duplicate_crate_is_reported_even_after_a_bad_first_value() {
        let input = parse_quote!(
            #[persistent(crate = "1", crate = "x")]
            struct A;
        );
        assert_eq!(
            error_messages(&input),
            [EXPECTED_PATH, "duplicate persistent attribute `crate`"]
        );
    }

    #[test]
    fn name_must_be_a_string_literal() {
        let inputs: [syn::DeriveInput; 6] = [
            parse_quote!(
                #[persistent(name = 5)]
                struct A;
            ),
            parse_quote!(
                #[persistent(name)]
                struct A;
            ),
            parse_quote!(
                #[persistent(name = )]
                struct A;
            ),
            parse_quote!(
                #[persistent(name("a"))]
                struct A;
            ),
            parse_quote!(
                #[persistent(name = b"a")]
                struct A;
            ),
            parse_quote!(
                #[persistent(name = "a" "b")]
                struct A;
            ),
        ];
        for input in inputs {
            assert_eq!(error_messages(&input), [EXPECTED_NAME]);
        }
    }

    #[test]
    fn crate_must_be_a_string_literal() {
        let input = parse_quote!(
            #[persistent(crate = 1)]
            struct A;
        );
        assert_eq!(error_messages(&input), [EXPECTED_CRATE]);
        let input = parse_quote!(
            #[persistent(crate = persist_core)]
            struct A;
        );
        assert_eq!(error_messages(&input), [EXPECTED_CRATE]);
    }

    #[test]
    fn crate_must_hold_a_module_path() {
        for bad in ["", "not a path", "a::", "a<T>", "a::b()"] {
            let input = syn::parse_str(&format!("#[persistent(crate = {bad:?})] struct A;"))
                .expect("test input parses");
            assert_eq!(error_messages(&input), [EXPECTED_PATH], "{bad:?}");
        }
        for good in ["crate", "persist_core", "::ractor_persist", "self::x::y"] {
            let input = syn::parse_str(&format!("#[persistent(crate = {good:?})] struct A;"))
                .expect("test input parses");
            assert!(error_messages(&input).is_empty(), "{good:?}");
        }
    }

    #[test]
    fn malformed_attribute_is_a_syn_error() {
        let input = parse_quote!(
            #[persistent]
            struct A;
        );
        assert_eq!(error_messages(&input).len(), 1);
        let input = parse_quote!(
            #[persistent = "x"]
            struct A;
        );
        assert_eq!(error_messages(&input).len(), 1);
    }

    #[test]
    fn version_must_be_an_integer_literal() {
        for bad in [
            "version = \"2\"",
            "version",
            "version = ",
            "version(2)",
            "version = 2.0",
            "version = -1",
            "version = 2u8",
            "version = two",
        ] {
            assert_eq!(messages(bad), [EXPECTED_VERSION], "{bad}");
        }
        assert!(messages("version = 2u32").is_empty());
        assert!(messages("version = 0x10").is_empty());
    }

    #[test]
    fn version_must_fit_in_a_u32() {
        assert_eq!(
            messages("version = 4294967296"),
            ["`version` must fit in a u32"]
        );
        assert!(messages("version = 4294967295").is_empty());
    }

    #[test]
    fn duplicate_version_is_reported_even_after_a_bad_first_value() {
        assert_eq!(
            messages("version = \"2\", version = 3"),
            [EXPECTED_VERSION, "duplicate persistent attribute `version`"]
        );
    }

    #[test]
    fn duplicate_chains_are_reported_at_the_second() {
        assert_eq!(
            messages(
                "version = 2, migrate(1 = A), migrate(1 = B), migrate_ops(1 = C), migrate_ops()"
            ),
            [
                "duplicate persistent attribute `migrate`",
                "duplicate persistent attribute `migrate_ops`",
            ]
        );
    }

    #[test]
    fn chains_must_be_lists() {
        assert_eq!(
            messages("version = 2, migrate = A, migrate_ops"),
            [
                "expected a list for `migrate`, e.g. #[persistent(migrate(1 = StateV1))]",
                "expected a list for `migrate_ops`, e.g. #[persistent(migrate_ops(1 = OpV1))]",
            ]
        );
    }

    #[test]
    fn malformed_entries_are_reported_one_by_one() {
        for bad in [
            "1 => A",
            "A",
            "1 =",
            "= A",
            "-1 = A",
            "\"1\" = A",
            "x = A",
            "1 = A B",
            "1u8 = A",
            "1 = 2",
        ] {
            assert_eq!(
                messages(&format!("version = 2, migrate({bad})")),
                [EXPECTED_STEP],
                "{bad}"
            );
        }
        assert_eq!(
            messages("version = 3, migrate(, 1 = A, 2 B, 2 = B)"),
            [EXPECTED_STEP, EXPECTED_STEP]
        );
    }

    #[test]
    fn entries_take_any_type_and_a_trailing_comma() {
        assert!(
            messages(
                "version = 4, migrate(1 = v1::Account<u8, String>, 2 = (u8, u16), 3 = [u8; 4],)"
            )
            .is_empty()
        );
        assert!(messages("version = 2, migrate_ops(1u32 = crate::OpV1)").is_empty());
    }

    #[test]
    fn tokens_after_a_chain_are_refused() {
        assert_eq!(
            messages("version = 2, migrate(1 = A) = B, name = 5"),
            ["unexpected tokens after the list", EXPECTED_NAME]
        );
    }
}
