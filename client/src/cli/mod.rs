//! The `chat` command-line tool: [`main`] parses the arguments
//! ([`args`]), runs one command ([`commands`]) and turns every failure
//! into one line on stderr and an exit code ([`CliError`]), never a panic
//! or a backtrace. People are named by username (resolved by the server,
//! [`names`]); the login, the cursor and read positions live in the state
//! file ([`state`]).

pub mod args;
pub mod commands;
pub mod names;
pub mod state;

use std::process::ExitCode;

use thiserror::Error;

use crate::ClientError;

/// Why a command failed; each kind has its exit code ([`CliError::code`]).
#[derive(Debug, Error)]
pub enum CliError {
    /// The command line is wrong (exit 2).
    #[error("{0}\n(see `chat --help`)")]
    Usage(String),
    /// No saved login, or the server refused the token (exit 3).
    #[error("{0}")]
    NotLoggedIn(String),
    /// A user, group or conversation named does not exist (exit 4).
    #[error("{0}")]
    NotFound(String),
    /// The server cannot be reached (exit 5).
    #[error(
        "cannot reach the server at {0}: {1} (is it running? `scripts/run` starts one; CHAT_SERVER picks another)"
    )]
    ServerDown(String, String),
    /// The server refused the request (exit 1).
    #[error("{0}")]
    Refused(String),
    /// A local file could not be read or written (exit 1).
    #[error("{0}")]
    Local(String),
}

impl CliError {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::NotLoggedIn(_) => 3,
            CliError::NotFound(_) => 4,
            CliError::ServerDown(..) => 5,
            CliError::Refused(_) | CliError::Local(_) => 1,
        }
    }

    /// A client error, told in words (`server` for "cannot reach").
    pub fn from_client(e: ClientError, server: &str) -> CliError {
        match e {
            ClientError::Io(m) => CliError::ServerDown(server.to_owned(), m),
            ClientError::Api { status: 401, .. } => CliError::NotLoggedIn(
                "the server refused the saved login (expired or logged out): run `chat login`".into(),
            ),
            ClientError::Api { code, message, .. } if code == "unauthorized" => {
                CliError::NotLoggedIn(format!("{message}: run `chat login`"))
            }
            ClientError::Api { code, message, .. } if code == "unknown_user" || code == "unknown_group" => {
                CliError::NotFound(message)
            }
            ClientError::Api { code, message, .. } => CliError::Refused(format!("{message} ({code})")),
            ClientError::Timeout(what) => CliError::Refused(format!("no answer from the server (waiting for {what})")),
            ClientError::Closed { code: 4001, .. } => {
                CliError::NotLoggedIn("this device was logged out: run `chat login`".into())
            }
            ClientError::Closed { code, reason } => {
                CliError::Refused(format!("the server closed the session: {code} {reason}"))
            }
        }
    }
}

/// Runs the tool with the process arguments; the exit code to return.
pub fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat: error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match rt.block_on(run(argv)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: error: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// Parses `argv` and runs the command.
pub async fn run(argv: Vec<String>) -> Result<(), CliError> {
    let parsed = args::parse(argv)?;
    match parsed {
        args::Parsed::Help(text) => {
            println!("{text}");
            Ok(())
        }
        args::Parsed::Run(opts, cmd) => commands::run(&opts, cmd).await,
    }
}
