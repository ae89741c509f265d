//! Test harness for the chat backend's integration tests.
//!
//! Starts REAL servers, each on its own free port with its own temp data
//! directory, and cleans them up on `Drop`:
//!
//! * [`NatsServer`]: `nats-server` (>= 2.11, pinned 2.15.1) with JetStream,
//!   configured by `nats/conf/test.conf` (`sync_interval: always`,
//!   `max_payload: 2MB`), started with `-p -1` so the OS picks the port,
//!   which is read back from the server's log.
//! * [`Postgres`]: PostgreSQL 15 from a data directory copied from a
//!   template made once by `initdb` (cached across test processes).
//! * [`wait_for`]: poll for an event instead of sleeping blindly.
//!
//! Environment knobs:
//! * `NATS_SERVER_BIN`: the nats-server binary (else `nats-server` on
//!   `PATH`, else `/root/.pyenv/shims/nats-server`; a pyenv shim is
//!   resolved to the real binary to save ~170 ms per start).
//! * `CHAT_NATS_TEST_CONF`: the config file (else `nats/conf/test.conf`).
//! * `PG_BIN`: the directory holding `initdb`, `pg_ctl`, `pg_isready`
//!   (else `/usr/lib/postgresql/15/bin` if it exists, else `PATH`).
//! * `CHAT_TESTS_KEEP=1`: keep temp dirs (logs, stores) after `Drop`, for
//!   post-mortems; their paths are printed to stderr.
//!
//! When running as root, PostgreSQL commands run as the `postgres` user
//! through `runuser` (initdb refuses root).

#![forbid(unsafe_code)]

use std::fs;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

/// How long nats-server may take to come up before `start` gives up.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long PostgreSQL may take to come up (`pg_ctl -w -t`); more than
/// NATS because a restart after `stop` runs crash recovery.
const PG_START_DEADLINE: Duration = Duration::from_secs(30);
/// How often `start` polls a server's log while waiting for it.
const START_POLL: Duration = Duration::from_millis(5);
/// How often [`wait_for`] polls.
const WAIT_FOR_POLL: Duration = Duration::from_millis(20);
/// Lines of server log quoted in error messages.
const LOG_TAIL_LINES: usize = 40;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port
/// 0, read the port, close). Another process may grab it before you bind it,
/// so callers that can should retry on "address in use";
/// [`Postgres::start`] does.
///
/// # Panics
/// If binding 127.0.0.1:0 fails (no loopback interface).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// Polls the async closure `f` every 20 ms until it returns `Some(value)`,
/// and returns that value; fails with an error naming `what` if `timeout`
/// passes first. A single call of `f` that hangs is also cut off at the
/// deadline.
///
/// Use this to wait for an event (a message delivered, a row written, a
/// port open), never a blind sleep.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use std::time::Duration;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// let counter = &AtomicU32::new(0);
/// let n = chat_tests::wait_for("the counter to reach 3", Duration::from_secs(5), || async move {
///     let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
///     (n >= 3).then_some(n)
/// })
/// .await?;
/// assert_eq!(n, 3);
/// # Ok(()) }
/// ```
pub async fn wait_for<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(_) => break, // the call itself ran past the deadline
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + WAIT_FOR_POLL).min(deadline)).await;
    }
    Err(anyhow!("timed out after {:?} waiting for {what} ({attempts} attempts)", started.elapsed()))
}

