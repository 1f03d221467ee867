//! Promise: the lake keeps exactly one row per call under the faults object stores and
//! crashes really produce: writes that fail before they apply, writes that apply and then
//! answer an error, reads that fail for a moment, and a process that dies at any named point
//! of the commit protocol. Seeded schedules of syncs, compactions, vacuums and a second
//! writer run in-process against a fault-injecting store (`store.rs`), and the invariants of
//! `driver.rs` are checked after every step, in seven worlds: a plain and a Delta lake on
//! local disk, in memory, and on S3 (the moto server), and a local plain lake switched to Delta
//! at a step the seed picks. Schedules also lose a writer's state (then `repair` it) and run
//! `repair`, forced or not. Every tenth seed ends with the readers
//! users run (the `deltalake` package, Polars, DuckDB) holding exactly the writers' calls.
//!
//! CI runs at least `MIN_SEEDS` seeds per world; `CALLSYNC_FAULT_SEEDS=N` runs up to N per
//! world, `CALLSYNC_FAULT_SECS=S` keeps going until S seconds have passed (within N), and
//! `CALLSYNC_FAULT_FIRST_SEED` starts elsewhere. A failing seed prints the one command that
//! replays it (`a_seed_replays`).

mod driver;
mod store;

use driver::{Mode, run_seeds};

use crate::helpers::skip;
use crate::object_store::Moto;

/// Steps per seed (each followed by the invariants), before the final clean syncs.
const STEPS: usize = 10;

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// Runs a world's seeds and fails with every failing seed's report.
fn seeds(mode: Mode, min_seeds: u64) {
    let moto = if mode.s3() {
        match Moto::start() {
            Some(m) => {
                let env =
                    crate::helpers::Env::new(callsync::simulator::VoicegainSim::new(1, 0), 10);
                m.bucket(&env, "lake");
                Some(m)
            }
            None => return,
        }
    } else {
        None
    };
    let count = env_u64("CALLSYNC_FAULT_SEEDS").unwrap_or(min_seeds).max(1);
    let secs = env_u64("CALLSYNC_FAULT_SECS").unwrap_or(0);
    let first = env_u64("CALLSYNC_FAULT_FIRST_SEED").unwrap_or(0);
    let t0 = std::time::Instant::now();
    // The minimum always runs; the time box only bounds seeds beyond it.
    let mut tally = run_seeds(
        mode,
        first,
        count.min(min_seeds),
        u64::MAX,
        STEPS,
        moto.as_ref(),
    );
    if count > min_seeds {
        let more = run_seeds(
            mode,
            first + min_seeds,
            count - min_seeds,
            secs.saturating_sub(t0.elapsed().as_secs()),
            STEPS,
            moto.as_ref(),
        );
        tally.seeds += more.seeds;
        tally.steps += more.steps;
        for (t, m) in tally.faults.iter_mut().zip(more.faults) {
            *t += m;
        }
        tally.failures.extend(more.failures);
    }
    let line = format!(
        "{}: {} seeds from {first}, {} steps, {} s; faults injected: {} writes failed before applying, {} applied then failed, {} reads failed, of {} store calls; {} failing seeds",
        mode.name(),
        tally.seeds,
        tally.steps,
        t0.elapsed().as_secs(),
        tally.faults[0],
        tally.faults[1],
        tally.faults[2],
        tally.faults[3],
        tally.failures.len()
    );
    eprintln!("{line}");
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fault-seeds-{}.txt", mode.name()));
    let _ = std::fs::write(report, format!("{line}\n"));
    assert!(
        tally.failures.is_empty(),
        "{} of {} seeds broke an invariant:\n\n{}",
        tally.failures.len(),
        tally.seeds,
        tally.failures.join("\n\n")
    );
    assert!(tally.seeds >= min_seeds.min(count), "{line}");
}

#[test]
fn every_seed_keeps_a_local_plain_lake_exact() {
    seeds(Mode::PlainLocal, 60);
}

#[test]
fn every_seed_keeps_a_local_delta_lake_exact() {
    seeds(Mode::DeltaLocal, 50);
}

#[test]
fn every_seed_keeps_an_in_memory_plain_lake_exact() {
    seeds(Mode::PlainMemory, 40);
}

#[test]
fn every_seed_keeps_an_in_memory_delta_lake_exact() {
    seeds(Mode::DeltaMemory, 50);
}

#[test]
fn every_seed_keeps_a_plain_lake_switched_to_delta_exact() {
    seeds(Mode::PlainToDelta, 40);
}

#[test]
fn every_seed_keeps_a_plain_lake_on_s3_exact() {
    seeds(Mode::PlainS3, 20);
}

#[test]
fn every_seed_keeps_a_delta_lake_on_s3_exact() {
    seeds(Mode::DeltaS3, 20);
}

/// Replays one seed: `CALLSYNC_FAULT_MODE` and `CALLSYNC_FAULT_SEED` (a failing seed prints
/// them); without them, seed 0 of the local Delta lake.
#[test]
fn a_seed_replays() {
    let mode = std::env::var("CALLSYNC_FAULT_MODE")
        .ok()
        .map(|m| Mode::parse(&m).unwrap_or_else(|| panic!("no fault mode {m:?}")))
        .unwrap_or(Mode::DeltaLocal);
    let seed = env_u64("CALLSYNC_FAULT_SEED").unwrap_or(0);
    let moto = if mode.s3() {
        let Some(m) = Moto::start() else {
            skip("the S3 fault modes need the moto server");
            return;
        };
        let env = crate::helpers::Env::new(callsync::simulator::VoicegainSim::new(1, 0), 10);
        m.bucket(&env, "lake");
        Some(m)
    } else {
        None
    };
    let mut world = driver::World::new(mode, seed, moto.as_ref());
    let result = world.play(STEPS);
    eprintln!("{}", world.log.join("\n"));
    if let Err(report) = result {
        panic!("{report}");
    }
}

