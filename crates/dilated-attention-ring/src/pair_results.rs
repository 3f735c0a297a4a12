//! How the pairs' results of the sharded attention are combined as they finish.

use dilated_attention_core::DilationMode;

/// The pairs' results as they finish: LongNet folds each into a running result (an LSE merge
/// forward, a sum backward), so one pair's result is live at a time besides it; HeadGrouped keeps
/// them side by side (their heads are disjoint) for one concatenation at the end.
pub(crate) enum PairResults<T> {
    Running(Option<T>),
    SideBySide(Vec<T>),
}

impl<T> PairResults<T> {
    pub(crate) fn new(mode: DilationMode) -> Self {
        match mode {
            DilationMode::LongNet => Self::Running(None),
            DilationMode::HeadGrouped => Self::SideBySide(Vec::new()),
        }
    }

    /// Adds a pair's result; `fold` merges it into the running one (LongNet).
    pub(crate) fn push(&mut self, result: T, fold: impl FnOnce(T, T) -> T) {
        match self {
            Self::Running(running) => {
                *running = Some(match running.take() {
                    None => result,
                    Some(acc) => fold(acc, result),
                });
            }
            Self::SideBySide(results) => results.push(result),
        }
    }

    /// The combined result; `join` concatenates side-by-side results along the heads.
    pub(crate) fn finish(self, join: impl FnOnce(Vec<T>) -> T) -> T {
        match self {
            Self::Running(running) => running.expect("a config has a pair"),
            Self::SideBySide(results) => join(results),
        }
    }
}
