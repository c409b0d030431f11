//! [`TestCluster`]: a throwaway PostgreSQL server for tests and benchmarks.
//!
//! `initdb` into a temporary directory, the server on a free port of 127.0.0.1 with its Unix
//! socket in that directory, run as the `postgres` user when the process runs as root (the
//! server refuses to run as root). The server dies with the process that started it: it is
//! spawned from a thread that lives as long as the process, with `PR_SET_PDEATHSIG`, and the
//! shared one is stopped by an `atexit` handler too. Directories left by processes that died
//! are removed by the next start.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::options::PostgresOptions;

/// Why a throwaway server could not be started.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TestClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "no PostgreSQL server binaries (initdb, postgres) in {searched}: install Debian's `postgresql` package, set PERSIST_PG_BIN to their directory, or set PERSIST_PG_URL to a server's connection string"
    )]
    NoBinaries {
        /// Where they were looked for.
        searched: String,
    },
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// The step (`initdb`, `start`, ...).
        step: &'static str,
        /// What went wrong, with the end of the server's log when there is one.
        detail: String,
    },
}

/// A PostgreSQL server for tests: one started here, or the one `PERSIST_PG_URL` names.
#[derive(Debug)]
pub struct TestCluster {
    kind: Kind,
    schemas: AtomicU64,
}

#[derive(Debug)]
enum Kind {
    External(String),
    Owned(Owned),
}

#[derive(Debug)]
struct Owned {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
}

/// Whether tests must not skip: set by CI.
const REQUIRED: &str = "PERSIST_PG_REQUIRED";
/// The connection string of an existing server to use instead of starting one.
const URL: &str = "PERSIST_PG_URL";
/// The directory of the server binaries.
const BIN: &str = "PERSIST_PG_BIN";
/// How directories of throwaway servers are named in the temporary directory.
const DIR_PREFIX: &str = "ractor-persist-pg-";

