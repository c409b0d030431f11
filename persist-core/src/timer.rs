//! Durable timers: set in a handler's commit, fired as a message once due, removed in the
//! commit of the handler that handled them.
//!
//! A timer is a row of the actor's [`crate::Space::TIMERS`] space: its name, the wall-clock
//! instant it is due (milliseconds since the Unix epoch, rounded up so that it never fires
//! before the instant asked for) and a payload. The actor's runtime sleeps until the earliest
//! is due, on the monotonic clock and at most [`MAX_SLEEP`] at a time, and fires a timer only
//! when the wall clock has reached its instant.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DecodeReason;
use crate::key::ActorKey;

/// The longest the runtime sleeps before it looks at the wall clock again: a timer whose
/// instant a forward clock step jumped over fires within this much monotonic time.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A timer row's payload ([`crate::Space::TIMERS`], id: a row id the actor handed out).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TimerRow {
    pub(crate) name: String,
    /// Milliseconds since the Unix epoch.
    pub(crate) due: u64,
    pub(crate) fingerprint: u64,
    pub(crate) payload: Vec<u8>,
}

/// A timer as the runtime keeps it in memory.
#[derive(Clone, Debug)]
pub(crate) struct Timer {
    pub(crate) row: u64,
    pub(crate) due: u64,
    pub(crate) fingerprint: u64,
    pub(crate) payload: Arc<[u8]>,
}

/// An actor's timers by name.
pub(crate) type Timers = BTreeMap<String, Timer>;

/// What a handler did to a timer, in order.
pub(crate) enum TimerChange {
    Set { name: String, timer: Timer },
    Cancel { name: String },
}

impl TimerChange {
    pub(crate) fn name(&self) -> &str {
        match self {
            TimerChange::Set { name, .. } | TimerChange::Cancel { name } => name,
        }
    }
}

/// Now, in milliseconds since the Unix epoch (0 for a clock set before it).
pub(crate) fn now_ms() -> u64 {
    to_ms_floor(SystemTime::now())
}

fn to_ms_floor(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `at` in milliseconds since the Unix epoch, rounded up (a timer never fires before `at`);
/// `None` past what a `u64` of milliseconds holds. An instant before the epoch is 0: due.
pub(crate) fn to_ms_ceil(at: SystemTime) -> Option<u64> {
    match at.duration_since(UNIX_EPOCH) {
        Err(_) => Some(0),
        Ok(d) => {
            let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
            u64::try_from(ms).ok()
        }
    }
}

/// The instant `ms` milliseconds after the Unix epoch.
pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A due timer, handed to [`crate::PersistentActor::timer`] to make the actor's message of it.
#[derive(Clone)]
pub struct Fired {
    key: ActorKey,
    name: String,
    due: u64,
    fingerprint: u64,
    payload: Arc<[u8]>,
}

impl Fired {
    pub(crate) fn new(key: ActorKey, name: String, timer: &Timer) -> Self {
        Fired {
            key,
            name,
            due: timer.due,
            fingerprint: timer.fingerprint,
            payload: timer.payload.clone(),
        }
    }

    /// The actor the timer belongs to.
    pub fn key(&self) -> &ActorKey {
        &self.key
    }

    /// The timer's name, as given to [`crate::Tx::set_timer_after`] or
    /// [`crate::Tx::set_timer_at`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instant the timer was due (rounded up to the millisecond).
    pub fn due(&self) -> SystemTime {
        from_ms(self.due)
    }

    /// Decodes the payload as `T`, only if `T` has the shape the payload was set with
    /// (otherwise [`DecodeReason::MessageShape`]).
    pub fn decode<T: DeserializeOwned + 'static>(&self) -> Result<T, DecodeReason> {
        let expected = crate::shape::shape_fingerprint::<T>().unwrap_or(0);
        if expected != self.fingerprint {
            return Err(DecodeReason::MessageShape {
                type_name: std::any::type_name::<T>(),
                sent: self.fingerprint,
                expected,
            });
        }
        crate::envelope::payload(&self.payload)
    }
}

impl fmt::Debug for Fired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fired")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("due", &self.due)
            .finish_non_exhaustive()
    }
}

/// A durable timer refused by [`crate::Tx`], or one that could not be handled. Nothing was
/// set or cancelled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TimerError {
    /// `now + after` is past what the clock can represent.
    #[error("timer `{name}` of `{key}`: a delay of {after:?} from now overflows the clock")]
    Overflow {
        /// The actor.
        key: ActorKey,
        /// The timer's name.
        name: String,
        /// The delay asked for.
        after: Duration,
    },
    /// A cancel named no timer of the actor.
    #[error("`{key}` has no timer named `{name}` to cancel")]
    Unknown {
        /// The actor.
        key: ActorKey,
        /// The name given.
        name: String,
    },
    /// The payload does not encode.
    #[error("timer `{name}` of `{key}`: the payload does not encode: {source}")]
    Encode {
        /// The actor.
        key: ActorKey,
        /// The timer's name.
        name: String,
        /// Postcard's error.
        source: postcard::Error,
    },
    /// The actor would not take the timer when it fires: its
    /// [`crate::PersistentActor::timer`] refused the payload (or is the default).
    #[error("timer `{name}` of `{key}` would be refused when it fires: {reason}")]
    NotAccepted {
        /// The actor.
        key: ActorKey,
        /// The timer's name.
        name: String,
        /// Why `timer` refused it.
        reason: DecodeReason,
    },
    /// The actor's message type has no control variant, so the runtime cannot wake it (see
    /// [`crate::PersistentActor::control`]).
    #[error(
        "`{actor_type}` has no control variant in its message type: timers cannot wake it \
         (implement PersistentActor::control and wrap_control)"
    )]
    NoControlVariant {
        /// The actor's type.
        actor_type: &'static str,
    },
    /// A stored timer fired and the actor's [`crate::PersistentActor::timer`] refused it (a
    /// payload of a type that changed since it was set). The timer stays stored; the actor
    /// stops rather than drop it.
    #[error("`{key}` refused its due timer `{name}`: {reason}")]
    Refused {
        /// The actor.
        key: ActorKey,
        /// The timer's name.
        name: String,
        /// Why `timer` refused it.
        reason: DecodeReason,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_is_rounded_up_to_the_millisecond_so_a_timer_is_never_early() {
        let at = UNIX_EPOCH + Duration::from_nanos(1_000_000_001);
        assert_eq!(to_ms_ceil(at), Some(1_001));
        let exact = UNIX_EPOCH + Duration::from_millis(7);
        assert_eq!(to_ms_ceil(exact), Some(7));
        assert_eq!(to_ms_floor(at), 1_000);
    }

    #[test]
    fn an_instant_before_the_epoch_is_due_and_one_past_u64_milliseconds_is_refused() {
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(to_ms_ceil(before), Some(0));
        if let Some(far) = UNIX_EPOCH.checked_add(Duration::from_secs(u64::MAX / 100)) {
            assert_eq!(to_ms_ceil(far), None);
        }
    }
}
