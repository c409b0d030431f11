//! Spawning persistent actors the ractor way.

use std::future::Future;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorName, ActorRef, ActorRuntime, SpawnErr};

use crate::error::{ResumeError, StoreError};
use crate::key::ActorKey;
use crate::model::{Control, Pending, Persistent, PersistentActor};
use crate::runtime::{Runtime, Start};
use crate::storage::Storage;

/// Spawns a `#[derive(Persistent)]` actor under a key. Implemented for every such actor.
///
/// If the actor cannot start, ractor's [`SpawnErr::StartupFailed`] holds the reason: a
/// [`crate::LoadError`] (downcast it) or the error `init` returned.
pub trait SpawnPersistent:
    Persistent
    + Actor<Msg = <Self as PersistentActor>::Msg, State = Runtime<Self>, Arguments = Start<Self>>
{
    /// Spawns the actor `key` on `storage`, unsupervised and unnamed.
    fn spawn_persistent(
        storage: &Storage,
        key: impl Into<String>,
        args: <Self as PersistentActor>::Arguments,
    ) -> impl Future<
        Output = Result<(ActorRef<<Self as PersistentActor>::Msg>, JoinHandle<()>), SpawnErr>,
    > + Send
    where
        Self: Default,
    {
        ActorRuntime::<Self>::spawn(None, Self::default(), Start::new(storage, key, args))
    }

    /// Spawns the actor `key` on `storage` under the registered ractor name `name`
    /// (`ractor::registry::where_is(name)` finds it), unsupervised. For a name together with a
    /// supervisor or the options of [`Start`], pass a `Start` to ractor's `Actor::spawn`
    /// or `spawn_linked` with `Some(name)`.
    fn spawn_persistent_named(
        name: impl Into<ActorName>,
        storage: &Storage,
        key: impl Into<String>,
        args: <Self as PersistentActor>::Arguments,
    ) -> impl Future<
        Output = Result<(ActorRef<<Self as PersistentActor>::Msg>, JoinHandle<()>), SpawnErr>,
    > + Send
    where
        Self: Default,
    {
        ActorRuntime::<Self>::spawn(
            Some(name.into()),
            Self::default(),
            Start::new(storage, key, args),
        )
    }

    /// Spawns the actor `key` on `storage`, linked to `supervisor`.
    fn spawn_persistent_linked(
        storage: &Storage,
        key: impl Into<String>,
        args: <Self as PersistentActor>::Arguments,
        supervisor: ActorCell,
    ) -> impl Future<
        Output = Result<(ActorRef<<Self as PersistentActor>::Msg>, JoinHandle<()>), SpawnErr>,
    > + Send
    where
        Self: Default,
    {
        ActorRuntime::<Self>::spawn_linked(
            None,
            Self::default(),
            Start::new(storage, key, args),
            supervisor,
        )
    }

    /// Deletes the stored state and pending operations of this type's actor `key`, in one
    /// commit. Stop the actor first (see [`Storage::delete`]).
    fn delete_persistent(
        storage: &Storage,
        key: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = ActorKey::new(Self::NAME, key);
        let storage = storage.clone();
        async move { storage.delete(&key).await }
    }

    /// Performs again, in sequence order, every pending operation of the running actor
    /// `actor` for which `filter` holds (for example when a peer reconnected). Needs a control
    /// variant in the message type (see [`PersistentActor::control`]).
    fn resume(
        actor: &ActorRef<<Self as PersistentActor>::Msg>,
        filter: impl Fn(&Pending<<Self as PersistentActor>::Op>) -> bool + Send + Sync + 'static,
    ) -> Result<(), ResumeError> {
        let msg = Self::wrap_control(Control::Resume(Box::new(filter))).ok_or(
            ResumeError::NoControlVariant {
                actor_type: std::any::type_name::<Self>(),
            },
        )?;
        actor
            .send_message(msg)
            .map_err(|e| ResumeError::NotRunning(e.to_string()))
    }

    /// The keys of this type's actors that hold a state in `storage`.
    fn list_persistent(
        storage: &Storage,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        let storage = storage.clone();
        async move { storage.list(Self::NAME).await }
    }
}

impl<A> SpawnPersistent for A where
    A: Persistent
        + Actor<Msg = <A as PersistentActor>::Msg, State = Runtime<A>, Arguments = Start<A>>
{
}
