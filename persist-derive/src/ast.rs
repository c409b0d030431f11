//! The derive's model of its input: the actor type, reduced to what the expansion needs,
//! holding syn's own nodes so every error can point at the token that caused it.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Generics, Ident, LitStr, Token};

use crate::attr::{self, Attrs};
use crate::ctxt::Ctxt;

/// One `#[derive(Persistent)]` input.
pub(crate) struct Actor<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) shape: Shape<'a>,
    pub(crate) generics: &'a Generics,
    pub(crate) attrs: Attrs,
}

/// What kind of item the derive was put on; only `Struct` is an actor.
pub(crate) enum Shape<'a> {
    Struct,
    Enum(&'a Token![enum]),
    Union(&'a Token![union]),
}

impl<'a> Actor<'a> {
    /// Builds the model; attribute mistakes are recorded in `cx`, never returned.
    pub(crate) fn from_syn(cx: &Ctxt, node: &'a DeriveInput) -> Self {
        let shape = match &node.data {
            Data::Struct(_) => Shape::Struct,
            Data::Enum(data) => Shape::Enum(&data.enum_token),
            Data::Union(data) => Shape::Union(&data.union_token),
        };
        Actor {
            ident: &node.ident,
            shape,
            generics: &node.generics,
            attrs: attr::get(cx, &node.attrs),
        }
    }

    /// The storage namespace: `name = "..."` as written, or the type's identifier.
    pub(crate) fn name(&self) -> LitStr {
        match &self.attrs.name {
            Some(lit) => lit.clone(),
            None => {
                let ident = self.ident.to_string();
                let ident = ident.strip_prefix("r#").unwrap_or(&ident);
                LitStr::new(ident, self.ident.span())
            }
        }
    }

    /// The path of the crate that exports `__private`: `crate = "..."`, or the facade.
    pub(crate) fn krate(&self) -> TokenStream {
        match &self.attrs.krate {
            Some(path) => quote!(#path),
            None => quote!(::ractor_persist),
        }
    }

    /// The current schema version: `version = N`, or 1. `None` when `version` was given
    /// but could not be read, so nothing that depends on it can be checked.
    pub(crate) fn version(&self) -> Option<u32> {
        match &self.attrs.version {
            Some(version) => Some(version.value),
            None if self.attrs.version_failed => None,
            None => Some(1),
        }
    }

    /// Whether an impl can be written for this input at all: a plain struct, no
    /// generics, and a runtime path that is known.
    pub(crate) fn can_stub(&self) -> bool {
        matches!(self.shape, Shape::Struct)
            && self.generics.params.is_empty()
            && !self.attrs.krate_failed
    }
}