/// A directory removed (recursively) on drop, unless `CHAT_TESTS_KEEP=1`.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<parent>/<prefix>-<pid>-<n>-<nanos>` with mode 0755 (so the
    /// `postgres` user can traverse it when we are root).
    fn new_in(parent: &Path, prefix: &str) -> Result<TempDir> {
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

    fn path(&self) -> &Path {
        &self.path
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

fn keep_temp_dirs() -> bool {
    matches!(std::env::var("CHAT_TESTS_KEEP").as_deref(), Ok("1" | "true" | "yes"))
}

/// The last `lines` lines of a (log) file, or a note saying why not.
fn file_tail(path: &Path, lines: usize) -> String {
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
fn log_section(name: &str, path: &Path) -> String {
    format!(
        "\n--- last lines of {name} ({}) ---\n{}\n--- end of {name} ---",
        path.display(),
        file_tail(path, LOG_TAIL_LINES)
    )
}

/// Runs a command to completion; an error (with its stdout/stderr) unless
/// it exits 0.
fn run(cmd: &mut Command, what: &str) -> Result<Output> {
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
fn is_root() -> bool {
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

// ---------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------

/// The nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`
/// (a pyenv shim is resolved with `pyenv which`), else the pyenv shim path.
fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let on_path = std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nats-server")).find(|p| p.is_file()));
        let candidate = on_path.unwrap_or_else(|| PathBuf::from("/root/.pyenv/shims/nats-server"));
        // A pyenv shim is a bash script that re-execs through `pyenv exec`
        // (same pid, so kill still works) but costs ~170 ms per start.
        if candidate.components().any(|c| c.as_os_str() == "shims") {
            let pyenv = candidate
                .parent()
                .and_then(Path::parent)
                .map(|root| root.join("bin/pyenv"))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("pyenv"));
            if let Ok(out) =
                Command::new(pyenv).args(["which", "nats-server"]).stdin(Stdio::null()).stderr(Stdio::null()).output()
            {
                let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if out.status.success() && real.is_file() {
                    return real;
                }
            }
        }
        candidate
    })
    .clone()
}

/// The nats-server config used for tests: `CHAT_NATS_TEST_CONF`, else
/// `nats/conf/test.conf` in this repository.
fn nats_test_conf() -> PathBuf {
    match std::env::var_os("CHAT_NATS_TEST_CONF").filter(|c| !c.is_empty()) {
        Some(conf) => PathBuf::from(conf),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats/conf/test.conf"),
    }
}

/// A real `nats-server` with JetStream, on a random port, with its store in
/// a temp dir. Killed and its temp dir removed on `Drop`.
///
/// Each (re)start writes a new log file `nats-<n>.log` in the temp dir, so
/// a restart's port is never confused with the previous run's.
#[derive(Debug)]
pub struct NatsServer {
    /// Client URL of the running server, `nats://127.0.0.1:PORT`. Updated by
    /// [`NatsServer::restart`] (the port usually changes).
    pub url: String,
    child: Option<Child>,
    dir: TempDir,
    store: PathBuf,
    generation: u32,
    log: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -c nats/conf/test.conf -js -p -1 -a 127.0.0.1
    /// -sd <tmp>/store -l <tmp>/nats-1.log` and waits (at most 10 s) until
    /// its log reports the client port and "Server is ready".
    pub fn start() -> Result<NatsServer> {
        let dir = TempDir::new_in(&std::env::temp_dir(), "chat-nats")?;
        let store = dir.path().join("store");
        fs::create_dir(&store).with_context(|| format!("create {}", store.display()))?;
        let mut server = NatsServer {
            url: String::new(),
            child: None,
            log: dir.path().join("nats-0.log"),
            dir,
            store,
            generation: 0,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Kills the server with SIGKILL (no clean shutdown, like a crash) and
    /// starts a new one on the SAME store dir, waiting until it is ready
    /// (JetStream has recovered its streams before the server reports
    /// ready). The port usually changes: [`NatsServer::url`] is updated, so
    /// reconnect with the new URL. Also works after [`NatsServer::kill`].
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Kills the server with SIGKILL and reaps it. The store dir is kept (see
    /// [`NatsServer::restart`]). Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The JetStream store dir (passed as `-sd`); streams live under
    /// `<store_dir>/jetstream`.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The last lines of the current run's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, LOG_TAIL_LINES)
    }

    fn spawn(&mut self) -> Result<()> {
        self.generation += 1;
        self.log = self.dir.path().join(format!("nats-{}.log", self.generation));
        let stderr_path = self.dir.path().join(format!("nats-{}.stderr", self.generation));
        let bin = nats_server_bin();
        let conf = nats_test_conf();
        if !conf.is_file() {
            bail!("nats-server test config {} not found (set CHAT_NATS_TEST_CONF)", conf.display());
        }
        let stderr = fs::File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&conf)
            .args(["-js", "-p", "-1", "-a", "127.0.0.1", "-sd"])
            .arg(&self.store)
            .arg("-l")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = cmd.spawn().with_context(|| {
            format!("cannot start {} (install it with scripts/install-deps or set NATS_SERVER_BIN)", bin.display())
        })?;

        let started = Instant::now();
        let failure = |why: String| {
            anyhow!(
                "nats-server {why} (binary {}, config {}){}{}",
                bin.display(),
                conf.display(),
                log_section("nats-server log", &self.log),
                log_section("nats-server stderr", &stderr_path)
            )
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(failure(format!("exited during startup with {status}")));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failure(format!("could not be polled: {e}")));
                }
            }
            if let Some(port) = nats_ready_port(&self.log) {
                self.url = format!("nats://127.0.0.1:{port}");
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failure(format!("was not ready within {START_DEADLINE:?}")));
            }
            std::thread::sleep(START_POLL);
        }
    }
}

