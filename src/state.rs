//! The state database: which sessions exist and which connections they have.
//!
//! SQLite in WAL mode with a busy timeout, opened by many short-lived processes at
//! once (each `spawn`, each keeper, `list`, `cleanup`). Decisions that change rows
//! are made under the user's lock (`lock`), so the database only has to keep rows
//! consistent, not arbitrate. Migrations are an append-only list checked against
//! `PRAGMA user_version` in one exclusive transaction.
//!
//! A connection counts only while its process lives: rows hold the pid together with
//! the process's start time and the boot id, and `process::is_alive` checks all three,
//! so a `kill -9`ed spawn cannot pin a container.

use std::fmt;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::config::SessionMode;
use crate::container::ServiceSpec;
use crate::keys::UserName;
use crate::process::ProcessId;
use crate::project::ProjectName;

/// How long a query waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Mode of the database file (WAL and shm files copy it). The state directory
/// decides who may reach it: root and the docker group.
pub const DB_FILE_MODE: u32 = 0o660;

const MIGRATIONS: &[&str] = &[
    // 1: sessions and their connections.
    "CREATE TABLE sessions (
        user TEXT NOT NULL,
        project TEXT NOT NULL,
        container TEXT NOT NULL,
        session_id TEXT NOT NULL,
        image TEXT NOT NULL,
        mode TEXT NOT NULL,
        grace_secs INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        grace_until INTEGER,
        keeper_pid INTEGER,
        keeper_start INTEGER,
        keeper_boot TEXT,
        PRIMARY KEY (user, project)
    );
    CREATE TABLE connections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user TEXT NOT NULL,
        project TEXT NOT NULL,
        session_id TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_start INTEGER NOT NULL,
        pid_boot TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        program TEXT NOT NULL
    );
    CREATE INDEX connections_by_session ON connections (user, project);",
    // 2: times in milliseconds, so that no deadline ends early by a rounded second.
    // Keepers of the older podspawn count in seconds: they are let go (each sees it is
    // no longer its session's keeper and stops) and the next spawn starts new ones.
    "UPDATE sessions SET created_at = created_at * 1000, expires_at = expires_at * 1000,
        grace_until = grace_until * 1000, keeper_pid = NULL, keeper_start = NULL,
        keeper_boot = NULL;
    UPDATE connections SET started_at = started_at * 1000;",
    // 3: projects, and each session's address slot on its user's network.
    "CREATE TABLE projects (
        name TEXT PRIMARY KEY,
        repo TEXT NOT NULL,
        branch TEXT NOT NULL,
        commit_id TEXT NOT NULL,
        podfile TEXT NOT NULL,
        image TEXT NOT NULL,
        dockerfile TEXT NOT NULL,
        workspace TEXT NOT NULL,
        session TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    ALTER TABLE sessions ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;",
    // 4: companion services, rows of their session, and the session's private network
    // ('' for a session on its user's network).
    "CREATE TABLE services (
        user TEXT NOT NULL,
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        session_id TEXT NOT NULL,
        container TEXT NOT NULL,
        spec TEXT NOT NULL,
        PRIMARY KEY (user, project, name)
    );
    ALTER TABLE sessions ADD COLUMN network TEXT NOT NULL DEFAULT '';",
    // 5: where each connection comes from (`ADDRESS:PORT` of SSH_CONNECTION; '' unknown).
    "ALTER TABLE connections ADD COLUMN client TEXT NOT NULL DEFAULT '';",
];

/// One session: a container and how long it may live. Times are milliseconds since
/// the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub user: UserName,
    pub project: String,
    pub container: String,
    pub session_id: String,
    pub image: String,
    pub mode: SessionMode,
    pub grace_secs: i64,
    pub created_at: i64,
    /// When the container's max lifetime ends; none in persistent mode.
    pub expires_at: Option<i64>,
    /// When the grace period ends, if it has started (no live connections).
    pub grace_until: Option<i64>,
    /// The process that watches this session (see `keeper`).
    pub keeper: Option<ProcessId>,
    /// Which of its user's addresses the container has (0: the default session's).
    pub slot: u32,
    /// The session's private network, when it has services; empty when its container
    /// is on its user's network.
    pub network: String,
}

