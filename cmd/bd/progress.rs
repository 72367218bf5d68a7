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
                    draw(bar, u, t.started);
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
        let (template, fallback) = match t.update.total {
            Some(_) => (
                "{prefix} [{wide_bar}] {human_pos}/{human_len} {msg}",
                ProgressStyle::default_bar(),
            ),
            None => ("{spinner} {prefix} {msg}", ProgressStyle::default_spinner()),
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or(fallback)
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(t.update.total, target).with_style(style);
        // Everything set before the first frame is drawn.
        draw(&bar, &t.update, t.started);
        bar.enable_steady_tick(Duration::from_millis(100));
        t.bar = Some(bar);
    }
}

/// Puts an update on its bar: the task's name, the count, and (measured here,
/// from the task's start) the rate and the time left.
fn draw(bar: &ProgressBar, u: &Update, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let msg = match u.total {
        Some(total) => {
            bar.set_length(total);
            let rate = if secs > 0.0 {
                u.done as f64 / secs
            } else {
                0.0
            };
            let left = if rate > 0.0 {
                format!(
                    ", {} left",
                    duration(total.saturating_sub(u.done) as f64 / rate)
                )
            } else {
                String::new()
            };
            format!("{}/s{left}", thousands(rate.round() as u64))
        }
        None => duration(secs),
    };
    bar.set_prefix(crate::output::one_line(&u.task).into_owned());
    bar.set_message(msg);
    bar.set_position(u.done);
}

/// Seconds as `7s` or `2m05s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// 12345 as `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
