//! Burn's and CubeCL's `log` records on stderr (warnings and errors unless `RUST_LOG` names
//! another level). CubeCL's device thread catches a failed task's panic and only logs it as a
//! warning; without a logger the first failure of a long run is lost and only its knock-on
//! panics show.

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            eprintln!("[{} {}] {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

/// Installs the logger at `RUST_LOG`'s level (`error`, `warn`, `info`, `debug`, `trace`;
/// default `warn`).
pub fn install() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Level>().ok())
        .map_or(LevelFilter::Warn, |l| l.to_level_filter());
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
