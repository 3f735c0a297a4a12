//! The shared file through which rank 0 hands NCCL's unique id to the other ranks
//! (`DILATED_NCCL_ID_FILE`), tagged with the run it belongs to (`DILATED_NCCL_RUN_ID`): a rank
//! reads only an id of its own run, so a file left by an earlier run (crashed or finished) is
//! never taken for this one's, which would leave `ncclCommInitRank` waiting for peers that never
//! come. Layout: 8 bytes `DANCCLID`, the run id's length (4 bytes, little-endian), the run id,
//! the 128 bytes of the id. Rank 0 writes it atomically (a temporary file, then a rename).

use std::path::Path;
use std::time::{Duration, Instant};

use dilated_attention_core::{DilatedAttentionError, Result};

/// The variable naming the run a shared id file belongs to: any string the ranks of one run
/// share and no other run uses (a job id, a launcher's run id, a timestamp chosen by the script).
pub const NCCL_RUN_ID_ENV: &str = "DILATED_NCCL_RUN_ID";

const MAGIC: &[u8; 8] = b"DANCCLID";

/// Bytes of an NCCL unique id.
pub(crate) const ID_BYTES: usize = 128;

/// A setup failure of `rank` (the rendezvous, NCCL's init) as a `Communication` error.
pub(crate) fn setup_error(rank: usize, reason: String) -> DilatedAttentionError {
    DilatedAttentionError::Communication {
        rank,
        peer: 0,
        operation: "nccl setup",
        reason,
    }
}

/// The run id of the environment, which the shared-file rendezvous requires.
///
/// # Errors
/// [`Communication`](DilatedAttentionError::Communication) when [`NCCL_RUN_ID_ENV`] is unset or
/// empty.
pub(crate) fn run_id_from_env(rank: usize) -> Result<String> {
    match std::env::var(NCCL_RUN_ID_ENV) {
        Ok(run) if !run.is_empty() => Ok(run),
        _ => Err(setup_error(
            rank,
            format!(
                "DILATED_NCCL_ID_FILE needs {NCCL_RUN_ID_ENV}, one value shared by the ranks of a run and new for each run: without it a file left by an earlier run could be read as this run's"
            ),
        )),
    }
}

fn encode(run: &str, id: &[u8; ID_BYTES]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + run.len() + ID_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(run.len() as u32).to_le_bytes());
    bytes.extend_from_slice(run.as_bytes());
    bytes.extend_from_slice(id);
    bytes
}

/// What a file holds, seen from a rank of run `run`.
#[derive(Debug, PartialEq)]
enum Contents {
    /// This run's id.
    Id([u8; ID_BYTES]),
    /// Another run's id: that run's tag.
    OtherRun(String),
    /// Not an id file (or one still being written by an older writer without the rename).
    Unreadable,
}

fn decode(bytes: &[u8], run: &str) -> Contents {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Contents::Unreadable;
    };
    let Some((length, rest)) = rest.split_first_chunk::<4>() else {
        return Contents::Unreadable;
    };
    let length = u32::from_le_bytes(*length) as usize;
    if rest.len() != length + ID_BYTES {
        return Contents::Unreadable;
    }
    let (tag, id) = rest.split_at(length);
    let tag = String::from_utf8_lossy(tag);
    if tag != run {
        return Contents::OtherRun(tag.into_owned());
    }
    Contents::Id(id.try_into().expect("ID_BYTES bytes"))
}

/// Rank 0: writes run `run`'s `id` to `path`, atomically.
///
/// # Errors
/// [`Communication`](DilatedAttentionError::Communication) when the file cannot be written.
pub(crate) fn write_id_file(path: &Path, run: &str, id: &[u8; ID_BYTES]) -> Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, encode(run, id))
        .and_then(|_| std::fs::rename(&partial, path))
        .map_err(|e| setup_error(0, format!("writing {}: {e}", path.display())))
}

/// Ranks other than 0: waits (polling) until `path` holds run `run`'s id.
///
/// # Errors
/// [`Communication`](DilatedAttentionError::Communication) when no id of this run appears
/// within `timeout`, naming the other run whose file was there, if any.
pub(crate) fn wait_for_id_file(
    path: &Path,
    run: &str,
    rank: usize,
    timeout: Duration,
) -> Result<[u8; ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    let mut seen = None;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            match decode(&bytes, run) {
                Contents::Id(id) => return Ok(id),
                Contents::OtherRun(other) => seen = Some(other),
                Contents::Unreadable => {}
            }
        }
        if Instant::now() > deadline {
            let found = match seen {
                Some(other) => format!(" (it holds the id of run {other:?})"),
                None => String::new(),
            };
            return Err(setup_error(
                rank,
                format!(
                    "{} held no NCCL id of run {run:?} within {timeout:?}{found}",
                    path.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: u8) -> [u8; ID_BYTES] {
        std::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("id_file_{name}_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("nccl_id")
    }

    #[test]
    fn an_id_reads_back_only_for_its_own_run() {
        let bytes = encode("job-17", &id(3));
        assert_eq!(decode(&bytes, "job-17"), Contents::Id(id(3)));
        assert_eq!(
            decode(&bytes, "job-18"),
            Contents::OtherRun("job-17".into())
        );
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], "job-17"),
            Contents::Unreadable
        );
        assert_eq!(decode(&id(3), "job-17"), Contents::Unreadable);
    }

    #[test]
    fn a_file_left_by_another_run_is_not_read() {
        let path = scratch("stale");
        write_id_file(&path, "yesterday", &id(1)).unwrap();
        let err = wait_for_id_file(&path, "today", 1, Duration::from_millis(100)).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("no NCCL id of run \"today\"") && message.contains("\"yesterday\""),
            "{message}"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_rank_waits_until_its_run_replaces_a_stale_file() {
        let path = scratch("replaced");
        write_id_file(&path, "yesterday", &id(1)).unwrap();
        let got = std::thread::scope(|s| {
            let reader = s.spawn(|| wait_for_id_file(&path, "today", 1, Duration::from_secs(20)));
            std::thread::sleep(Duration::from_millis(150));
            write_id_file(&path, "today", &id(2)).unwrap();
            reader.join().unwrap()
        });
        assert_eq!(got.unwrap(), id(2));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
