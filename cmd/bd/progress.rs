//! Progress bars on stderr for long work: the library's meters
//! (`bd::progress`), drawn by indicatif, on a terminal only.
//!
//! A task gets a bar only once it has run for [`DELAY`]: most commands finish
//! well before and never draw anything. A task with a known size is a bar
//! with counts, rate and time left; one without (a git fetch, doctor's
//! checks) a spinner with the time so far. A `finished` update clears the
//! bar, so a command's own output never lands on top of one.

use bd::progress::Update;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a task runs before its bar appears.
const DELAY: Duration = Duration::from_millis(500);

/// Whether this command may draw progress: stderr is a terminal that can
/// show it, and the output is for a person (not `--json`, not `-q`).
pub fn wanted(json: bool, quiet: bool) -> bool {
    !json
        && !quiet
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Draws the meters of this process from now on.
pub fn install() {
    let state = Arc::new(Mutex::new(State::default()));
    let ticker = state.clone();
    // Shows the bar of a task that has gone quiet past the delay (a fetch
    // reports only its start and end).
    let _ = std::thread::Builder::new()
        .name("bd-progress".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(mut st) = ticker.lock() {
                    st.show_if_due();
                }
            }
        });
    bd::progress::set_global(Arc::new(move |u: &Update| {
        if let Ok(mut st) = state.lock() {
            st.update(u);
        }
    }));
}

#[derive(Default)]
struct State {
    /// The task under way, since when, and its bar once shown.
    task: Option<Task>,
}

struct Task {
    update: Update,
    started: Instant,
    bar: Option<ProgressBar>,
}

impl State {
    fn update(&mut self, u: &Update) {
        if u.finished {
            // The end of a task, or (an empty task) of the whole call.
            if let Some(t) = self.task.take()
                && let Some(bar) = t.bar
            {
                bar.finish_and_clear();
            }
            return;
        }
        match &mut self.task {
            // A new meter starts at 0; a later count (or a renamed step) is
            // the same task going on.
            Some(t) if u.done > 0 || t.update.task == u.task => {
                t.update = u.clone();
                if let Some(bar) = &t.bar {
                    draw(bar, u);
                }
            }
            _ => {
                if let Some(t) = self.task.take()
                    && let Some(bar) = t.bar
                {
                    bar.finish_and_clear();
                }
                self.task = Some(Task {
                    update: u.clone(),
                    started: Instant::now(),
                    bar: None,
                });
            }
        }
        self.show_if_due();
    }

    fn show_if_due(&mut self) {
        let Some(t) = &mut self.task else { return };
        if t.bar.is_some() || t.started.elapsed() < DELAY {
            return;
        }
        let target = ProgressDrawTarget::stderr_with_hz(10);
        let bar = match t.update.total {
            Some(total) => ProgressBar::with_draw_target(Some(total), target).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {human_pos}/{human_len}, {rate}/s, {eta} left",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key(
                    "rate",
                    |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}", s.per_sec());
                    },
                )
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(100));
        draw(&bar, &t.update);
        t.bar = Some(bar);
    }
}

fn draw(bar: &ProgressBar, u: &Update) {
    if let Some(total) = u.total {
        bar.set_length(total);
    }
    bar.set_message(crate::output::one_line(&u.task).into_owned());
    bar.set_position(u.done);
}
