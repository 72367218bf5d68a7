//! The merge benchmark as a test: on every standard workload bd loses no write,
//! names the author of every visible write, escalates every semantic conflict and
//! converges; and the naive last-writer-wins baseline is shown to lose writes (so
//! the scoring can tell the two apart).

use bd::merge_simulation::{run, table, workloads};

#[test]
fn bd_loses_nothing_attributes_everything_and_escalates_every_conflict() {
    let mut all = Vec::new();
    for w in workloads() {
        let [lww, bd] = run(&w);
        assert!(bd.converged, "{}: bd converges", w.name);
        assert_eq!(
            bd.lost,
            0,
            "{}: bd lost writes\n{}",
            w.name,
            table(std::slice::from_ref(&bd))
        );
        assert_eq!(
            bd.attributed, bd.visible,
            "{}: every visible write attributed",
            w.name
        );
        assert_eq!(bd.visible, bd.must_survive);
        assert!(
            bd.conflicts > 0,
            "{}: the workload has real conflicts",
            w.name
        );
        assert_eq!(
            bd.escalated, bd.conflicts,
            "{}: every conflict escalated",
            w.name
        );
        // The baseline: same history, same scoring.
        assert_eq!(lww.writes, bd.writes);
        assert_eq!(lww.must_survive, bd.must_survive);
        assert!(lww.lost > 0, "{}: last-writer-wins loses writes", w.name);
        assert_eq!(lww.escalated, 0);
        all.push(lww);
        all.push(bd);
    }
    println!("{}", table(&all));
}