/// A registered project (see `project`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    pub name: ProjectName,
    /// The repo as given to add-project, normalized (a URL or an absolute path).
    pub repo: String,
    pub branch: String,
    /// The commit checked out: sessions read its Podfile. The image may be older when
    /// only fields that need no build changed since (see `project::sources_digest`).
    pub commit: String,
    /// Where its Podfile is in the repo.
    pub podfile: String,
    /// The image built from it.
    pub image: String,
    /// What the image is built from (kept: the image can be rebuilt as it was).
    pub dockerfile: String,
    pub workspace: String,
    /// What sessions take from the Podfile (shell, env, on_start), as JSON: read from
    /// here, never from the checkout an update may be rewriting.
    pub session: String,
    pub updated_at: i64,
}

/// One SSH connection into a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRow {
    pub id: i64,
    pub user: UserName,
    pub project: String,
    pub session_id: String,
    pub process: ProcessId,
    pub started_at: i64,
    pub program: String,
    /// The client's address and port; empty when not known.
    pub client: String,
}

#[derive(Debug)]
pub enum StateError {
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Query(rusqlite::Error),
    NewerSchema {
        path: PathBuf,
        found: i64,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            StateError::Open { path, source } => {
                write!(f, "cannot open state database {}: {source}", path.display())
            }
            StateError::Io { path, source } => {
                write!(
                    f,
                    "cannot prepare state database {}: {source}",
                    path.display()
                )
            }
            StateError::Query(source) => write!(f, "state database: {source}"),
            StateError::NewerSchema { path, found } => write!(
                f,
                "state database {} has schema version {found}, newer than this podspawn knows ({}); \
                 run the newer podspawn",
                path.display(),
                MIGRATIONS.len()
            ),
        }
    }
}

impl std::error::Error for StateError {}

impl From<rusqlite::Error> for StateError {
    fn from(source: rusqlite::Error) -> Self {
        StateError::Query(source)
    }
}

pub struct State {
    connection: Connection,
}

