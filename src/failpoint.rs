//! Test hooks at the named points of the commit protocol, where a crash is most telling.
//!
//! `CALLSYNC_FAILPOINT=<name>` aborts the process there, the way `kill -9` or a power cut
//! would. A test that drives the library in-process installs a per-thread hook instead
//! (`set_hook`), which panics to end the "process" there: the driver then drops every
//! connection, lock and cache, as an abort would, and starts the next step afresh.
//!
//! The points, in protocol order: `after_stage` (files staged, no commit), `after_commit`
//! (state committed, nothing published), `after_publish` (files in place, table not yet
//! told), `after_table_commit` (table commit landed, state not yet marked), `compact_written`
//! (compaction files written and recorded), `compact_before_commit`, `compact_after_commit`,
//! `readd_before_commit` (recovery re-adding files the table lacks).

use std::cell::RefCell;

/// A per-thread hook, called with the point's name.
pub type Hook = Box<dyn Fn(&str)>;

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Installs (or, with `None`, removes) this thread's hook.
pub fn set_hook(hook: Option<Hook>) {
    HOOK.with(|h| *h.borrow_mut() = hook);
}

/// The point `name` is reached.
pub fn hit(name: &str) {
    static POINT: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| std::env::var("CALLSYNC_FAILPOINT").ok());
    if POINT.as_deref() == Some(name) {
        eprintln!("callsync: failpoint {name} reached, aborting");
        std::process::abort();
    }
    HOOK.with(|h| {
        if let Some(f) = h.borrow().as_ref() {
            f(name)
        }
    });
}
