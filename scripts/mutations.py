#!/usr/bin/env python3
"""Breaks the code on purpose, one promise at a time, and checks that a test goes red.

Each mutation replaces one piece of source text, runs the tests named for it, and restores
the file. A mutation whose tests still pass is a promise no test checks. Run from the
repository root: `python3 scripts/mutations.py [NAME...]` (all when no name is given). It
takes a few minutes (one incremental build per mutation) and is not part of CI; the table in
docs/durability.md lists the results.
"""

import subprocess
import sys

CORE = "persist-core/src/"
PG = "persist-postgres/src/"

# name: (file, original text, broken text, cargo test arguments)
MUTATIONS = {
    "ack-live-commit-beside-a-fenced-one-without-writing": (
        CORE + "storage.rs",
        """                            answer(i, Err(StoreError::Fenced(vec![one])), None);
                        }
                    }
""",
        """                            answer(i, Err(StoreError::Fenced(vec![one])), None);
                        }
                    }
                    for i in owners.into_iter().flatten() {
                        answer(i, Ok(()), None);
                    }
                    return;
""",
        ["-p", "persist-core", "--lib", "storage::tests::a_live_commit_batched_with_a_fenced_one"],
    ),
    "riders-written-after-the-batch": (
        CORE + "storage.rs",
        """        let mut commits: Vec<ActorCommit> = std::mem::take(&mut self.riders);
        commits.extend(batch);
        // Which commit of `batch` each one is (`None`: a rider).
        let mut owners: Vec<Option<usize>> = (0..n_riders)
            .map(|_| None)
            .chain((0..n).map(Some))
            .collect();
""",
        """        let mut commits: Vec<ActorCommit> = batch;
        commits.append(&mut self.riders);
        let mut owners: Vec<Option<usize>> = (0..n)
            .map(Some)
            .chain((0..n_riders).map(|_| None))
            .collect();
""",
        ["--test", "delivery", "a_requeue_committed_with_its_dead_letter_rider_ends_pending"],
    ),
    "ack-before-write": (
        CORE + "storage.rs",
        """        loop {
            if commits.is_empty() {
                if fenced > 0 {
""",
        """        for o in owners.iter_mut() {
            if let Some(i) = o.take() {
                answer(i, Ok(()), None);
            }
        }
        loop {
            if commits.is_empty() {
                if fenced > 0 {
""",
        ["-p", "persist-core", "--lib", "storage::tests::waiting_commits_share_one_batch"],
    ),
    "no-rollback-after-a-handler-error": (
        CORE + "runtime.rs",
        """        span.record("outcome", "handler_failed");
        span.record("error", display(&e));
        return Err(roll_back(rt, e, Attempt::NotWritten).await);
    }""",
        """        span.record("outcome", "handler_failed");
        span.record("error", display(&e));
        return Err(e);
    }""",
        ["--test", "rollback", "failed_handler"],
    ),
    "no-rollback-after-a-failed-commit": (
        CORE + "runtime.rs",
        """            return Err(roll_back(rt, e.into(), Attempt::MaybeWritten).await);""",
        """            return Err(e.into());""",
        ["--test", "rollback", "failed_commit"],
    ),
    "load-ignores-the-stored-floor": (
        CORE + "storage.rs",
        """    loaded.floor.max(after_ops(loaded)).max(header.unwrap_or(0))""",
        """    after_ops(loaded).max(header.unwrap_or(0))""",
        ["--test", "op_ids", "header_is_damaged"],
    ),
    "commit-does-not-raise-the-floor": (
        CORE + "runtime.rs",
        "        commit = commit.raise_floor(floor);\n",
        "        let _ = floor;\n",
        ["--test", "op_ids", "header_is_damaged"],
    ),
    "memory-store-lowers-a-mark": (
        CORE + "memory.rs",
        "                m.floor = m.floor.max(c.raise.floor);\n",
        "                if c.raise.floor > 0 {\n                    m.floor = c.raise.floor;\n                }\n",
        ["-p", "persist-core", "--test", "conformance", "memory::marks_are_raised_never_lowered"],
    ),
    "quarantine-does-not-write-the-floor": (
        CORE + "storage.rs",
        "                .raise_floor(floor)\n                .clear_record();\n",
        "                .clear_record();\n            let _ = floor;\n",
        ["--test", "golden", "a_store_without_floors_keeps_ids_unique_across_a_quarantine"],
    ),
    "delete-keeps-only-the-stored-floor": (
        CORE + "admin.rs",
        "        .raise_floor(sequence_floor(&loaded));\n",
        "        .raise_floor(loaded.floor);\n",
        ["--test", "golden", "a_store_without_floors_keeps_ids_unique_across_a_delete"],
    ),
    "old-ops-decoded-as-the-new-type-without-a-shape-check": (
        CORE + "model.rs",
        """    fn migrate_op(stored: Stored<'_>) -> Result<Self::Op, DecodeReason> {
        stored.decode_unchanged("operation")
    }""",
        """    fn migrate_op(stored: Stored<'_>) -> Result<Self::Op, DecodeReason> {
        crate::envelope::payload(stored.payload())
    }""",
        ["--test", "shape_rules", "an_old_op_of_another_shape"],
    ),
    "quarantine-on-any-decode-error": (
        CORE + "runtime.rs",
        """if start.quarantine && e.reason.is_damage() && journal_hooks.is_none() =>""",
        """if start.quarantine && journal_hooks.is_none() =>""",
        ["--test", "shape_rules", "quarantine_never"],
    ),
    "a-load-does-not-see-queued-riders": (
        CORE + "storage.rs",
        """        if access == Access::Any && !self.riders.is_empty() {""",
        """        if false && !self.riders.is_empty() {""",
        ["--test", "delivery", "a_dead_letter_stays_dead_after_a_respawn"],
    ),
    "every-perform-counts-as-an-attempt": (
        CORE + "runtime.rs",
        """        // A panic is a failed attempt too: ractor would fail the actor with it, and a""",
        """        if let Some(p) = rt.pending.get_mut(&seq) {
            p.attempts += 1;
        }
        let Some(p) = rt.pending.get(&seq) else {
            continue;
        };
        // A panic is a failed attempt too: ractor would fail the actor with it, and a""",
        ["--test", "delivery", "resumes_and_replays_do_not_count"],
    ),
    "attempt-counts-are-not-written": (
        CORE + "runtime.rs",
        """            rewrites.push((seq, rt.pending_envelope(seq, attempts, &bytes)));""",
        """            let _ = rt.pending_envelope(seq, attempts, &bytes);""",
        ["--test", "delivery", "failed_attempts_survive_restarts"],
    ),
    "requeue-ignores-max-pending": (
        CORE + "tx.rs",
        """        self.room()?;
        self.parts.requeued.insert(id.seq());""",
        """        self.parts.requeued.insert(id.seq());""",
        ["--test", "delivery", "requeue_past_max_pending"],
    ),
    "jitter-clamped-instead-of-refused": (
        CORE + "model.rs",
        """        if !(0.0..=1.0).contains(&jitter) {
            return Err(RetryPolicyError::Jitter(jitter));
        }
        self.jitter = jitter;""",
        """        self.jitter = jitter.clamp(0.0, 1.0);""",
        ["--test", "delivery", "retry_policy_refuses"],
    ),
    "supervision-events-not-handed-to-the-actor": (
        CORE + "lib.rs",
        """                ::std::boxed::Box::pin($crate::__private::handle_supervisor_evt(
                    self, myself, event, state,
                ))
                .await""",
        """                let _ = state;
                if let $crate::__private::ractor::SupervisionEvent::ActorTerminated(..) = event {
                    myself.stop(None);
                }
                Ok(())""",
        ["--test", "lifecycle", "a_persistent_supervisor_commits"],
    ),
    "declared-migration-types-checked-against-the-fingerprint": (
        CORE + "model.rs",
        """    pub fn decode_declared<T: DeserializeOwned>(&self) -> Result<T, DecodeReason> {
        crate::envelope::payload(self.payload)
    }""",
        """    pub fn decode_declared<T: DeserializeOwned + 'static>(&self) -> Result<T, DecodeReason> {
        self.decode()
    }""",
        ["--test", "adversarial", "docs_worked_example"],
    ),
    "floor-ignores-an-unverified-header": (
        CORE + "storage.rs",
        """            Err(_) => crate::envelope::unverified_sequence(b),""",
        """            Err(_) => None,""",
        ["--test", "adversarial", "legacy_store_payload_damage"],
    ),
    "dead-letters-written-without-their-count": (
        CORE + "runtime.rs",
        """            rewrites.push((seq, rt.op_envelope(Kind::CountedDeadOp, seq, &payload)));""",
        """            let _ = payload;
            rewrites.push((seq, rt.op_envelope(Kind::DeadOp, seq, &bytes)));""",
        ["--test", "adversarial", "a_dead_letters_attempt_count"],
    ),
    "perform-panics-not-caught": (
        CORE + "runtime.rs",
        """        let outcome = match AssertUnwindSafe(actor.perform(p, &rt.state))
            .catch_unwind()
            .await
        {""",
        """        let outcome = match Ok::<_, Box<dyn std::any::Any + Send>>(actor.perform(p, &rt.state).await) {""",
        ["--test", "adversarial", "a_panicking_perform"],
    ),
    "op-sequence-not-checked-against-its-row": (
        CORE + "runtime.rs",
        """    if header.sequence != seq {""",
        """    if header.sequence != seq && false {""",
        ["--test", "adversarial", "an_op_record_filed"],
    ),
    "only-the-first-retry-timer-is-ever-armed": (
        CORE + "runtime.rs",
        """    if rt.timer.is_some_and(|armed| armed > now && armed <= due) {""",
        """    if rt.timer.is_some() {""",
        ["--test", "adversarial_round_two", "every_waiting_retry_is_woken"],
    ),
    "a-provably-old-snapshot-header-is-trusted-over-the-floor": (
        CORE + "storage.rs",
        """        Some(Ok(v)) if v.header.sequence.saturating_add(block) >= loaded.floor => {""",
        """        Some(Ok(v)) if block > 0 => {""",
        ["--test", "adversarial_round_two", "snapshot_older_than_a_block"],
    ),
    "p3-no-replay-on-start": (
        CORE + "runtime.rs",
        """    let replay: BTreeSet<u64> = rt
        .pending
        .keys()
        .filter(|seq| !rt.retry.contains_key(seq))
        .copied()
        .collect();""",
        """    let replay: BTreeSet<u64> = BTreeSet::new();""",
        ["--test", "behaviour", "restart_restores_last_state_and_replays_pending"],
    ),
    "p6-write-every-message": (
        CORE + "runtime.rs",
        """    if changed || ops_changed {""",
        """    if changed || ops_changed || digest == rt.committed {""",
        ["--test", "behaviour", "unchanged_state_without_op_changes_writes_nothing"],
    ),
    "p7-memory-store-skips-the-fence": (
        CORE + "memory.rs",
        """        if !fences.is_empty() {""",
        """        if fences.is_empty() && !fences.is_empty() {""",
        ["--test", "behaviour", "memory::second_spawn_of_a_key_fences_the_first"],
    ),
    "p8-undecodable-record-starts-from-init": (
        CORE + "runtime.rs",
        """        Err(e) => return Err(e.into()),
    };
    let Record {""",
        """        Err(_) => Record::default(),
    };
    let Record {""",
        ["--test", "behaviour", "undecodable_snapshot_fails_the_spawn"],
    ),
    "redb-writes-a-batch-with-a-stale-epoch": (
        "persist-redb/src/store.rs",
        "            if !fences.is_empty() {\n",
        "            if false && !fences.is_empty() {\n",
        ["-p", "persist-redb", "--test", "conformance", "in_memory::a_stale_epoch_writes_nothing"],
    ),
    "redb-delete-of-another-space-removes-the-whole-space": (
        "persist-redb/src/rows.rs",
        "                        .retain_in((ns, k, s, *first)..=(ns, k, s, *last), |_, _| false)?;\n",
        "                        .retain_in((ns, k, s, 0)..=(ns, k, s, u64::MAX), |_, _| false)?;\n",
        ["-p", "persist-redb", "--test", "conformance", "in_memory::a_delete_removes_exactly"],
    ),
    "compression-kept-when-it-makes-a-record-larger": (
        CORE + "envelope.rs",
        "        if packed.len() < payload.len() {\n",
        "        if !packed.is_empty() {\n",
        ["--test", "transforms", "a_compressible_state_is_stored_compressed"],
    ),
    "encryption-not-bound-to-the-actor-key": (
        CORE + "envelope.rs",
        "    aad.extend_from_slice(&(key.len() as u32).to_le_bytes());\n    aad.extend_from_slice(key.as_bytes());\n",
        "    let _ = key;\n",
        ["--test", "transforms", "a_record_moved_to_another_key_or_sequence"],
    ),
    "encryption-not-bound-to-the-sequence": (
        CORE + "envelope.rs",
        "    aad.extend_from_slice(&place.id.to_le_bytes());\n",
        "",
        ["--test", "transforms", "a_record_moved_to_another_key_or_sequence"],
    ),
    "import-into-a-store-that-is-not-empty": (
        CORE + "transfer.rs",
        "    if mode == ImportMode::IntoEmpty\n",
        "    if mode == ImportMode::IntoEmpty && false\n",
        ["--test", "export", "not_empty"],
    ),
    "export-drops-the-floor": (
        CORE + "transfer.rs",
        "        body.extend_from_slice(&marks.floor.to_le_bytes());\n",
        "        body.extend_from_slice(&0u64.to_le_bytes());\n",
        ["--test", "export", "a_round_trip"],
    ),
    "import-skips-a-records-checksum": (
        CORE + "transfer.rs",
        "        if found != want {\n",
        "        if false && found != want {\n",
        ["--test", "export", "a_damaged_stream"],
    ),
    "sqlite-writes-a-batch-with-a-stale-epoch": (
        "persist-sqlite/src/store.rs",
        "        let fences = check_epochs(batch, |key| Ok(marks[key].0.epoch))?;\n        if !fences.is_empty() {\n",
        "        let fences = check_epochs(batch, |key| Ok(marks[key].0.epoch))?;\n        if false && !fences.is_empty() {\n",
        ["-p", "persist-sqlite", "--test", "conformance", "in_memory::a_stale_epoch_writes_nothing"],
    ),
    "sqlite-ids-stored-without-the-order-preserving-map": (
        "persist-sqlite/src/codec.rs",
        "    (x ^ (1 << 63)) as i64\n",
        "    x as i64\n",
        ["-p", "persist-sqlite", "--test", "conformance", "in_memory::ids_are_ordered"],
    ),
    "sqlite-row-checksum-not-checked": (
        "persist-sqlite/src/rows.rs",
        "    if codec::row_sum(key.namespace(), key.key(), space, id, &bytes) != sum {\n",
        "    if false && codec::row_sum(key.namespace(), key.key(), space, id, &bytes) != sum {\n",
        ["-p", "persist-sqlite", "--test", "sqlite_store", "changed_bytes_are_an_error"],
    ),
    "replace-import-takes-no-new-epoch": (
        CORE + "transfer.rs",
        "            commit.raise.epoch = commit.raise.epoch.max(fence);\n",
        "            let _ = fence;\n",
        ["--test", "adversarial_backends", "a_replace_import_fences"],
    ),
    "a-failed-delete-write-does-not-poison": (
        CORE + "storage.rs",
        "                    self.poisoned = Some(reason);\n",
        "                    let _ = reason;\n",
        ["--test", "adversarial_backends", "a_failed_delete_write_poisons"],
    ),
    "an-intact-record-over-the-cap-counted-as-damage": (
        CORE + "envelope.rs",
        "            return Err(DecodeReason::Malformed {\n                detail: format!(\n                    \"a payload of {raw_len} bytes once decompressed, over the cap of \\\n",
        "            return Err(DecodeReason::TooLarge { len: raw_len.into(), max: 0 });\n            #[allow(unreachable_code)]\n            return Err(DecodeReason::Malformed {\n                detail: format!(\n                    \"a payload of {raw_len} bytes once decompressed, over the cap of \\\n",
        ["--test", "adversarial_backends", "an_intact_compressed_record_over_the_cap_is_not_quarantined"],
    ),
    "encrypt-only-reads-a-plain-record": (
        CORE + "envelope.rs",
        "    if transforms.require_encryption && flags & ENCRYPTED == 0 {\n",
        "    if false && transforms.require_encryption && flags & ENCRYPTED == 0 {\n",
        ["--test", "transforms", "encrypt_only_refuses"],
    ),
    "sqlite-marks-replaced-not-upserted": (
        "persist-sqlite/src/schema.rs",
        "                \"INSERT INTO {k} ({MARKS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \\\n",
        "                \"INSERT OR REPLACE INTO {k} ({MARKS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) --\\\n",
        ["-p", "persist-sqlite", "--test", "adversarial_sqlite", "an_epoch_claim_does_not_cascade"],
    ),
    "sqlite-accepts-a-utf16-file": (
        "persist-sqlite/src/format.rs",
        "    if encoding != \"UTF-8\" {\n",
        "    if false && encoding != \"UTF-8\" {\n",
        ["-p", "persist-sqlite", "--test", "adversarial_sqlite", "a_utf16_application_file"],
    ),
    # Delivery between persistent actors (issue 12).
    "delivery-applies-a-duplicate": (
        CORE + "runtime.rs",
        """        Some(e) if seq <= e.applied => {
            // A duplicate: applied before; acknowledge it again.
            ack(rt, e.applied);
            return None;
        }""",
        """        Some(e) if seq <= e.applied => Ok(Some(e.slot)),""",
        ["--test", "between_actors", "a_duplicate_after_the_receivers_crash"],
    ),
    "delivery-applies-past-a-gap": (
        CORE + "runtime.rs",
        """        Some(e) if seq == e.applied + 1 => Ok(Some(e.slot)),""",
        """        Some(e) if seq > e.applied => Ok(Some(e.slot)),""",
        ["--test", "between_actors", "duplicated_and_reordered_letters"],
    ),
    "delivery-acks-before-the-receivers-commit": (
        CORE + "runtime.rs",
        """                cycle(actor, myself, rt, input, order, Some(arrival), None).await?;
                rt.storage.postbox().post(ack);""",
        """                rt.storage.postbox().post(ack);
                cycle(actor, myself, rt, input, order, Some(arrival), None).await?;""",
        ["--test", "between_actors", "the_acknowledgement_leaves_only_after"],
    ),
    "delivery-inbox-row-not-in-the-commit": (
        CORE + "runtime.rs",
        """            Ok(bytes) => rows.push((Space::INBOX, slot, bytes)),""",
        """            Ok(bytes) => drop(bytes),""",
        ["--test", "between_actors", "a_duplicate_after_the_receivers_crash"],
    ),
    "delivery-channel-row-not-in-the-commit": (
        CORE + "runtime.rs",
        """            Ok(bytes) => rows.push((Space::CHANNELS, channel.id, bytes)),""",
        """            Ok(bytes) => drop(bytes),""",
        ["--test", "between_actors", "a_senders_channel_numbers_go_on"],
    ),
    "delivery-outbox-not-in-the-commit": (
        CORE + "runtime.rs",
        """            Ok(bytes) => rows.push((Space::OUTBOX, sent.id, bytes)),""",
        """            Ok(bytes) => drop(bytes),""",
        ["--test", "between_actors", "a_destination_that_starts_after"],
    ),
    "delivery-no-redelivery-timer": (
        CORE + "runtime.rs",
        """    let Some(due) = rt.mail.scheduled.take() else {""",
        """    let Some(due) = rt.mail.scheduled.take().filter(|_| false) else {""",
        ["--test", "between_actors", "lost_letters_are_posted_again"],
    ),
    "delivery-late-destination-not-woken": (
        CORE + "delivery.rs",
        """            slot(Wire::Arrived(key.clone()));""",
        """            let _ = (slot, Wire::Arrived(key.clone()));""",
        ["--test", "between_actors", "a_destination_that_starts_after"],
    ),
    "delivery-ack-for-nothing-accepted": (
        CORE + "runtime.rs",
        """        .is_some_and(|c| c.id == letter.channel && letter.seq <= c.last);""",
        """        .is_some_and(|_| true);""",
        ["--test", "between_actors", "letters_that_make_no_sense"],
    ),
    "delivery-redelivery-counts-an-attempt": (
        CORE + "runtime.rs",
        """            Ok(Outcome::KeepUntilConfirmed) => {
                rt.retry.remove(&seq);""",
        """            Ok(Outcome::KeepUntilConfirmed) => {
                rt.retry.remove(&seq);
                if let Some(p) = rt.pending.get_mut(&seq) {
                    p.attempts += 1;
                }""",
        ["--test", "between_actors", "kept_operations_are_performed_again"],
    ),
    "delivery-settles-as-done-not-delivered": (
        CORE + "runtime.rs",
        """        rt.mail.settle(id, Settled::Delivered);""",
        """        rt.mail.settle(id, Settled::Done);""",
        ["--test", "between_actors", "a_transfer_is_applied_once"],
    ),
    "request-reply-not-in-the-commit": (
        CORE + "runtime.rs",
        """            Ok(bytes) => rows.push((Space::REQUESTS, *slot, bytes)),""",
        """            Ok(bytes) => drop(bytes),""",
        ["--test", "between_actors", "a_deposit_repeated_after_a_call_timeout"],
    ),
    "request-retention-drops-the-newest": (
        CORE + "runtime.rs",
        """        rt.mail.request_order.keys().take(over).copied().collect()""",
        """        rt.mail.request_order.keys().rev().take(over).copied().collect()""",
        ["--test", "between_actors", "request_replies_past_the_retention"],
    ),
    "request-key-reuse-not-refused": (
        CORE + "tx.rs",
        """        if first != digest {""",
        """        if false && first != digest {""",
        ["--test", "between_actors", "a_request_key_reused"],
    ),
    "seen-evicted-sender-reads-new": (
        CORE + "seen.rs",
        """                self.evicted.raise(&oldest, high);""",
        """                let _ = high;""",
        ["-p", "persist-core", "--lib", "seen::"],
    ),
    "delivery-no-fast-repost-after-a-gap": (
        CORE + "runtime.rs",
        """        let first = rt.mail.recovering.insert(letter.channel, letter.seq) != Some(letter.seq);""",
        """        let first = false && rt.mail.recovering.insert(letter.channel, letter.seq) != Some(letter.seq);""",
        ["--test", "between_actors", "a_refusal_past_a_gap_brings"],
    ),
    "delivery-stale-instance-takes-the-postbox-slot": (
        CORE + "delivery.rs",
        """            if state.actors.get(key).is_some_and(|(e, _)| *e > epoch) {""",
        """            if state.actors.get(key).is_some_and(|(e, _)| *e > epoch && false) {""",
        ["--test", "adversarial_delivery", "p7_a_stale_instance_registering_last"],
    ),
    "request-asked-twice-in-one-message-applied-twice": (
        CORE + "tx.rs",
        """            if asked.unwrap_or_default().iter().any(|k| k == key) {""",
        """            if false && asked.unwrap_or_default().iter().any(|k| k == key) {""",
        ["--test", "adversarial_delivery", "idempotent_request_asked_twice"],
    ),
    "delivery-duplicate-ack-reposts-the-tail": (
        CORE + "runtime.rs",
        """    } else if removed && rt.mail.recovering.contains_key(&letter.channel) {""",
        """    } else if !removed {
        let tail: Vec<u64> = rt
            .mail
            .outbox
            .iter()
            .filter(|(_, o)| o.to == letter.from && o.channel == letter.channel)
            .map(|(id, _)| *id)
            .collect();
        post_again(rt, tail);
        None
    } else if removed && rt.mail.recovering.contains_key(&letter.channel) {""",
        ["--test", "adversarial_delivery", "redelivery_a_duplicating_link"],
    ),
    "delivery-posts-before-the-senders-commit": (
        CORE + "runtime.rs",
        """    if changed || ops_changed {
        let built = build_commit(""",
        """    for sent in extra.iter().flat_map(|x| &x.sent) {
        rt.storage.postbox().post(Letter::message(
            (*rt.key).clone(),
            sent.to.clone(),
            sent.channel,
            sent.seq,
            sent.id,
            sent.fingerprint,
            sent.payload.clone(),
        ));
    }
    if changed || ops_changed {
        let built = build_commit(""",
        ["--test", "adversarial_delivery", "p5_a_failed_commit_of_a_send_leaves_no_gap"],
    ),
    "an-idle-commit-leaves-the-riders-behind": (
        CORE + "storage.rs",
        """        q.writing = true;
        let riders = std::mem::take(&mut q.riders);
        drop(q);
        Some(Holding {""",
        """        q.writing = true;
        let riders = Vec::new();
        drop(q);
        Some(Holding {""",
        ["-p", "persist-core", "--lib", "storage::tests::a_lone_commit_is_written_on_its_own_thread"],
    ),
    "redb-epoch-cache-not-told-of-a-load": (
        "persist-redb/src/store.rs",
        """        self.remember(key, epoch);
""",
        """""",
        ["-p", "persist-redb", "--test", "conformance"],
    ),
    "change-detection-digest-ignores-the-state": (
        CORE + "runtime.rs",
        """        Digest(twox_hash::XxHash3_128::oneshot_with_seed(seed, bytes))""",
        """        Digest(twox_hash::XxHash3_128::oneshot_with_seed(seed, &bytes[..0]))""",
        ["--test", "rollback", "failed_handler"],
    ),
    "rollback-returns-to-init-after-the-first-commit": (
        CORE + "runtime.rs",
        """        rt.committed = digest;
        rt.initial = None;
""",
        """        rt.committed = digest;
""",
        ["--test", "rollback", "failed_handler"],
    ),
    "rollback-read-refused-on-a-poisoned-store": (
        CORE + "storage.rs",
        """        match self.refuse().filter(|_| access == Access::Any) {""",
        """        match self.refuse() {""",
        ["--test", "rollback", "failed_commit"],
    ),
    "a-rollback-that-could-not-read-back-still-serves": (
        CORE + "runtime.rs",
        """        None => rt.failed = true,""",
        """        None => {}""",
        ["-p", "persist-core", "--lib", "runtime::tests::a_rollback_that_cannot_read_the_store_back"],
    ),
    "a-rollback-after-a-failed-first-commit-skips-the-store": (
        CORE + "runtime.rs",
        """    let restored = if rt.initial.is_some() && written == Attempt::NotWritten {""",
        """    let restored = if rt.initial.is_some() {""",
        ["--test", "adversarial_committer", "rollback_after_a_first_commit_that_landed_but_failed"],
    ),
    "a-fence-naming-no-commit-of-the-batch-taken-as-one": (
        CORE + "storage.rs",
        """                        && fences.windows(2).all(|w| w[0].index < w[1].index)
                        && fences.last().is_some_and(|f| f.index < commits.len()) =>""",
        """                        && true =>""",
        ["--test", "adversarial_committer", "a_fence_with_a_bad_index_is_an_error_not_a_hang"],
    ),
    "postgres-commit-skips-the-fence": (
        PG + "store.rs",
        """                if !fences.is_empty() {
                    return Err(StoreError::Fenced(fences).into());""",
        """                if fences.is_empty() && false {
                    return Err(StoreError::Fenced(fences).into());""",
        ["--test", "scale_out", "the_same_key_on_two_nodes"],
    ),
    "postgres-commit-sent-before-the-writes": (
        PG + "store.rs",
        """        let mut sent: Vec<Sent<'_>> = Vec::new();""",
        """        let mut sent: Vec<Sent<'_>> = vec![Box::pin(async {
            client.batch_execute("COMMIT").await?;
            Ok(())
        })];""",
        ["-p", "persist-postgres", "--test", "atomic"],
    ),
    "postgres-load-takes-no-new-epoch": (
        PG + "schema.rs",
        """ON CONFLICT (ns, key) DO UPDATE SET epoch = {k}.epoch + 1 RETURNING epoch, floor""",
        """ON CONFLICT (ns, key) DO UPDATE SET epoch = {k}.epoch RETURNING epoch, floor""",
        ["-p", "persist-postgres", "--test", "conformance"],
    ),
    "postgres-puts-before-deletes": (
        PG + "store.rs",
        """                        for a in covered {
                            net.puts.remove(&a);
                        }""",
        """                        let _ = covered;""",
        ["-p", "persist-postgres", "--test", "conformance"],
    ),
    "postgres-interrupted-poisons-the-storage": (
        "persist-postgres/src/error.rs",
        """            Failure::Pg(e) | Failure::Begin(e) => interrupted(describe(&e)),""",
        """            Failure::Pg(e) | Failure::Begin(e) => StoreError::backend(store, describe(&e)),""",
        ["--test", "postgres"],
    ),
    "committer-acknowledges-an-interrupted-batch": (
        CORE + "storage.rs",
        """                    if poisons {
                        self.poisoned = Some(e.to_string());
                    }""",
        """                    if let StoreError::Interrupted { .. } = e {
                        for (commit, owner) in commits.into_iter().zip(owners) {
                            if let Some(i) = owner {
                                answer(i, Ok(()), Some(commit));
                            }
                        }
                        return;
                    }
                    self.poisoned = Some(e.to_string());""",
        ["--test", "postgres"],
    ),
    "postgres-never-reconnects": (
        PG + "store.rs",
        """                let (client, driver) = self.reconnect().map_err(Failure::lost)?;""",
        """                let (client, driver): (Client, tokio::task::JoinHandle<()>) =
                    return Err(Failure::Stalled(Duration::ZERO));""",
        ["-p", "persist-postgres", "--test", "faults", "a_connection_cut"],
    ),
    "postgres-session-commits-asynchronously": (
        PG + "store.rs",
        """            "SET synchronous_commit = on; \\""",
        """            "SET synchronous_commit = off; \\""",
        ["-p", "persist-postgres", "--test", "faults"],
    ),
    "cluster-no-wake-on-reconnect": (
        "src/cluster.rs",
        """        for (sender, to) in &woken {
            self.postbox.wake(sender, to);
        }""",
        """        let _ = &woken;""",
        ["--features", "cluster", "--test", "cluster"],
    ),
    "cluster-pending-keyed-by-connection-id": (
        "src/cluster.rs",
        """    ses.peer_name.as_ref().map(|n| n.name.clone())""",
        """    Some(ses.node_id.to_string())""",
        ["--features", "cluster", "--test", "cluster"],
    ),
    "postgres-fence-reads-without-locking": (
        PG + "schema.rs",
        'ORDER BY ns, key FOR UPDATE"',
        'ORDER BY ns, key"',
        ["-p", "persist-postgres", "--test", "fence"],
    ),
    "postgres-no-marks-row-for-a-new-key-in-a-commit": (
        PG + "store.rs",
        """    if !missing.is_empty() {""",
        """    if !missing.is_empty() && false {""",
        ["-p", "persist-postgres", "--test", "adversarial_postgres", "a_commit_at_epoch_0"],
    ),
    # Durable timers and the registry (the timers issue).
    "timer-fires-before-its-instant": (
        CORE + "runtime.rs",
        """        .filter(|(_, t)| t.due <= now)
        .map(|(name, t)| (t.due, t.row, name.clone()))""",
        """        .filter(|(_, t)| t.due <= now.saturating_add(10_000))
        .map(|(name, t)| (t.due, t.row, name.clone()))""",
        ["--test", "timers", "timers_fire_in_order_of_their_instants"],
    ),
    "timer-due-rounded-down": (
        CORE + "timer.rs",
        """            let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);""",
        """            let ms = d.as_millis();""",
        ["-p", "persist-core", "--lib", "timer::tests"],
    ),
    "fired-timer-not-removed-in-its-commit": (
        CORE + "runtime.rs",
        """    if let Some(f) = fired {
        commit = commit.remove(Space::TIMERS, f.row);
        current.insert(&f.name, None);
    }""",
        """    if let Some(f) = fired {
        current.insert(&f.name, None);
    }""",
        ["--test", "timers", "sigkill"],
    ),
    "cancelled-timer-row-left-in-the-store": (
        CORE + "runtime.rs",
        """        if let Some(row) = before {
            commit = commit.remove(Space::TIMERS, row);
        }""",
        """        if let (Some(row), TimerChange::Set { .. }) = (before, change) {
            commit = commit.remove(Space::TIMERS, row);
        }""",
        ["--test", "timers", "cancelled"],
    ),
    "timers-not-part-of-the-record": (
        CORE + "store.rs",
        """    pub const LOADED: [Space; 9] = [
        Space::SNAPSHOT,
        Space::OPS,
        Space::OUTBOX,
        Space::CHANNELS,
        Space::INBOX,
        Space::REQUESTS,
        Space::TIMERS,
        Space::MAPS,""",
        """    pub const LOADED: [Space; 8] = [
        Space::SNAPSHOT,
        Space::OPS,
        Space::OUTBOX,
        Space::CHANNELS,
        Space::INBOX,
        Space::REQUESTS,
        Space::MAPS,""",
        ["--test", "timers", "a_timer_due_while_the_actor_was_stopped_fires_at_its_start"],
    ),
    "no-timer-fired-at-start": (
        CORE + "runtime.rs",
        """    // Timers that fell due while the actor was not running fire now, before any message.
    fire_due(actor, &myself, rt).await""",
        """    arm_timer(&myself, rt);
    Ok(())""",
        ["--test", "timers", "a_timer_due_while_the_actor_was_stopped_fires_at_its_start"],
    ),
    "registry-activates-every-concurrent-get": (
        CORE + "entities.rs",
        """                        Some(Entry::Activating(n) | Entry::Stopping(n)) => Next::Wait(n.clone()),""",
        """                        Some(Entry::Activating(n) | Entry::Stopping(n)) => {
                            let _ = n;
                            Next::Activate(Arc::new(Notify::new()))
                        }""",
        ["--test", "entities", "concurrent_gets_of_one_key_activate_one_instance"],
    ),
    "registry-send-drops-a-message-refused-by-a-draining-actor": (
        CORE + "entities.rs",
        """                Err(MessagingErr::SendErr(back)) => {
                    msg = back;
                    self.wait_stopped(key, &actor).await;
                }""",
        """                Err(MessagingErr::SendErr(back)) => {
                    drop(back);
                    return Ok(());
                }""",
        ["--test", "entities", "a_message_that_meets_a_draining_actor"],
    ),
    "passivated-actor-reports-no-wake": (
        CORE + "runtime.rs",
        """    if let Some(life) = &rt.life {
        life.stopped(next_wake(rt));
    }""",
        """    if let Some(life) = &rt.life {
        life.stopped(None);
    }""",
        ["--test", "entities", "a_timer_of_a_passivated_actor_activates_it"],
    ),
    "wake-ignores-waiting-retries": (
        CORE + "runtime.rs",
        """    [timers, retry, mail, unscheduled]
        .into_iter()""",
        """    let _ = retry;
    [timers, mail, unscheduled]
        .into_iter()""",
        ["--test", "entities", "retry_and_kept"],
    ),
    "registry-start-reads-no-wakes": (
        CORE + "entities.rs",
        """        entities.take_wakes(wakes);""",
        """        drop(wakes);""",
        ["--test", "entities", "after_a_restart"],
    ),
    "letters-do-not-activate": (
        CORE + "delivery.rs",
        """                    if let Some(activate) = activate {
                        activate(&letter.to);
                    }""",
        """                    drop(activate);""",
        ["--test", "entities", "a_letter_to_a_passivated_actor_activates_it"],
    ),
    "lru-evicts-the-most-recent": (
        CORE + "entities.rs",
        """            .max_by_key(|(idle, _)| *idle)""",
        """            .min_by_key(|(idle, _)| *idle)""",
        ["--test", "entities", "the_bound_passivates"],
    ),
    "registry-takes-keys-the-store-cannot-hold": (
        CORE + "entities.rs",
        """            && A::NAME.len() + key.len() > max
        {""",
        """            && A::NAME.len() + key.len() > max * 1000
        {""",
        ["--test", "entities", "a_key_the_store_cannot_hold"],
    ),
    "retry-instant-forgotten-at-restart": (
        CORE + "runtime.rs",
        """                .filter(|(_, left)| !left.is_zero())""",
        """                .filter(|(_, left)| left.is_zero())""",
        ["--test", "entities", "a_retry_waits_out_its_backoff_across_a_restart"],
    ),
    "activation-cancelled-with-its-caller": (
        CORE + "entities.rs",
        """                    let (this, key) = (self.clone(), key.to_owned());
                    let activation =
                        tokio::spawn(async move { this.activate(&key, actor_key, n).await });
                    return match activation.await {
                        Ok(result) => result,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    };""",
        """                    return self.activate(key, actor_key, n).await;""",
        ["--test", "entities", "a_get_given_up_during_its_activation_leaves_the_key_usable"],
    ),
    # Event sourcing and durable maps (the state models issue).
    "events-not-journaled": (
        CORE + "runtime.rs",
        """    for (i, payload) in events.iter().enumerate() {""",
        """    for (i, payload) in events.iter().enumerate().take(0) {""",
        ["--test", "event_sourcing", "memory::snapshot_and_tail_equal_the_whole_journal"],
    ),
    "events-not-journaled-and-the-head-kept-still": (
        CORE + "runtime.rs",
        """    let last = head
        .last
        .checked_add(events.len() as u64)""",
        """    let events: &[Vec<u8>] = &events[..0];
    let last = head
        .last
        .checked_add(events.len() as u64)""",
        ["--test", "crash_kill_loop", "kill_loop_event_sourced_redb"],
    ),
    "snapshot-written-without-moving-the-head": (
        CORE + "runtime.rs",
        """        head.snapshot = covers;
        if journal.retention""",
        """        if journal.retention""",
        ["--test", "event_sourcing", "memory::snapshot_and_tail_equal_the_whole_journal"],
    ),
    "a-refused-event-is-skipped-on-replay": (
        CORE + "journal.rs",
        """        (hooks.replay)(&mut state, stored.as_stored::<A>())
            .map_err(|r| (RecordRef::Event(seq), r))?;""",
        """        let _ = (hooks.replay)(&mut state, stored.as_stored::<A>());""",
        ["--test", "event_sourcing", "an_event_apply_refuses_on_replay"],
    ),
    "a-journal-gap-is-skipped": (
        CORE + "journal.rs",
        """        if seq != expected {
            return Err((
                RecordRef::Event(expected),""",
        """        if seq != expected && false {
            return Err((
                RecordRef::Event(expected),""",
        ["--test", "event_sourcing", "a_journal_with_a_gap_is_refused"],
    ),
    "a-snapshot-is-taken-whatever-event-it-covers": (
        CORE + "journal.rs",
        """    if !head.is_ordered() || header.sequence != head.snapshot {""",
        """    if !head.is_ordered() {""",
        ["--test", "event_sourcing", "a_snapshot_that_disagrees_with_the_journal_is_refused"],
    ),
    "full-retention-compacts-too": (
        CORE + "runtime.rs",
        """        if journal.retention == Retention::Light && covers > head.compacted {""",
        """        if covers > head.compacted {""",
        ["--test", "event_sourcing", "memory::snapshot_and_tail_equal_the_whole_journal"],
    ),
    "light-retention-never-compacts": (
        CORE + "runtime.rs",
        """        if journal.retention == Retention::Light && covers > head.compacted {""",
        """        if journal.retention == Retention::Light && covers > u64::MAX - 1 {""",
        ["--test", "event_sourcing", "light_retention_compacts_and_keeps_the_state"],
    ),
    "an-old-event-is-read-as-the-new-type": (
        CORE + "journal.rs",
        """    let event = if stored.schema() == stored.current_schema() {""",
        """    let event = if stored.schema() > 0 {""",
        ["--test", "event_sourcing", "an_event_of_an_older_version_migrates"],
    ),
    "an-event-sourced-message-always-writes": (
        CORE + "runtime.rs",
        """        (rt.committed, !parts.events.is_empty())""",
        """        (rt.committed, true)""",
        ["--test", "event_sourcing", "a_message_that_emits_nothing_writes_nothing"],
    ),
    "op-ids-count-journal-events": (
        CORE + "storage.rs",
        """                    | Space::JOURNAL
                    | Space::MAPS""",
        """                    | Space::MAPS""",
        ["--test", "event_sourcing", "operation_ids_stay_contiguous_across_restarts"],
    ),
    "a-compacted-journal-read-from-its-start-returns-the-rest": (
        CORE + "journal.rs",
        """        if from <= head.compacted {""",
        """        if from <= head.compacted && false {""",
        ["--test", "event_sourcing", "light_retention_compacts_and_keeps_the_state"],
    ),
    "a-map-commit-writes-every-entry": (
        CORE + "map.rs",
        """                (!same).then(|| Change {""",
        """                let _ = same;
                Some(Change {""",
        ["--test", "durable_maps", "a_map_of_100000_entries"],
    ),
    "a-map-commit-writes-every-touched-key-even-unchanged": (
        CORE + "map.rs",
        """                    (None, None) => true,""",
        """                    (None, None) => false,""",
        ["--test", "adversarial_models", "inserting_and_removing_a_new_key_in_one_message_costs_no_write"],
    ),
    "a-map-only-first-commit-writes-no-state": (
        CORE + "runtime.rs",
        """    let first = rt.initial.is_some();""",
        """    let first = false;""",
        ["--test", "adversarial_models", "a_map_only_first_commit_keeps_the_state_init_built"],
    ),
    "a-map-entry-is-not-capped": (
        CORE + "map.rs",
        """                let payload = envelope::to_payload(&(&*self.name, key, value))?;""",
        """                let payload = postcard::to_stdvec(&(&*self.name, key, value))?;""",
        ["--test", "adversarial_models", "a_map_entry_too_large_to_read_back_is_refused_before_its_commit"],
    ),
    "a-quarantine-keeps-only-the-loaded-events": (
        CORE + "storage.rs",
        """            for r in s.read(&key, Some(Space::JOURNAL), 0..=u64::MAX)? {""",
        """            for r in s.read(&key, Some(Space::JOURNAL), 0..=u64::MAX)?.into_iter().skip(usize::MAX) {""",
        ["--test", "adversarial_models", "a_quarantine_keeps_every_journal_event_it_removes"],
    ),
    "events-past-the-head-are-taken": (
        CORE + "journal.rs",
        """        if seq > head.last {
            return Err((""",
        """        if seq > head.last && false {
            return Err((""",
        ["--test", "event_sourcing", "an_event_past_the_journals_head_is_refused"],
    ),
    "a-start-raced-by-a-newer-writer-reads-on": (
        CORE + "journal.rs",
        """        if head.as_deref() != loaded.snapshot() {""",
        """        if head.as_deref() != loaded.snapshot() && false {""",
        ["--test", "event_sourcing", "a_newer_writer_between_the_two_reads"],
    ),
    "a-journal-reader-trusts-its-first-head": (
        CORE + "journal.rs",
        """        if again == head {""",
        """        if again == head || true {""",
        ["--test", "adversarial_models_2", "events_read_while_another_node_writes_are_never_reported_as_damage"],
    ),
    "map-undo-kept-when-nothing-is-committed": (
        CORE + "runtime.rs",
        """        // The maps' changes, if any, cancelled out: nothing to write, nothing to keep.
        rt.maps.committed();""",
        """        // The maps' changes, if any, cancelled out: nothing to write, nothing to keep.""",
        ["--test", "adversarial_models_2", "rewriting_an_entry_with_its_own_value_costs_the_same"],
    ),
    "two-map-rows-for-one-key-the-later-wins": (
        CORE + "map.rs",
        """                if let Some((other, _)) = entries.get(&k) {""",
        """                if let Some((other, _)) = entries.get(&k).filter(|_| false) {""",
        ["--test", "adversarial_models_2", "a_map_with_two_rows_for_one_key_is_refused"],
    ),
    "a-forged-heads-numbers-are-added-unchecked": (
        CORE + "journal.rs",
        """        self.compacted <= self.snapshot && self.snapshot <= self.last && self.last < u64::MAX""",
        """        self.compacted <= self.snapshot && self.snapshot <= self.last""",
        ["--test", "adversarial_models_2", "a_forged_head_with_extreme_numbers_is_a_typed_error_never_a_panic"],
    ),
    "a-map-removal-stays-in-memory": (
        CORE + "map.rs",
        """                out.push(RowWrite::Delete {
                    space: Space::MAPS,""",
        """                #[cfg(any())]
                out.push(RowWrite::Delete {
                    space: Space::MAPS,""",
        ["--test", "durable_maps", "memory::map_changes_survive_a_reopen"],
    ),
    "a-map-entry-of-other-types-is-read": (
        CORE + "map.rs",
        """                if entry.fingerprint != shape {""",
        """                if entry.fingerprint != shape && false {""",
        ["--test", "durable_maps", "a_map_read_as_other_types_is_refused_and_kept"],
    ),
    # The operate issue: the admin calls and the tool.
    "a-refused-requeue-takes-an-epoch-first": (
        CORE + "admin.rs",
        """    check(rows)?;
    let loaded = store.open_actor(key, spaces)?;""",
        """    let _ = rows;
    let loaded = store.open_actor(key, spaces)?;""",
        ["-p", "persist-cli", "--test", "cli", "requeue_turns_a_dead_letter"],
    ),
    "a-requeue-leaves-the-letter-dead": (
        CORE + "admin.rs",
        """    let bytes = envelope::seal(
        Kind::Op,""",
        """    let bytes = envelope::seal(
        Kind::DeadOp,""",
        ["-p", "persist-cli", "--test", "cli", "requeue_turns_a_dead_letter"],
    ),
    "verify-passes-a-bad-checksum": (
        CORE + "admin.rs",
        """    let v = envelope::verify(&row.bytes, u32::MAX).map_err(|e| e.to_string())?;
    let Some(kinds) = kinds_of(row.space) else {""",
        """    let Ok(v) = envelope::verify(&row.bytes, u32::MAX) else {
        return Ok(());
    };
    let Some(kinds) = kinds_of(row.space) else {""",
        ["-p", "persist-cli", "--test", "cli", "verify_names_exactly_the_damaged_records"],
    ),
    "verify-takes-any-kind-in-any-space": (
        CORE + "admin.rs",
        "    if !kinds.contains(&v.kind) {",
        "    if false && !kinds.contains(&v.kind) {",
        ["-p", "persist-cli", "--test", "cli", "verify_names_exactly_the_damaged_records"],
    ),
    "verify-exits-zero-on-bad-records": (
        "persist-cli/src/commands.rs",
        """    let code = if report.bad.is_empty() {
        exit::SUCCESS
    } else {
        exit::DAMAGED
    };""",
        """    let code = exit::SUCCESS;""",
        ["-p", "persist-cli", "--test", "cli", "verify_names_exactly_the_damaged_records"],
    ),
    "the-tool-creates-a-missing-redb-file": (
        "persist-cli/src/open.rs",
        "            Location::Redb(path) if create && !path.exists() => {",
        "            Location::Redb(path) if !create || !path.exists() => {",
        ["-p", "persist-cli", "--test", "cli", "a_missing_file_is_refused_and_not_created"],
    ),
    "sqlite-existing-only-gives-a-foreign-file-tables": (
        "persist-sqlite/src/store.rs",
        "            if options.is_existing_only() && layout == Layout::Empty {",
        "            if false && options.is_existing_only() && layout == Layout::Empty {",
        ["-p", "persist-cli", "--test", "cli", "a_foreign_file_is_refused_and_left_as_it_is"],
    ),
    "postgres-existing-only-creates-the-tables": (
        PG + "store.rs",
        "                Tables::None if self.options.existing_only => {",
        "                Tables::None if false => {",
        ["-p", "persist-cli", "--test", "cli", "a_postgres_schema_without_a_store_is_refused"],
    ),
    "redbs-lock-is-not-named": (
        "persist-redb/src/format.rs",
        "        DatabaseError::DatabaseAlreadyOpen => FormatError::InUse.into(),\n",
        "",
        ["-p", "persist-cli", "--test", "cli", "a_redb_store_held_by_another_process"],
    ),
    "a-restore-overwrites-a-record": (
        CORE + "admin.rs",
        """        let held = rows.iter().filter(|r| r.space != Space::QUARANTINE).count();
        if held > 0 {""",
        """        let held = rows.iter().filter(|r| r.space != Space::QUARANTINE).count();
        if held > usize::MAX - 1 {""",
        ["-p", "persist-cli", "--test", "cli", "quarantine_list_shows_the_records"],
    ),
    "a-delete-of-nothing-writes-marks": (
        CORE + "admin.rs",
        """    if record == 0 {
        return Err(AdminError::NoActor { key: key.clone() });
    }
    let epoch = delete_record(store, key)?;""",
        """    let epoch = delete_record(store, key)?;""",
        ["-p", "persist-cli", "--test", "cli", "delete_removes_the_record_and_refuses"],
    ),
    "an-edit-overwrites-a-journal-head": (
        CORE + "admin.rs",
        """        if header.kind != Kind::Snapshot as u8 {
            return Err(AdminError::NotEditable {""",
        """        if header.kind == 0 {
            return Err(AdminError::NotEditable {""",
        ["-p", "persist-cli", "--test", "typed", "edit_replaces_a_state"],
    ),
    "typed-show-skips-the-migrations": (
        CORE + "admin.rs",
        """    let stored = Stored::new(h.schema, h.fingerprint, version, &payload.value);
    if h.schema == version {""",
        """    let stored = Stored::new(h.schema, h.fingerprint, version, &payload.value);
    if h.schema <= version {""",
        ["-p", "persist-cli", "--test", "typed", "show_reads_an_older_schema"],
    ),
    "an-encrypted-requeue-is-written-plain": (
        CORE + "admin.rs",
        """        &p.value,
        transforms,
        Place { key, id },""",
        """        &p.value,
        &Transforms::none(),
        Place { key, id },""",
        ["-p", "persist-cli", "--test", "typed", "an_encrypted_dead_letter_is_requeued"],
    ),
    "an-edit-of-a-sealed-state-without-its-key-writes-it-plain": (
        CORE + "admin.rs",
        "        if let (Some(key_id), None) = (header.encrypted, &transforms.keys) {",
        "        if let (Some(key_id), None) = (None::<u32>, &transforms.keys) {",
        ["-p", "persist-cli", "--test", "typed", "an_encrypted_dead_letter_is_requeued"],
    ),
    "operations-md-drifts-from-the-tool": (
        "persist-cli/src/commands.rs",
        """        return p.line("no dead letters");""",
        """        return p.line("no dead letter");""",
        ["-p", "persist-cli", "--test", "operations_doc"],
    ),
    # The operate issue: spans and metrics.
    "a-dead-letter-is-not-counted": (
        CORE + "runtime.rs",
        "            rt.tally.metrics().dead_lettered(1);\n",
        "",
        ["--test", "observability"],
    ),
    "a-fence-is-not-counted": (
        CORE + "observe.rs",
        """    namespace_counter(FENCED_TOTAL, key.namespace()).increment(1);""",
        """    let _ = (FENCED_TOTAL, namespace_counter as fn(&'static str, &str) -> Counter);""",
        ["--test", "observability"],
    ),
    "a-killed-actor-leaves-its-gauges-up": (
        CORE + "observe.rs",
        """    fn drop(&mut self) {
        self.set(0, 0);
    }""",
        """    fn drop(&mut self) {}""",
        ["--test", "adversarial_observability"],
    ),
    "a-stopped-actor-leaves-its-gauges-up": (
        CORE + "runtime.rs",
        "    rt.tally.set(0, 0);\n",
        "",
        ["--test", "adversarial_observability"],
    ),
    "a-transaction-records-no-bytes": (
        CORE + "observe.rs",
        "        self.bytes.increment(bytes as u64);\n",
        "        let _ = bytes;\n",
        ["--test", "observability"],
    ),
    # The operate issue's review fixes.
    "a-postgres-store-is-named-by-its-raw-parameters": (
        "persist-cli/src/open.rs",
        """                    return write!(f, "postgres://{}", o.server());""",
        """                    let _ = o;
                    return f.write_str(params);""",
        ["-p", "persist-cli", "--test", "adversarial_admin", "a_postgres_password_is_never_printed"],
    ),
    "show-fails-on-a-garbage-quarantine-row": (
        "persist-cli/src/commands.rs",
        """                Err(e) => (format!("(unreadable) {e}"), 0),""",
        """                Err(e) => return Err(e.into()),""",
        ["-p", "persist-cli", "--test", "adversarial_admin", "a_garbage_quarantine_row_is_shown"],
    ),
    "a-failed-import-create-leaves-its-store": (
        "persist-cli/src/commands.rs",
        "    if let (Err(_), Some(path)) = (&result, created) {",
        "    if let (Err(_), Some(path)) = (&result, created.filter(|_| false)) {",
        ["-p", "persist-cli", "--test", "adversarial_admin", "a_failed_import_create_leaves_no_store_behind"],
    ),
    "an-edit-replaces-a-state-its-type-cannot-read": (
        CORE + "admin.rs",
        "        decode_state::<A>(&stored).map_err(damaged)?;\n",
        "        let _ = &stored;\n",
        ["-p", "persist-cli", "--test", "adversarial_admin", "edit_through_a_type_that_cannot_read_the_state"],
    ),
    "a-wholly-fenced-transaction-is-not-timed": (
        CORE + "storage.rs",
        "                    self.metrics.refused(took);\n",
        "",
        ["--test", "adversarial_observability", "a_wholly_fenced_transaction"],
    ),
    "verify-leaves-the-attempt-count-unread": (
        CORE + "admin.rs",
        "        payload(key, row.id, &row.bytes, transforms).map_err(|e| e.to_string())?;",
        "        v.payload(transforms, Place { key, id: row.id }).map_err(|e| e.to_string())?;",
        ["-p", "persist-cli", "--test", "adversarial_admin", "verify_names_each_kind_of_bad_record"],
    ),
}


def run(name):
    path, old, new, args = MUTATIONS[name]
    with open(path) as f:
        original = f.read()
    if original.count(old) != 1:
        return "STALE (the original text is not in the file once)"
    try:
        with open(path, "w") as f:
            f.write(original.replace(old, new))
        try:
            out = subprocess.run(
                ["cargo", "test", "--quiet", *args],
                capture_output=True,
                text=True,
                timeout=1200,
            )
        except subprocess.TimeoutExpired:
            return "HUNG (a test waited forever instead of failing)"
    finally:
        with open(path, "w") as f:
            f.write(original)
    if "error[" in out.stderr or "could not compile" in out.stderr:
        return "DID NOT BUILD"
    return "caught" if out.returncode != 0 else "MISSED"


def main():
    names = sys.argv[1:] or list(MUTATIONS)
    missed = 0
    for name in names:
        result = run(name)
        missed += result != "caught"
        print(f"{name}: {result}", flush=True)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
