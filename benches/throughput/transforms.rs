//! What each record transform costs per message, beside the plain figure of the same run.

use std::path::Path;

use ractor_persist::{
    Keyring, MemoryStore, RedbStore, SpawnPersistent, Storage, StorageConfig, Transforms,
};

use crate::actors::{Acct, Msg};
use crate::measure::{closed_loop, cpu_time};

/// The transforms measured, by name; the first is the baseline.
pub fn variants() -> Vec<(&'static str, Transforms)> {
    let keys = || Keyring::new(1, &[7; 32]).expect("a 32-byte key");
    vec![
        ("plain", Transforms::none()),
        ("compressed", Transforms::none().compress_above(64)),
        ("encrypted", Transforms::none().encrypt(keys())),
        (
            "both",
            Transforms::none().compress_above(64).encrypt(keys()),
        ),
    ]
}

/// One figure: seconds per message (elapsed and CPU of all threads) and stored snapshot bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub wall: f64,
    pub cpu: f64,
    pub stored: usize,
}

/// One actor with a state padded to `pad` bytes, `n` state-changing messages in a closed loop,
/// on the in-memory store (`disk` false: the transform's CPU cost alone) or on redb.
pub async fn cost(dir: &Path, transforms: Transforms, pad: usize, n: usize, disk: bool) -> Cost {
    let memory = MemoryStore::new();
    let path = dir.join("transforms.redb");
    let config = StorageConfig::with_transforms(transforms);
    let storage = if disk {
        let _ = std::fs::remove_file(&path);
        Storage::with_config(RedbStore::open(&path).expect("open the store"), config)
    } else {
        Storage::with_config(memory.clone(), config)
    };
    let (actor, _) = Acct::spawn_persistent(&storage, "t", pad)
        .await
        .expect("spawn");
    let refs = [actor];
    closed_loop(&refs, (n / 10).max(10), Msg::Add).await;
    let cpu = cpu_time();
    let (secs, _) = closed_loop(&refs, n, Msg::Add).await;
    let cpu = cpu_time() - cpu;
    let [actor] = refs;
    actor.stop_and_wait(None, None).await.expect("stop");
    storage.close().await.expect("close");
    let key = ractor_persist::ActorKey::new("bench", "t");
    let stored = if disk {
        let store = RedbStore::open(&path).expect("reopen");
        let loaded =
            ractor_persist::Store::open_actor(&store, &key, &[ractor_persist::Space::SNAPSHOT])
                .expect("load");
        loaded.snapshot().map_or(0, <[u8]>::len)
    } else {
        memory.snapshot(&key).map_or(0, |s| s.len())
    };
    let _ = std::fs::remove_file(&path);
    Cost {
        wall: secs / n as f64,
        cpu: cpu / n as f64,
        stored,
    }
}
