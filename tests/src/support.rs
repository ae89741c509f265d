//! Small helpers shared by the servers: temp dirs, log tails, commands.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// How often `start` polls a server's log while waiting for it.
pub(crate) const START_POLL: Duration = Duration::from_millis(5);
/// Lines of server log quoted in error messages.
pub(crate) const LOG_TAIL_LINES: usize = 40;

/// A directory removed (recursively) on drop, unless `CHAT_TESTS_KEEP=1`.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<parent>/<prefix>-<pid>-<n>-<nanos>` with mode 0755 (so the
    /// `postgres` user can traverse it when we are root).
    pub(crate) fn new_in(parent: &Path, prefix: &str) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let path = parent.join(format!("{prefix}-{}-{n}-{nanos:09}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("chmod 0755 {}", path.display()))?;
                    return Ok(TempDir { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create temp dir {}", path.display())),
            }
        }
        bail!("could not create a unique temp dir under {}", parent.display())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory (a failed test's evidence) and returns its path.
    pub(crate) fn keep(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if keep_temp_dirs() {
            eprintln!("chat-tests: keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn keep_temp_dirs() -> bool {
    matches!(std::env::var("CHAT_TESTS_KEEP").as_deref(), Ok("1" | "true" | "yes"))
}

/// The last `lines` lines of a (log) file, or a note saying why not.
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Formats a log tail for inclusion in an error message.
pub(crate) fn log_section(name: &str, path: &Path) -> String {
    format!(
        "\n--- last lines of {name} ({}) ---\n{}\n--- end of {name} ---",
        path.display(),
        file_tail(path, LOG_TAIL_LINES)
    )
}

/// Runs a command to completion; an error (with its stdout/stderr) unless
/// it exits 0.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Whether this process runs as root (the owner of `/proc/self` is the
/// effective uid), in which case PostgreSQL must run as `postgres`.
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| match fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    })
}