/// The client port from a nats-server log, once the log also says "Server
/// is ready" (JetStream is enabled and recovered before that line).
fn nats_ready_port(log: &Path) -> Option<u16> {
    const LISTENING: &str = "Listening for client connections on ";
    let text = fs::read_to_string(log).ok()?;
    if !text.contains("Server is ready") {
        return None;
    }
    text.lines().find_map(|line| {
        let addr = &line[line.find(LISTENING)? + LISTENING.len()..];
        addr.trim().rsplit(':').next()?.parse().ok()
    })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        // `dir` (store and logs) is removed when it drops.
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// A PostgreSQL program: in `PG_BIN`, else `/usr/lib/postgresql/15/bin` if
/// it exists, else looked up on `PATH`.
fn pg_program(name: &str) -> PathBuf {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
        debian.is_dir().then_some(debian)
    });
    match dir {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

/// A command for a PostgreSQL program, run as `postgres` when we are root.
fn pg_command(name: &str) -> Command {
    let program = pg_program(name);
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    // The `postgres` user may not be allowed into our working directory.
    cmd.current_dir(pg_temp_parent());
    cmd
}

/// Gives `path` (recursively) to the `postgres` user when we are root.
fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(path), "chown to postgres")?;
    }
    Ok(())
}

/// Where temp dirs for PostgreSQL go: `/tmp` (world-traversable, so the
/// `postgres` user can reach them even if `TMPDIR` is private to root).
fn pg_temp_parent() -> PathBuf {
    let tmp = PathBuf::from("/tmp");
    if tmp.is_dir() {
        tmp
    } else {
        std::env::temp_dir()
    }
}

/// The template data dir: `initdb` runs once per machine and PostgreSQL
/// version (cached as `/tmp/chat-tests-pg-template-<hash>/data`, published
/// with an atomic rename so a half-made template is never used), and at
/// most once per process. Each [`Postgres`] copies it.
fn pg_template() -> Result<PathBuf> {
    static TEMPLATE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut guard = TEMPLATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = guard.as_ref() {
        return Ok(path.clone());
    }

    // Key the cache on the exact server build and on who runs it.
    let version = run(Command::new(pg_program("postgres")).arg("--version"), "postgres --version")
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .with_context(|| {
            format!(
                "PostgreSQL not found in {} (install it with scripts/install-deps or set PG_BIN)",
                pg_program("").display()
            )
        })?;
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (version.as_str(), pg_program("postgres"), is_root(), "initdb -A trust -U postgres -E UTF8").hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let parent = pg_temp_parent();
    let cache = parent.join(format!("chat-tests-pg-template-{key}"));
    let data = cache.join("data");
    let valid = |data: &Path| data.join("PG_VERSION").is_file() && data.join("global/pg_control").is_file();

    if !valid(&data) {
        // Build in a private dir, then publish it with rename(2).
        let building = TempDir::new_in(&parent, &format!("chat-tests-pg-template-{key}.building"))?;
        let build_data = building.path().join("data");
        chown_postgres(building.path())?;
        let started = Instant::now();
        run(
            pg_command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C", "-D"])
                .arg(&build_data),
            "initdb (template)",
        )?;
        let took = started.elapsed();
        if fs::rename(building.path(), &cache).is_ok() {
            eprintln!("chat-tests: initdb template {} made in {took:?}", cache.display());
        } else if !valid(&data) {
            // Someone else's cache exists but is broken: replace it.
            let _ = fs::remove_dir_all(&cache);
            fs::rename(building.path(), &cache)
                .with_context(|| format!("publish initdb template {}", cache.display()))?;
        }
        // else: another process published first; ours is dropped.
    }
    *guard = Some(data.clone());
    Ok(data)
}

