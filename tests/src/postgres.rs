//! A real PostgreSQL 15 on a free port with its data in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::free_port;
use crate::support::{file_tail, is_root, log_section, run, TempDir, LOG_TAIL_LINES};

/// How long PostgreSQL may take to come up (`pg_ctl -w -t`); more than
/// NATS because a restart after `stop` runs crash recovery.
const PG_START_DEADLINE: Duration = Duration::from_secs(30);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::keep_temp_dirs;
    use crate::{port_is_open, NatsServer};

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
}
