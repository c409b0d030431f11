//! Parses `#[persistent(...)]`: which keys were given, with which values.
//!
//! Only the shape of each attribute is checked here (known key, said once, a string);
//! what a value means is checked in `valid.rs`.

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, LitStr, Path, Token};

use crate::ctxt::Ctxt;

/// The keys of every `#[persistent(...)]` on one item, the first occurrence of each.
pub(crate) struct Attrs {
    /// `name = "..."`, kept as the literal so later errors can point at it.
    pub(crate) name: Option<LitStr>,
    /// `crate = "..."`, parsed as a path (its tokens carry the literal's span).
    pub(crate) krate: Option<Path>,
    /// `crate = "..."` was given but could not be used, so no default may stand in for it.
    pub(crate) krate_failed: bool,
}

/// Reads every `#[persistent(...)]` in `attrs`, recording each mistake in `cx` and
/// carrying on, so one compile reports them all.
pub(crate) fn get(cx: &Ctxt, attrs: &[Attribute]) -> Attrs {
    let mut out = Attrs {
        name: None,
        krate: None,
        krate_failed: false,
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

    use crate::expand::error_messages;

    const EXPECTED_NAME: &str =
        "expected a string literal for `name`, e.g. #[persistent(name = \"account\")]";
    const EXPECTED_CRATE: &str =
        "expected a string literal for `crate`, e.g. #[persistent(crate = \"ractor_persist\")]";
    const EXPECTED_PATH: &str =
        "expected a path for `crate`, e.g. #[persistent(crate = \"ractor_persist\")]";

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
}