/// A real PostgreSQL 15 server on a free port, with a fresh data dir (a copy
/// of an `initdb` template) in a temp dir. Runs with `fsync=off` (tests only).
/// Stopped (`pg_ctl stop -m immediate`) and its dir removed on `Drop`.
///
/// Authentication is `trust`; the superuser is `postgres`; the database
/// `postgres` exists (create your own with `CREATE DATABASE` if you like).
#[derive(Debug)]
pub struct Postgres {
    /// Connection URL, `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    /// The TCP port (also the Unix socket's port, in the temp dir). It stays
    /// the same across [`Postgres::restart`].
    pub port: u16,
    dir: TempDir,
    data: PathBuf,
    log: PathBuf,
    running: bool,
}

impl Postgres {
    /// Copies the template data dir (`cp -a`), gives it to `postgres`, and
    /// starts the server on a free port with `pg_ctl -w start` (retrying on
    /// a different port if the chosen one was taken meanwhile).
    pub fn start() -> Result<Postgres> {
        let template = pg_template()?;
        let dir = TempDir::new_in(&pg_temp_parent(), "chat-pg")?;
        let data = dir.path().join("data");
        run(Command::new("cp").arg("-a").arg(&template).arg(&data), "copy PostgreSQL template")?;
        chown_postgres(dir.path())?;
        let log = dir.path().join("postgres.log");
        let mut pg = Postgres { url: String::new(), port: 0, dir, data, log, running: false };
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = free_port();
            pg.url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
            match pg.pg_start() {
                Ok(()) => return Ok(pg),
                Err(e) if pg.port_was_taken() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("PostgreSQL did not start")))
    }

    /// Stops the server (`pg_ctl stop -m fast`: clean shutdown) and starts it
    /// again on the same data dir and the same port. Also works after
    /// [`Postgres::stop`].
    pub fn restart(&mut self) -> Result<()> {
        if self.running {
            self.pg_stop("fast")?;
        }
        self.pg_start()
    }

    /// Stops the server abruptly (`pg_ctl stop -m immediate`: no checkpoint,
    /// like a crash; recovery runs on the next start). The data dir is kept
    /// for [`Postgres::restart`]. Does nothing if it is not running.
    pub fn stop(&mut self) -> Result<()> {
        if self.running {
            self.pg_stop("immediate")?;
        }
        Ok(())
    }

    /// The data dir (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The last lines of the server log, for assertion messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, LOG_TAIL_LINES)
    }

    fn pg_start(&mut self) -> Result<()> {
        let options = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off",
            port = self.port,
            sock = self.dir.path().display(),
        );
        let started = Instant::now();
        let result = run(
            pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t"])
                .arg(PG_START_DEADLINE.as_secs().to_string())
                .arg("-o")
                .arg(options)
                .arg("start"),
            "pg_ctl start",
        );
        match result {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(e) => {
                // pg_ctl may time out and leave a postmaster behind.
                let _ = self.pg_stop("immediate");
                Err(e.context(format!(
                    "PostgreSQL did not start on port {} within {:?}{}",
                    self.port,
                    started.elapsed(),
                    log_section("postgres log", &self.log)
                )))
            }
        }
    }

    fn pg_stop(&mut self, mode: &str) -> Result<()> {
        let result = run(
            pg_command("pg_ctl").arg("-D").arg(&self.data).args(["-m", mode, "-w", "-t", "30", "stop"]),
            "pg_ctl stop",
        );
        if result.is_err() {
            // Last resort, so no postmaster outlives the test.
            if let Some(pid) = fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            {
                let _ = Command::new("kill").args(["-9", &pid]).stderr(Stdio::null()).status();
            }
        }
        self.running = false;
        result.map(|_| ()).map_err(|e| e.context(log_section("postgres log", &self.log)))
    }

    /// Whether the last start failed because the port was taken.
    fn port_was_taken(&self) -> bool {
        let tail = file_tail(&self.log, LOG_TAIL_LINES);
        tail.contains("could not bind") || tail.contains("Address already in use")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            if let Err(e) = self.pg_stop("immediate") {
                eprintln!("chat-tests: stopping PostgreSQL on port {}: {e:#}", self.port);
            }
        }
        // `dir` (data and log) is removed when it drops.
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` (a quick
/// liveness probe; not a protocol check).
pub fn port_is_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg_isready(port: u16) -> Result<()> {
        run(
            Command::new(pg_program("pg_isready")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-t",
                "5",
            ]),
            "pg_isready",
        )
        .map(|_| ())
    }

    #[tokio::test]
    async fn nats_has_jetstream_and_survives_sigkill_restart() -> Result<()> {
        let t = Instant::now();
        let mut nats = NatsServer::start()?;
        eprintln!("nats start: {:?}", t.elapsed());
        assert!(nats.url.starts_with("nats://127.0.0.1:"), "{}", nats.url);
        assert!(nats.store_dir().join("jetstream").is_dir(), "{}", nats.log_tail());

        let client = async_nats::connect(&nats.url).await?;
        assert_eq!(client.server_info().max_payload, 2 * 1024 * 1024, "test.conf max_payload");
        let js = async_nats::jetstream::new(client);
        let account = js.query_account().await.context("JetStream account info")?;
        assert_eq!(account.streams, 0);

        js.create_stream(async_nats::jetstream::stream::Config {
            name: "HARNESS".into(),
            subjects: vec!["harness.>".into()],
            ..Default::default()
        })
        .await?;
        js.publish("harness.one", "kept".into()).await?.await?;

        let old_url = nats.url.clone();
        let t = Instant::now();
        nats.restart()?;
        eprintln!("nats SIGKILL + restart: {:?} ({old_url} -> {})", t.elapsed(), nats.url);

        let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
        let mut stream = js.get_stream("HARNESS").await?;
        assert_eq!(stream.info().await?.state.messages, 1, "acked message lost on SIGKILL");

        nats.kill();
        nats.kill(); // idempotent
        nats.restart()?; // works after kill too
        let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
        assert_eq!(js.query_account().await?.streams, 1);
        Ok(())
    }

    #[test]
    fn postgres_starts_restarts_and_stops() -> Result<()> {
        let t = Instant::now();
        let mut pg = Postgres::start()?;
        eprintln!("postgres start (incl. template if first): {:?}", t.elapsed());
        assert_eq!(pg.url, format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port));
        assert!(port_is_open(pg.port));
        pg_isready(pg.port)?;

        let port = pg.port;
        let t = Instant::now();
        pg.restart()?;
        eprintln!("postgres restart: {:?}", t.elapsed());
        assert_eq!(pg.port, port);
        pg_isready(pg.port)?;

        pg.stop()?;
        assert!(!port_is_open(port));
        pg.restart()?;
        pg_isready(pg.port)?;

        let data = pg.data_dir().to_path_buf();
        drop(pg);
        assert!(!port_is_open(port), "postgres still running after drop");
        assert!(keep_temp_dirs() || !data.exists(), "data dir left behind");
        Ok(())
    }

    #[test]
    fn parallel_servers_do_not_collide() -> Result<()> {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| -> Result<(NatsServer, Postgres)> {
                    Ok((NatsServer::start()?, Postgres::start()?))
                })
            })
            .collect();
        let servers: Vec<(NatsServer, Postgres)> =
            handles.into_iter().map(|h| h.join().expect("thread panicked")).collect::<Result<_>>()?;
        let (a, b) = (&servers[0], &servers[1]);
        assert_ne!(a.0.url, b.0.url);
        assert_ne!(a.0.store_dir(), b.0.store_dir());
        assert_ne!(a.1.port, b.1.port);
        for (_, pg) in &servers {
            pg_isready(pg.port)?;
        }
        Ok(())
    }

    #[tokio::test]
    async fn wait_for_polls_until_some_or_times_out() -> Result<()> {
        let mut calls = 0;
        let got = wait_for("third call", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { (n >= 3).then_some(n) }
        })
        .await?;
        assert_eq!(got, 3);

        let t = Instant::now();
        let err = wait_for("the impossible", Duration::from_millis(100), || async { None::<()> }).await.unwrap_err();
        assert!(err.to_string().contains("the impossible"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));

        // A call that hangs is cut off at the deadline.
        let err = wait_for("a hung call", Duration::from_millis(100), || async {
            std::future::pending::<Option<()>>().await
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("a hung call"), "{err}");
        Ok(())
    }

    #[test]
    fn nats_log_parsing() -> Result<()> {
        let dir = TempDir::new_in(&std::env::temp_dir(), "chat-tests-unit")?;
        let log = dir.path().join("log");
        fs::write(&log, "[1] x [INF] Listening for client connections on 127.0.0.1:41241\n")?;
        assert_eq!(nats_ready_port(&log), None, "must wait for 'Server is ready'");
        fs::write(
            &log,
            "[1] x [INF] Listening for client connections on 127.0.0.1:41241\n[1] x [INF] Server is ready\n",
        )?;
        assert_eq!(nats_ready_port(&log), Some(41241));
        Ok(())
    }
}