impl State {
    /// Opens (creating if needed, mode 0660) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<State, StateError> {
        create_with_mode(path)?;
        let open_error = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        let connection = Connection::open(path).map_err(open_error)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        let mut state = State { connection };
        // Turning a brand-new database to WAL can answer "locked" at once, without
        // the busy handler, while twenty first connections do the same: retry.
        let started = std::time::Instant::now();
        loop {
            match state.prepare(path) {
                Err(StateError::Query(err) | StateError::Open { source: err, .. })
                    if is_busy(&err) && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.map(|()| state),
            }
        }
    }

    /// WAL mode (kept in the file once set), then the migrations.
    fn prepare(&mut self, path: &Path) -> Result<(), StateError> {
        let mode: String = self
            .connection
            .pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            self.connection.pragma_update(None, "journal_mode", "WAL")?;
        }
        self.connection
            .pragma_update(None, "synchronous", "NORMAL")?;
        self.migrate(path)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StateError> {
        let known = MIGRATIONS.len() as i64;
        let version: i64 = self
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == known {
            return Ok(());
        }
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        // Another process may have migrated while we waited for the lock.
        let version: i64 =
            transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > known {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
            });
        }
        for migration in &MIGRATIONS[version as usize..] {
            transaction.execute_batch(migration)?;
        }
        transaction.pragma_update(None, "user_version", known)?;
        transaction.commit()?;
        Ok(())
    }

    pub fn session(
        &self,
        user: &UserName,
        project: &str,
    ) -> Result<Option<SessionRow>, StateError> {
        Ok(self
            .connection
            .query_row(
                "SELECT * FROM sessions WHERE user = ?1 AND project = ?2",
                params![user.as_str(), project],
                session_from_row,
            )
            .optional()?)
    }

    /// Every session, ordered by user and project.
    pub fn sessions(&self) -> Result<Vec<SessionRow>, StateError> {
        let mut statement = self
            .connection
            .prepare("SELECT * FROM sessions ORDER BY user, project")?;
        let rows = statement.query_map([], session_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a new session with its services, all or nothing.
    pub fn insert_session(
        &self,
        session: &SessionRow,
        services: &[ServiceSpec],
    ) -> Result<(), StateError> {
        let keeper = session.keeper.as_ref();
        let transaction = self.connection.unchecked_transaction()?;
        transaction.execute(
            "INSERT INTO sessions (user, project, container, session_id, image, mode, grace_secs,
                created_at, expires_at, grace_until, keeper_pid, keeper_start, keeper_boot, slot,
                network)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                session.user.as_str(),
                session.project,
                session.container,
                session.session_id,
                session.image,
                mode_name(session.mode),
                session.grace_secs,
                session.created_at,
                session.expires_at,
                session.grace_until,
                keeper.map(|k| k.pid),
                keeper.map(|k| k.start_ticks as i64),
                keeper.map(|k| k.boot_id.clone()),
                session.slot,
                session.network,
            ],
        )?;
        for service in services {
            transaction.execute(
                "INSERT INTO services (user, project, name, session_id, container, spec)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    session.user.as_str(),
                    session.project,
                    service.name,
                    session.session_id,
                    service.container,
                    serde_json::to_string(service).expect("plain data"),
                ],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// The services of one session, in the order they were recorded.
    pub fn services(&self, user: &UserName, project: &str) -> Result<Vec<ServiceSpec>, StateError> {
        self.query_services(
            "SELECT spec FROM services WHERE user = ?1 AND project = ?2 ORDER BY rowid",
            params![user.as_str(), project],
        )
    }

    fn query_services(
        &self,
        query: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ServiceSpec>, StateError> {
        let mut statement = self.connection.prepare(query)?;
        let rows = statement.query_map(params, |row| {
            let spec: String = row.get(0)?;
            serde_json::from_str(&spec).map_err(|err| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(err),
                )
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn project(&self, name: &ProjectName) -> Result<Option<ProjectRow>, StateError> {
        Ok(self
            .connection
            .query_row(
                "SELECT * FROM projects WHERE name = ?1",
                params![name.as_str()],
                project_from_row,
            )
            .optional()?)
    }

    /// Every registered project, by name.
    pub fn projects(&self) -> Result<Vec<ProjectRow>, StateError> {
        let mut statement = self
            .connection
            .prepare("SELECT * FROM projects ORDER BY name")?;
        let rows = statement.query_map([], project_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Registers a project, or replaces its registration.
    pub fn put_project(&self, project: &ProjectRow) -> Result<(), StateError> {
        self.connection.execute(
            "INSERT OR REPLACE INTO projects (name, repo, branch, commit_id, podfile, image,
                dockerfile, workspace, session, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                project.name.as_str(),
                project.repo,
                project.branch,
                project.commit,
                project.podfile,
                project.image,
                project.dockerfile,
                project.workspace,
                project.session,
                project.updated_at,
            ],
        )?;
        Ok(())
    }

    pub fn delete_project(&self, name: &ProjectName) -> Result<(), StateError> {
        self.connection.execute(
            "DELETE FROM projects WHERE name = ?1",
            params![name.as_str()],
        )?;
        Ok(())
    }

    /// Removes a session and every connection and service row it had.
    pub fn delete_session(&self, user: &UserName, project: &str) -> Result<(), StateError> {
        let transaction = self.connection.unchecked_transaction()?;
        for table in ["connections", "services", "sessions"] {
            transaction.execute(
                &format!("DELETE FROM {table} WHERE user = ?1 AND project = ?2"),
                params![user.as_str(), project],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    pub fn set_grace_until(
        &self,
        user: &UserName,
        project: &str,
        until: Option<i64>,
    ) -> Result<(), StateError> {
        self.connection.execute(
            "UPDATE sessions SET grace_until = ?3 WHERE user = ?1 AND project = ?2",
            params![user.as_str(), project, until],
        )?;
        Ok(())
    }

    pub fn set_keeper(
        &self,
        user: &UserName,
        project: &str,
        keeper: &ProcessId,
    ) -> Result<(), StateError> {
        self.connection.execute(
            "UPDATE sessions SET keeper_pid = ?3, keeper_start = ?4, keeper_boot = ?5
             WHERE user = ?1 AND project = ?2",
            params![
                user.as_str(),
                project,
                keeper.pid,
                keeper.start_ticks as i64,
                keeper.boot_id
            ],
        )?;
        Ok(())
    }

    /// Records a connection; returns its id.
    pub fn add_connection(
        &self,
        session: &SessionRow,
        process: &ProcessId,
        started_at: i64,
        program: &str,
        client: &str,
    ) -> Result<i64, StateError> {
        self.connection.execute(
            "INSERT INTO connections (user, project, session_id, pid, pid_start, pid_boot, started_at, program, client)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                session.user.as_str(),
                session.project,
                session.session_id,
                process.pid,
                process.start_ticks as i64,
                process.boot_id,
                started_at,
                program,
                client
            ],
        )?;
        Ok(self.connection.last_insert_rowid())
    }

    pub fn remove_connection(&self, id: i64) -> Result<(), StateError> {
        self.connection
            .execute("DELETE FROM connections WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// The connection rows of one session (live or not: see `process::is_alive`).
    pub fn connections(
        &self,
        user: &UserName,
        project: &str,
    ) -> Result<Vec<ConnectionRow>, StateError> {
        let mut statement = self.connection.prepare(
            "SELECT id, user, project, session_id, pid, pid_start, pid_boot, started_at, program, client
             FROM connections WHERE user = ?1 AND project = ?2 ORDER BY id",
        )?;
        let rows = statement.query_map(params![user.as_str(), project], |row| {
            Ok(ConnectionRow {
                id: row.get(0)?,
                user: user_from(row, 1)?,
                project: row.get(2)?,
                session_id: row.get(3)?,
                process: ProcessId {
                    pid: row.get(4)?,
                    start_ticks: row.get::<_, i64>(5)? as u64,
                    boot_id: row.get(6)?,
                },
                started_at: row.get(7)?,
                program: row.get(8)?,
                client: row.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `PRAGMA integrity_check` says "ok".
    pub fn is_intact(&self) -> Result<bool, StateError> {
        let answer: String = self
            .connection
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
        Ok(answer == "ok")
    }
}

fn mode_name(mode: SessionMode) -> &'static str {
    match mode {
        SessionMode::GracePeriod => "grace-period",
        SessionMode::DestroyOnDisconnect => "destroy-on-disconnect",
        SessionMode::Persistent => "persistent",
    }
}

fn mode_from_name(name: &str) -> SessionMode {
    match name {
        "destroy-on-disconnect" => SessionMode::DestroyOnDisconnect,
        "persistent" => SessionMode::Persistent,
        _ => SessionMode::GracePeriod,
    }
}

/// A user name from a row, parsed once here: a row whose name is not one is an
/// error, never a string re-validated later.
fn user_from(row: &Row, column: usize) -> rusqlite::Result<UserName> {
    let text: String = row.get(column)?;
    UserName::parse(&text).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            Box::new(err),
        )
    })
}

fn session_from_row(row: &Row) -> rusqlite::Result<SessionRow> {
    let keeper_pid: Option<i32> = row.get("keeper_pid")?;
    let keeper_start: Option<i64> = row.get("keeper_start")?;
    let keeper_boot: Option<String> = row.get("keeper_boot")?;
    let keeper = match (keeper_pid, keeper_start, keeper_boot) {
        (Some(pid), Some(start), Some(boot_id)) => Some(ProcessId {
            pid,
            start_ticks: start as u64,
            boot_id,
        }),
        _ => None,
    };
    Ok(SessionRow {
        user: user_from(row, row.as_ref().column_index("user")?)?,
        project: row.get("project")?,
        container: row.get("container")?,
        session_id: row.get("session_id")?,
        image: row.get("image")?,
        mode: mode_from_name(&row.get::<_, String>("mode")?),
        grace_secs: row.get("grace_secs")?,
        created_at: row.get("created_at")?,
        expires_at: row.get("expires_at")?,
        grace_until: row.get("grace_until")?,
        keeper,
        slot: row.get("slot")?,
        network: row.get("network")?,
    })
}

fn project_from_row(row: &Row) -> rusqlite::Result<ProjectRow> {
    let column = row.as_ref().column_index("name")?;
    let name: String = row.get(column)?;
    let name = ProjectName::parse(&name).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            Box::new(std::io::Error::other(err)),
        )
    })?;
    Ok(ProjectRow {
        name,
        repo: row.get("repo")?,
        branch: row.get("branch")?,
        commit: row.get("commit_id")?,
        podfile: row.get("podfile")?,
        image: row.get("image")?,
        dockerfile: row.get("dockerfile")?,
        workspace: row.get("workspace")?,
        session: row.get("session")?,
        updated_at: row.get("updated_at")?,
    })
}

/// Creates the database file with its mode if it does not exist, so SQLite never
/// creates it with whatever the umask allows.
fn create_with_mode(path: &Path) -> Result<(), StateError> {
    let io_error = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DB_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => file
            .set_permissions(fs::Permissions::from_mode(DB_FILE_MODE))
            .map_err(io_error),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(io_error(err)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub struct TempDb {
        pub dir: PathBuf,
    }

    impl TempDb {
        pub fn new(tag: &str) -> TempDb {
            static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "podspawn-state-{tag}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDb { dir }
        }

        pub fn path(&self) -> PathBuf {
            self.dir.join("state.db")
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    pub fn session(user: &str) -> SessionRow {
        SessionRow {
            user: UserName::parse(user).unwrap(),
            project: String::new(),
            container: format!("podspawn-{user}"),
            session_id: "s1".into(),
            image: "img".into(),
            mode: SessionMode::GracePeriod,
            grace_secs: 60,
            created_at: 1_000_000,
            expires_at: Some(1_000_000 + 8 * 3_600_000),
            grace_until: None,
            keeper: None,
            slot: 0,
            network: String::new(),
        }
    }

    fn process(pid: i32) -> ProcessId {
        ProcessId {
            pid,
            start_ticks: 42,
            boot_id: "boot".into(),
        }
    }

    #[test]
    fn migrating_twice_is_harmless_and_the_file_gets_its_mode() {
        let temp = TempDb::new("migrate");
        State::open(&temp.path()).unwrap();
        let state = State::open(&temp.path()).unwrap();
        let version: i64 = state
            .connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert!(state.is_intact().unwrap());
        let mode = fs::metadata(temp.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DB_FILE_MODE);
    }

    #[test]
    fn many_first_opens_at_once_all_succeed() {
        let temp = TempDb::new("concurrent");
        let path = temp.path();
        std::thread::scope(|scope| {
            for _ in 0..16 {
                let path = &path;
                scope.spawn(move || State::open(path).unwrap());
            }
        });
        assert!(State::open(&path).unwrap().is_intact().unwrap());
    }

    #[test]
    fn times_in_seconds_from_schema_1_become_milliseconds() {
        let temp = TempDb::new("millis");
        {
            let connection = Connection::open(temp.path()).unwrap();
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection
                .execute_batch(
                    "INSERT INTO sessions VALUES ('alice', '', 'podspawn-alice', 's1', 'img',
                        'grace-period', 60, 1000, 29800, 1060, 77, 88, 'boot');
                     PRAGMA user_version = 1;",
                )
                .unwrap();
        }
        let state = State::open(&temp.path()).unwrap();
        let row = state.sessions().unwrap().remove(0);
        assert_eq!(
            (row.created_at, row.expires_at, row.grace_until),
            (1_000_000, Some(29_800_000), Some(1_060_000))
        );
        assert_eq!(
            row.keeper, None,
            "the old keeper, counting seconds, is let go"
        );
    }

    #[test]
    fn a_row_whose_user_is_no_user_name_is_an_error_not_a_string() {
        let temp = TempDb::new("badname");
        let state = State::open(&temp.path()).unwrap();
        state
            .connection
            .execute(
                "INSERT INTO sessions VALUES ('../x', '', 'c', 's', 'i', 'grace-period', 60, 1, NULL, NULL, NULL, NULL, NULL, 0, '')",
                [],
            )
            .unwrap();
        assert!(state.sessions().is_err());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let temp = TempDb::new("newer");
        let state = State::open(&temp.path()).unwrap();
        state
            .connection
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(state);
        let err = State::open(&temp.path()).err().unwrap();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[test]
    fn sessions_round_trip_and_deleting_takes_their_connections() {
        let temp = TempDb::new("round");
        let state = State::open(&temp.path()).unwrap();
        let mut alice = session("alice");
        alice.keeper = Some(process(7));
        state.insert_session(&alice, &[]).unwrap();
        state.insert_session(&session("bob"), &[]).unwrap();
        assert_eq!(state.session(&alice.user, "").unwrap(), Some(alice.clone()));
        assert_eq!(state.sessions().unwrap().len(), 2);

        let first = state
            .add_connection(&alice, &process(10), 1001, "shell", "203.0.113.5:51234")
            .unwrap();
        state
            .add_connection(&alice, &process(11), 1002, "sftp", "")
            .unwrap();
        let connections = state.connections(&alice.user, "").unwrap();
        assert_eq!(connections.len(), 2);
        assert_eq!(connections[0].process, process(10));
        state.remove_connection(first).unwrap();
        assert_eq!(state.connections(&alice.user, "").unwrap().len(), 1);

        state.set_grace_until(&alice.user, "", Some(2000)).unwrap();
        state.set_keeper(&alice.user, "", &process(8)).unwrap();
        let updated = state.session(&alice.user, "").unwrap().unwrap();
        assert_eq!(
            (updated.grace_until, updated.keeper),
            (Some(2000), Some(process(8)))
        );

        state.delete_session(&alice.user, "").unwrap();
        assert_eq!(state.session(&alice.user, "").unwrap(), None);
        assert!(state.connections(&alice.user, "").unwrap().is_empty());
        assert!(
            state
                .session(&UserName::parse("bob").unwrap(), "")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_second_session_for_the_same_user_and_project_is_refused() {
        let temp = TempDb::new("unique");
        let state = State::open(&temp.path()).unwrap();
        state.insert_session(&session("alice"), &[]).unwrap();
        assert!(state.insert_session(&session("alice"), &[]).is_err());
    }
}