impl TestCluster {
    /// The server shared by every test of this process: the one `PERSIST_PG_URL` names, or
    /// one started on first use. `None` when there is neither (no server binaries): the
    /// caller skips, and this prints once how to enable the tests. With
    /// `PERSIST_PG_REQUIRED=1` (as CI sets), a missing server is a panic instead.
    pub fn shared() -> Option<&'static TestCluster> {
        static SHARED: OnceLock<Option<TestCluster>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let found = match std::env::var(URL) {
                    Ok(url) if !url.is_empty() => Ok(TestCluster::external(url)),
                    _ => off_runtime(TestCluster::start),
                };
                match found {
                    Ok(c) => {
                        if let Kind::Owned(o) = &c.kind {
                            stop_at_exit(o);
                        }
                        Some(c)
                    }
                    Err(e) if std::env::var(REQUIRED).is_ok_and(|v| v == "1") => {
                        panic!("PostgreSQL tests are required ({REQUIRED}=1): {e}")
                    }
                    Err(e) => {
                        eprintln!(
                            "SKIPPED: the PostgreSQL tests did not run: {e}. Set {REQUIRED}=1 to make this an error."
                        );
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The server named by a connection string (libpq's `key=value` form or a URL).
    pub fn external(params: impl Into<String>) -> TestCluster {
        TestCluster {
            kind: Kind::External(params.into()),
            schemas: AtomicU64::new(0),
        }
    }

    /// Starts a server of this process's own, stopped and removed when dropped. For tests
    /// that crash or restart it; others share [`TestCluster::shared`].
    pub fn start() -> Result<TestCluster, TestClusterError> {
        off_runtime(Self::start_here)
    }

    fn start_here() -> Result<TestCluster, TestClusterError> {
        let bin = find_binaries()?;
        remove_stale();
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let step = |step: &'static str| {
            move |e: io::Error| TestClusterError::Step {
                step,
                detail: e.to_string(),
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(step("create the directory"))?;
        let run_as = run_as()?;
        let password = format!("pw{:x}", nanos());
        let pwfile = dir.join("pwfile");
        std::fs::File::create(&pwfile)
            .and_then(|mut f| writeln!(f, "{password}"))
            .map_err(step("write the password file"))?;
        if let Some((uid, gid)) = run_as {
            for p in [&dir, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(step("chown"))?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(step("chmod"))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().map_err(step("initdb"))?;
        if !out.status.success() {
            return Err(TestClusterError::Step {
                step: "initdb",
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let port = free_port().map_err(step("find a free port"))?;
        let owned = Owned {
            dir,
            bin,
            port,
            password,
            run_as,
            child: Mutex::new(None),
        };
        owned.start_server()?;
        Ok(TestCluster {
            kind: Kind::Owned(owned),
            schemas: AtomicU64::new(0),
        })
    }

    /// The connection string of the server (with its password).
    pub fn params(&self) -> String {
        match &self.kind {
            Kind::External(url) => url.clone(),
            Kind::Owned(o) => o.params(),
        }
    }

    /// Options for a schema of its own, new on every call, so that tests sharing the server
    /// never see each other's actors.
    pub fn options(&self) -> PostgresOptions {
        let n = self.schemas.fetch_add(1, Ordering::Relaxed);
        let schema = format!("t{}_{:x}_{n}", std::process::id(), nanos() & 0xffff_ffff);
        self.options_in(&schema)
    }

    /// Options for the tables in `schema` (several processes of one test name the same one).
    pub fn options_in(&self, schema: &str) -> PostgresOptions {
        PostgresOptions::new(&self.params())
            .expect("the test server's connection string parses")
            .schema(schema)
    }

    /// Options for the tables in `schema` reached through `127.0.0.1:port` (a proxy in
    /// front of the server, such as a [`crate::CuttingProxy`]), with the server's user,
    /// password and database, and 10 s to reconnect.
    pub fn options_via(&self, port: u16, schema: &str) -> PostgresOptions {
        let direct: tokio_postgres::Config = self.params().parse().expect("valid parameters");
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port);
        if let Some(user) = direct.get_user() {
            config.user(user);
        }
        if let Some(password) = direct.get_password() {
            config.password(password);
        }
        if let Some(db) = direct.get_dbname() {
            config.dbname(db);
        }
        PostgresOptions::from_config(config)
            .schema(schema)
            .reconnect_for(Duration::from_secs(10))
    }

    /// The port the server listens on, if it was started here.
    pub fn port(&self) -> Option<u16> {
        match &self.kind {
            Kind::External(_) => None,
            Kind::Owned(o) => Some(o.port),
        }
    }

    /// Crashes the server as `pg_ctl stop -m immediate` does (SIGQUIT: no checkpoint, crash
    /// recovery at the next start) and waits until it is gone.
    pub fn crash(&self) -> Result<(), TestClusterError> {
        self.owned("crash")?.stop_server(libc::SIGQUIT)
    }

    /// Starts the server again after [`TestCluster::crash`], on the same port, and waits
    /// until it accepts connections.
    pub fn start_again(&self) -> Result<(), TestClusterError> {
        let owned = self.owned("start again")?;
        off_runtime(|| owned.start_server())
    }

    fn owned(&self, step: &'static str) -> Result<&Owned, TestClusterError> {
        match &self.kind {
            Kind::Owned(o) => Ok(o),
            Kind::External(_) => Err(TestClusterError::Step {
                step,
                detail: "the server was not started by this process (PERSIST_PG_URL)".into(),
            }),
        }
    }
}

impl Owned {
    fn params(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=postgres",
            self.port, self.password
        )
    }

    fn start_server(&self) -> Result<(), TestClusterError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .map_err(|e| TestClusterError::Step {
                step: "open the server log",
                detail: e.to_string(),
            })?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "max_connections=300", "-c", "logging_collector=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe, and nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = spawn_kept(cmd).map_err(|e| TestClusterError::Step {
            step: "start the server",
            detail: e.to_string(),
        })?;
        // Poll until the server accepts a connection, or fails.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut config: postgres::Config = self.params().parse().expect("valid parameters");
        config.connect_timeout(Duration::from_secs(2));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(TestClusterError::Step {
                    step: "start the server",
                    detail: format!("it exited ({status}): {}", self.log_tail()),
                });
            }
            match config.connect(postgres::NoTls) {
                Ok(c) => {
                    drop(c);
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    let _ = child.kill();
                    return Err(TestClusterError::Step {
                        step: "start the server",
                        detail: format!("not ready after 60 s ({e}): {}", self.log_tail()),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    fn stop_server(&self, signal: i32) -> Result<(), TestClusterError> {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            // SAFETY: a plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            child.wait().map_err(|e| TestClusterError::Step {
                step: "stop the server",
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.stop_server(libc::SIGQUIT);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` from a thread that lives as long as the process: the parent-death signal
/// follows the thread that forked, not the process.
fn spawn_kept(cmd: Command) -> io::Result<Child> {
    type Order = (Command, mpsc::Sender<io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Order>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Order>();
        std::thread::Builder::new()
            .name("persist-pg-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The senders live in a static: this thread never ends.
            })
            .expect("spawn the keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the keeper thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the keeper thread is gone"))?
}

/// The shared server's process and directory, for the `atexit` handler.
static AT_EXIT: Mutex<Option<(i32, PathBuf)>> = Mutex::new(None);

fn stop_at_exit(o: &Owned) {
    extern "C" fn stop() {
        let found = AT_EXIT.try_lock().ok().and_then(|mut g| g.take());
        if let Some((pid, dir)) = found {
            // SAFETY: kill(2) and waitpid(2) of our own child.
            unsafe {
                libc::kill(pid, libc::SIGQUIT);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let pid = o
        .child
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|c| c.id() as i32);
    if let Some(pid) = pid {
        *AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()) = Some((pid, o.dir.clone()));
        // SAFETY: registers a plain function.
        unsafe { libc::atexit(stop) };
    }
}

/// Removes the directories of servers whose process is gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// `PERSIST_PG_BIN`, or the newest `/usr/lib/postgresql/*/bin` with `initdb`, or `PATH`.
fn find_binaries() -> Result<PathBuf, TestClusterError> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Ok(dir) = std::env::var(BIN) {
        let dir = PathBuf::from(dir);
        return if has(&dir) {
            Ok(dir)
        } else {
            Err(TestClusterError::NoBinaries {
                searched: format!("{BIN}={}", dir.display()),
            })
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|d| has(d))
        .ok_or_else(|| TestClusterError::NoBinaries {
            searched: format!("${BIN}, /usr/lib/postgresql/*/bin and $PATH"),
        })
}

/// The `postgres` user's ids when this process runs as root, which the server refuses.
fn run_as() -> Result<Option<(u32, u32)>, TestClusterError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or(TestClusterError::Step {
            step: "find the postgres user",
            detail: "running as root, and /etc/passwd has no `postgres` user to run the server as"
                .into(),
        })
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs `f` on a thread of its own: the synchronous client that polls the server must not
/// block a tokio worker (its `block_on` panics there).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
