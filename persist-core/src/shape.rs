//! Shape fingerprints: a hash of a type's serde shape (field names, types, variants), so a
//! change of the state type without a schema version bump is caught.

use std::any::TypeId;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, OnceLock};

use serde::de::DeserializeOwned;
use serde_reflection::{Tracer, TracerConfig};

/// The shape fingerprint of `T`, or `None` when serde-reflection cannot trace it (types with
/// hand-written `Deserialize` impls that need real input, such as untagged enums).
///
/// The fingerprint covers container names, field names and order, variant names and field
/// types. Renaming a type changes it; so does any change that changes the stored bytes' meaning.
pub fn shape_fingerprint<T: DeserializeOwned + 'static>() -> Option<u64> {
    static CACHE: OnceLock<Mutex<HashMap<TypeId, Option<u64>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(fp) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&TypeId::of::<T>())
    {
        return *fp;
    }
    let fp = catch_unwind(AssertUnwindSafe(trace::<T>)).ok().flatten();
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(TypeId::of::<T>(), fp);
    fp
}

fn trace<T: DeserializeOwned>() -> Option<u64> {
    let mut tracer = Tracer::new(TracerConfig::default());
    let (format, _) = tracer.trace_simple_type::<T>().ok()?;
    let registry = tracer.registry().ok()?;
    let bytes = postcard::to_stdvec(&(format, registry)).ok()?;
    // FNV-1a, 64 bits; never 0, which means "unknown" in the envelope.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Some(hash.max(1))
}

/// Fails with a clear message when the shape of `T` is not `recorded`: call it in a test with
/// the fingerprint you recorded, so a change of the state type without a version bump fails
/// your test suite before it reaches a store.
///
/// ```
/// # use persist_core::{assert_shape, shape_fingerprint};
/// #[derive(serde::Deserialize)]
/// struct Account { balance: u64 }
/// let recorded = shape_fingerprint::<Account>().unwrap();
/// assert_shape::<Account>(recorded);
/// ```
#[track_caller]
pub fn assert_shape<T: DeserializeOwned + 'static>(recorded: u64) {
    match shape_fingerprint::<T>() {
        Some(fp) if fp == recorded => {}
        Some(fp) => panic!(
            "the shape of `{}` changed: fingerprint {fp:#018x}, recorded {recorded:#018x}. \
             Stored records of the old shape would not decode: bump #[persistent(version = ..)] \
             and add a migration, then record the new fingerprint.",
            std::any::type_name::<T>()
        ),
        None => panic!(
            "the shape of `{}` cannot be traced by serde-reflection",
            std::any::type_name::<T>()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod v1 {
        #[derive(serde::Deserialize)]
        pub(crate) struct Account {
            pub(crate) _balance: u64,
        }
    }
    mod v2 {
        #[derive(serde::Deserialize)]
        pub(crate) struct Account {
            pub(crate) _balance: u64,
            pub(crate) _owner: String,
        }
    }
    mod v3 {
        #[derive(serde::Deserialize)]
        pub(crate) struct Account {
            pub(crate) _balance: i64,
        }
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    enum Choice {
        _A(u8),
        _B { _x: String },
    }

    #[test]
    fn a_field_added_or_retyped_changes_the_fingerprint() {
        let a = shape_fingerprint::<v1::Account>().unwrap();
        let b = shape_fingerprint::<v2::Account>().unwrap();
        let c = shape_fingerprint::<v3::Account>().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, shape_fingerprint::<v1::Account>().unwrap(), "stable");
        assert!(shape_fingerprint::<Choice>().is_some());
        assert!(shape_fingerprint::<Vec<(u8, String)>>().is_some());
    }

    #[test]
    #[should_panic(expected = "changed")]
    fn assert_shape_fails_on_a_changed_shape() {
        let old = shape_fingerprint::<v1::Account>().unwrap();
        assert_shape::<v2::Account>(old);
    }
}
