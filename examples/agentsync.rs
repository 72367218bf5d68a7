//! Prints the merge benchmark's table: the same multi-agent workloads merged by
//! naive last-writer-wins and by bd (see `bd::agentsync`).
//!
//! Run: `cargo run --release --example agentsync`

fn main() {
    let mut scores = Vec::new();
    for w in bd::agentsync::workloads() {
        scores.extend(bd::agentsync::run(&w));
    }
    print!("{}", bd::agentsync::table(&scores));
    println!(
        "\nlost: writes no later write had seen that are not visible at the end (as the value or a recorded conflict).\n\
         attributed: visible writes whose author the final state names.\n\
         conflicts escalated: concurrent different values for one field, or a delete racing an edit, recorded as a conflict."
    );
}
