//! Consensus without sockets: replica groups in one process over the deterministic simulated
//! network, under drops, delays, duplicates, reordering, partitions, crashes (also between a
//! ready and its write) and restarts, each run driven by a seed. A failing seed prints itself;
//! rerun it alone with `DHT_SIM_SEED=<seed>` and it fails the same way (the simulation fixes
//! raft's randomized election timeouts; see `a_seed_replays_exactly`). `DHT_SIM_SEEDS=<n>`
//! runs more seeds (soak).

use multispace_dht::replica::ReplicaConfig;
use multispace_dht::sim::{Faults, Sim, Stats};

fn config() -> ReplicaConfig {
    // Small snapshot interval so snapshots, log compaction and snapshot transfer happen often.
    ReplicaConfig { snapshot_every: 40, keep_behind_snapshot: 8, ..ReplicaConfig::default() }
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(one) = std::env::var("DHT_SIM_SEED") {
        return vec![one.parse().expect("DHT_SIM_SEED is a number")];
    }
    let n = std::env::var("DHT_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (1..=n).collect()
}

fn run_seed(seed: u64, voters: &[u64], turns: u64) -> Stats {
    let mut sim = Sim::new(seed, voters, 4, config());
    sim.faults = Faults::harsh();
    sim.run(turns);
    let settled = sim.settle(3000);
    let wrong = sim.check();
    assert!(
        settled && wrong.is_empty(),
        "seed {seed}: settled {settled}, violations: {wrong:#?}\nstats: {:?}",
        sim.stats
    );
    sim.stats
}

#[test]
fn acknowledged_writes_survive_every_fault_three_replicas() {
    let mut total = Stats::default();
    for seed in seeds(60) {
        let s = run_seed(seed, &[1, 2, 3], 1500);
        total.writes_acked += s.writes_acked;
        total.crashes += s.crashes;
        total.crashes_mid_write += s.crashes_mid_write;
        total.restarts += s.restarts;
        total.partitions += s.partitions;
        total.snapshots_sent += s.snapshots_sent;
        total.snapshots_taken += s.snapshots_taken;
        total.reads_answered += s.reads_answered;
        total.dropped += s.dropped;
        total.duplicated += s.duplicated;
    }
    eprintln!("three replicas, all seeds: {total:?}");
    // The runs must have exercised what they claim to; otherwise the check proves nothing.
    assert!(total.writes_acked > 0 && total.reads_answered > 0);
    assert!(total.crashes > 0 && total.crashes_mid_write > 0 && total.restarts > 0);
    assert!(total.partitions > 0 && total.dropped > 0 && total.duplicated > 0);
    assert!(total.snapshots_taken > 0 && total.snapshots_sent > 0);
}

#[test]
fn a_seed_replays_exactly() {
    // Everything random in a run comes from its seed (raft's own randomized election timeouts
    // are fixed in the simulation, which skips ticks by the seed instead), so rerunning a
    // failing seed reproduces the failure.
    for seed in [3, 17, 40] {
        let run = || {
            let mut sim = Sim::new(seed, &[1, 2, 3], 4, config());
            sim.faults = Faults::harsh();
            sim.run(800);
            let leader = sim.leader();
            let last: Vec<_> =
                sim.node_ids().iter().map(|&id| sim.replica(id).map(|r| (r.term(), r.last_index()))).collect();
            (sim.stats, leader, last)
        };
        let first = run();
        assert!(first.0.crashes > 0 && first.0.writes_acked > 0, "seed {seed} exercised nothing: {first:?}");
        assert_eq!(first, run(), "seed {seed} ran differently the second time");
    }
}

#[test]
fn acknowledged_writes_survive_every_fault_five_replicas() {
    for seed in seeds(20) {
        run_seed(seed + 10_000, &[1, 2, 3, 4, 5], 1500);
    }
}

#[test]
fn a_replacement_joins_as_learner_catches_up_by_snapshot_and_is_promoted_while_writes_continue() {
    let mut sim = Sim::new(42, &[1, 2, 3], 4, config());
    sim.run(400);
    let before = sim.acked_writes();
    assert!(before > 0, "no writes before the change");
    // Node 1 is lost for good; node 4 replaces it.
    sim.crash(1);
    sim.run(100);
    let mut added = false;
    for _ in 0..50 {
        added = sim.add_learner(4);
        if added {
            break;
        }
        sim.run(10);
    }
    assert!(added, "no leader took the learner");
    sim.run(300);
    let learner = sim.replica(4).expect("node 4 is up");
    assert!(learner.members().1.contains(&4), "node 4 is a learner: {:?}", learner.members());
    assert!(learner.state().applied() > 0, "the learner caught up");
    assert!(sim.stats.snapshots_sent > 0, "the learner was sent a snapshot (the log was compacted)");
    assert!(sim.promote(4));
    sim.run(100);
    assert!(sim.remove(1));
    sim.run(300);
    let after = sim.acked_writes();
    assert!(after > before, "writes continued through the change ({before} -> {after})");
    let leader = sim.leader().expect("a leader");
    let (voters, learners) = sim.replica(leader).unwrap().members();
    assert_eq!((voters, learners), (vec![2, 3, 4], vec![]));
    assert!(sim.settle(3000));
    let wrong = sim.check();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_leader_asked_to_remove_itself_hands_over_first_and_writes_go_on() {
    // raft-rs leaves a leader that removed itself in charge and then fails on its own missing
    // progress entry; the replica must hand over instead of proposing its own removal.
    let mut sim = Sim::new(7, &[1, 2, 3], 4, config());
    sim.run(300);
    let old = sim.leader().expect("a leader");
    assert!(!sim.remove(old), "the leader proposed its own removal");
    let mut removed = false;
    for _ in 0..100 {
        sim.run(5);
        if sim.leader().is_some_and(|l| l != old) && sim.remove(old) {
            removed = true;
            break;
        }
    }
    assert!(removed, "no new leader took the removal of node {old}");
    let before = sim.acked_writes();
    sim.run(300);
    assert!(sim.acked_writes() > before, "writes stopped after the removal");
    let leader = sim.leader().expect("a leader");
    let (voters, _) = sim.replica(leader).unwrap().members();
    assert!(!voters.contains(&old) && voters.len() == 2, "members after the removal: {voters:?}");
    assert!(sim.settle(3000));
    let wrong = sim.check();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_change_proposed_while_another_is_unapplied_is_refused_not_silently_dropped() {
    // raft-rs replaces such a proposal with an empty entry and still answers Ok, which would
    // leave its caller waiting for an answer that never comes.
    let mut sim = Sim::new(11, &[1, 2, 3], 2, config());
    sim.run(300);
    assert!(sim.add_learner(4), "the first change is taken");
    assert!(!sim.add_learner(5), "a second change while the first is unapplied is refused");
    sim.run(100);
    let leader = sim.leader().expect("a leader");
    assert_eq!(sim.replica(leader).unwrap().members().1, vec![4], "only the first change happened");
    assert!(sim.add_learner(5), "once the first is applied, the next is taken");
    sim.run(100);
    let leader = sim.leader().expect("a leader");
    assert_eq!(sim.replica(leader).unwrap().members().1, vec![4, 5]);
    assert!(sim.settle(3000));
    let wrong = sim.check();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn leadership_goes_to_the_preferred_voter_and_back_to_it_after_it_was_down() {
    let mut sim = Sim::new(5, &[1, 2, 3], 4, config());
    let preferred = sim.replica(1).unwrap().preferred_leader().expect("voters known");
    let led_by_preferred = |sim: &mut Sim| {
        for _ in 0..100 {
            sim.run(10);
            if sim.leader() == Some(preferred) {
                return true;
            }
        }
        false
    };
    assert!(led_by_preferred(&mut sim), "the preferred voter {preferred} never took over: {:?}", sim.leader());
    sim.crash(preferred);
    sim.run(300);
    assert!(sim.leader().is_some_and(|l| l != preferred), "another voter leads while it is down");
    let before = sim.acked_writes();
    sim.restart(preferred);
    assert!(led_by_preferred(&mut sim), "leadership did not come back to {preferred}: {:?}", sim.leader());
    sim.run(200);
    assert!(sim.acked_writes() > before, "writes went on through the hand-overs");
    assert!(sim.settle(3000));
    let wrong = sim.check();
    assert!(wrong.is_empty(), "{wrong:#?}");
}