use driver::{Step, World};
use store::{Fault, Rule};

/// Four syncs of writer 0, each after new calls at the vendor: many small files.
fn small_files(w: &mut World) {
    for _ in 0..4 {
        w.run(&Step::AddCalls(60), None, false);
        let r = w.run(&Step::Sync(0), None, false);
        assert!(r.starts_with("ok"), "{r}");
    }
}

#[test]
fn a_compaction_commit_stored_then_answered_500_lands_once_and_compact_says_so() {
    for mode in [Mode::DeltaLocal, Mode::DeltaMemory] {
        let mut w = World::quiet(mode, 7);
        small_files(&mut w);
        // The compaction's log entry is stored, and the store answers as its retry would
        // (412: "already exists"), the way S3 behind a flaky link does.
        w.plan.rule(Rule::new(
            "put",
            "calls/_delta_log/0",
            ".json",
            1,
            Fault::After,
        ));
        let c = w.compact_now(0, true).unwrap();
        assert_eq!(w.plan.rules_fired(), 1, "{}: the fault fired", mode.name());
        assert!(
            c.partitions >= 1 && c.lost == 0,
            "{}: compact reports the truth: {c:?}",
            mode.name()
        );
        w.check(true).unwrap();
        // Nothing left to settle, nothing compacted twice.
        let again = w.compact_now(0, false).unwrap();
        assert_eq!(again.partitions, 0, "{again:?}");
        w.check(true).unwrap();
    }
}

#[test]
fn a_compaction_that_lost_to_another_changes_nothing_and_says_so() {
    let mut w = World::quiet(Mode::DeltaLocal, 8);
    small_files(&mut w);
    // Another process with a copy of the state compacts the same partitions just before
    // this compaction commits.
    let other = w.compaction_as(w.state_copy(0), 0);
    let theirs = std::rc::Rc::new(std::cell::RefCell::new(None));
    let slot = theirs.clone();
    let started = std::cell::Cell::new(false);
    callsync::failpoint::set_hook(Some(Box::new(move |name| {
        // Once: the other compaction reaches this point too.
        if name == "compact_before_commit" && !started.replace(true) {
            *slot.borrow_mut() = Some(other());
        }
    })));
    let ours = w.compact_now(0, false).unwrap();
    callsync::failpoint::set_hook(None);
    let theirs = theirs
        .borrow_mut()
        .take()
        .expect("the other compaction ran");
    assert!(theirs.partitions >= 1, "{theirs:?}");
    assert_eq!(ours.partitions, 0, "ours changed nothing: {ours:?}");
    assert!(ours.lost >= 1, "and says so: {ours:?}");
    // The next run follows the table: the other compaction's files adopted, ours gone.
    let r = w.run(&Step::Sync(0), None, false);
    assert!(r.starts_with("ok"), "{r}");
    w.check(true).unwrap();
}

#[test]
fn an_append_stored_then_answered_500_is_read_back_and_written_once() {
    for mode in [Mode::DeltaLocal, Mode::DeltaMemory] {
        let mut w = World::quiet(mode, 9);
        w.run(&Step::AddCalls(100), None, false);
        w.plan.rule(Rule::new(
            "put",
            "calls/_delta_log/0",
            ".json",
            2,
            Fault::After,
        ));
        let r = w.run(&Step::Sync(0), None, true);
        assert_eq!(w.plan.rules_fired(), 1, "{}: the fault fired", mode.name());
        assert!(
            r.starts_with("ok"),
            "{}: the commit was read back as landed: {r}",
            mode.name()
        );
        w.check(true).unwrap();
    }
}

#[test]
fn a_publish_copy_stored_then_answered_500_is_finished_by_the_next_run() {
    let mut w = World::quiet(Mode::PlainMemory, 10);
    w.run(&Step::AddCalls(100), None, false);
    w.plan.rule(Rule::new(
        "copy",
        "calls/source=vg/",
        ".parquet",
        1,
        Fault::After,
    ));
    let r = w.run(&Step::Sync(0), None, true);
    assert_eq!(w.plan.rules_fired(), 1);
    assert!(r.starts_with("failed"), "the run saw the error: {r}");
    // The copy is in place but not recorded: pending, nothing lost, nothing twice.
    w.check(false).unwrap();
    let r = w.run(&Step::Sync(0), None, false);
    assert!(r.starts_with("ok"), "{r}");
    w.check(true).unwrap();
}

#[test]
fn a_repair_whose_marker_write_fails_leaves_a_state_that_runs() {
    for mode in [Mode::DeltaMemory, Mode::PlainLocal] {
        let mut w = World::quiet(mode, 11);
        small_files(&mut w);
        // A first repair leaves the marker naming its own commit, which has no file.
        let r = w.run(&Step::Repair(0, true), None, false);
        assert!(r.starts_with("ok"), "{}: {r}", mode.name());
        // The next rebuilt state commits; the new marker is then refused before it is written.
        w.plan
            .rule(Rule::new("put", "_callsync/vg.json", "", 1, Fault::Before));
        let r = w.run(&Step::Repair(0, true), None, true);
        assert!(r.starts_with("failed"), "{}: {r}", mode.name());
        // The old marker still names a commit the rebuilt state knows: runs go on.
        w.check(false).unwrap();
        w.run(&Step::AddCalls(30), None, false);
        let r = w.run(&Step::Sync(0), None, false);
        assert!(r.starts_with("ok"), "{}: {r}", mode.name());
        w.check(true).unwrap();
    }
}
