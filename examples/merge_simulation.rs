//! Prints the merge benchmark's table: the same multi-agent workloads merged by
//! naive last-writer-wins and by bd (see `bd::merge_simulation`).
//!
//! Run: `cargo run --release --example merge_simulation`

fn main() {
    let mut scores = Vec::new();
    for w in bd::merge_simulation::workloads() {
        scores.extend(bd::merge_simulation::run(&w));
    }
    print!("{}", bd::merge_simulation::table(&scores));
    println!(
        "\nlost: writes no later write had seen that are not visible at the end (as the value or a recorded conflict).\n\
         attributed: visible writes whose author the final state names.\n\
         conflicts escalated: concurrent different values for one field, or a delete racing an edit, recorded as a conflict."
    );
}
