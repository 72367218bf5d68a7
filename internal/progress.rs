//! Progress of long work (an import, a rebuild, applying other clones' ops,
//! doctor's checks), for whoever shows it.
//!
//! Work reports through a [`Meter`]; a meter with nobody listening costs a
//! branch per step. The listener is the one [`scoped`] to the working thread
//! (the daemon sets one per request that asked for progress, and sends the
//! updates to the client as frames), else the process's [`set_global`] one
//! (the command line's bar on a terminal). Updates are sent at most every
//! [`EVERY`], plus the first and the last.

use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Updates of one meter are at least this far apart (first and last excepted).
pub const EVERY: Duration = Duration::from_millis(100);

/// Where one piece of work has got to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// What is being done ("importing", "applying ops").
    pub task: String,
    /// Steps done.
    pub done: u64,
    /// Steps in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// The task is over (the last update of its meter).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

/// A listener.
pub type Sink = Arc<dyn Fn(&Update) + Send + Sync>;

static GLOBAL: OnceLock<Sink> = OnceLock::new();

thread_local! {
    static SCOPED: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Sets the process's listener (once; later calls are ignored).
pub fn set_global(sink: Sink) {
    let _ = GLOBAL.set(sink);
}

/// Runs `f` with `sink` (if any) listening to the meters of this thread.
pub fn scoped<T>(sink: Option<Sink>, f: impl FnOnce() -> T) -> T {
    if sink.is_none() {
        return f();
    }
    struct Restore(Option<Sink>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let previous = SCOPED.with(|s| std::mem::replace(&mut *s.borrow_mut(), sink));
    let _restore = Restore(previous);
    f()
}

/// Who listens to this thread's meters.
pub fn current() -> Option<Sink> {
    SCOPED
        .with(|s| s.borrow().clone())
        .or_else(|| GLOBAL.get().cloned())
}

/// Counts the steps of one task and reports them to [`current`].
pub struct Meter {
    sink: Option<Sink>,
    update: Update,
    last: Instant,
}

impl Meter {
    /// Starts `task` of `total` steps (if known).
    pub fn start(task: &str, total: Option<u64>) -> Meter {
        let sink = current();
        let update = Update {
            task: task.to_string(),
            done: 0,
            total,
            finished: false,
        };
        if let Some(s) = &sink {
            s(&update);
        }
        Meter {
            sink,
            update,
            last: Instant::now(),
        }
    }

    /// One more step done, now at `task` (a check's name, say).
    pub fn next(&mut self, task: &str) {
        self.update.task.clear();
        self.update.task.push_str(task);
        self.inc(1);
    }

    /// `n` more steps done.
    pub fn inc(&mut self, n: u64) {
        self.update.done += n;
        if let Some(s) = &self.sink
            && self.last.elapsed() >= EVERY
        {
            self.last = Instant::now();
            s(&self.update);
        }
    }
}

impl Drop for Meter {
    /// The last update: the task is over (done or abandoned).
    fn drop(&mut self) {
        if let Some(s) = &self.sink {
            self.update.finished = true;
            s(&self.update);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_scoped_listener_hears_its_threads_meters_first_and_last() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let sink: Sink = Arc::new(move |u: &Update| h.lock().unwrap().push(u.clone()));
        scoped(Some(sink), || {
            let mut m = Meter::start("counting", Some(3));
            m.inc(1);
            m.inc(2);
        });
        let heard = heard.lock().unwrap();
        assert_eq!(heard.first().map(|u| u.done), Some(0));
        let last = heard.last().unwrap();
        assert!(last.finished && last.done == 3 && last.total == Some(3));
        // Outside the scope nobody listens (no global listener in unit tests).
        assert!(SCOPED.with(|s| s.borrow().is_none()));
    }
}
