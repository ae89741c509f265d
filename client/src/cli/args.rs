//! The command line: global options, the commands and their help. A small
//! hand-written parser (the tool has a dozen commands; an argument-parser
//! crate would cost more build time than it saves).

use crate::quic::Trust;
use crate::Transport;

use super::CliError;

/// Options for every command.
#[derive(Debug, Clone)]
pub struct Opts {
    /// `host:port` of the gateway (`--server`, else `CHAT_SERVER`; the
    /// first if several are given).
    pub server: String,
    /// Every gateway given (comma-separated): `send` and `listen` ask them
    /// for edges in turn when they have to move.
    pub seeds: Vec<String>,
    /// JSON output (`--json`): one JSON value per line.
    pub json: bool,
    /// Session transport for `send` and `listen`.
    pub transport: Transport,
}

/// What to do.
#[derive(Debug)]
pub enum Parsed {
    /// Print this help and exit 0.
    Help(String),
    /// Run a command: its name and its arguments.
    Run(Opts, Vec<String>),
}

/// Every command: name, usage, summary.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("signup", "signup <username> <password>", "create an account"),
    ("login", "login <username> <password> [device]", "log this device in (device defaults to \"cli\") and save the login"),
    ("logout", "logout", "log this device out and forget the saved login"),
    ("send", "send <to> <text...> [--reply-to <id>]", "send a message; <to> is a user name, a user id, #<group name>, or a conversation id (dm-1-2, g-3); --reply-to answers message <id> of that conversation"),
    ("edit", "edit <conversation> <id> <text...>", "change the text of your message <id> (within the server's edit window); <conversation> as for send"),
    ("react", "react <conversation> <id> <emoji> [--remove]", "add your reaction <emoji> to message <id> (or remove it with --remove); <conversation> as for send"),
    ("delete", "delete <conversation> <id>", "delete a message for everyone (yours within the edit window; any, as a group owner or admin)"),
    ("listen", "listen", "catch up from the saved cursor, then print live messages (Ctrl-C stops; run again to resume)"),
    ("history", "history <to> [before_id|-] [limit]", "a page of a conversation, oldest first (newest 50 by default)"),
    ("conversations", "conversations", "your conversations, newest first, with unread counts (the server's, the same on every device) and mentions of you in groups as (@n)"),
    ("search", "search <text...>", "the newest 20 messages you may read that contain the text (2 characters or more; matches in [brackets])"),
    ("read", "read <to> <message id>", "mark a conversation read up to a message, for every device of yours (never moves backwards)"),
    ("group", "group create <name> [user...] | add <group> <user...> | remove <group> <user> | leave <group> | list | show <group>", "groups; <group> is #name, a name, an id or g-<id>"),
    ("friends", "friends add <user> | remove <user> | list", "friend requests (add accepts theirs) and the friend list with presence"),
    ("room", "room create <title...> | show <room> | join <room> | send <room> <text...>", "live rooms: join prints the backlog, then live messages and gaps (Ctrl-C stops); <room> is an id or r-<id>"),
];

const GLOBAL: &str = "Options (before or after the command):
  --json                 machine-readable output: one JSON value per line
  --server <host:port>   the gateway (default: CHAT_SERVER, else 127.0.0.1:8080); several,
                         comma-separated, are asked for edges in turn when moving
  --transport ws|quic    session transport for send and listen (default ws)
  --quic <host:port>     QUIC address (default 127.0.0.1:8443)
  --fingerprint <sha256> trust the gateway's self-signed certificate (from its log)
  --ca <pem file>        trust a CA instead
  -h, --help             this help; `chat <command> --help` for one command

A user is a name or an id (a name of digits only is read as an id).
Environment: CHAT_SERVER (gateway address), CHAT_CLI_STATE (login, cursor and
read positions; default ~/.chat-cli.json).
Exit codes: 0 ok, 1 refused by the server, 2 bad command line, 3 not logged in,
4 unknown user/group/conversation, 5 server unreachable.";

fn usage() -> String {
    let mut s = String::from(
        "chat: a command-line client for the chat server\n\nUsage: chat [options] <command> [args]\n\nCommands:\n",
    );
    for (name, _, summary) in COMMANDS {
        s.push_str(&format!("  {name:<14} {summary}\n"));
    }
    s.push('\n');
    s.push_str(GLOBAL);
    s
}

fn command_help(name: &str) -> Option<String> {
    COMMANDS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, usage, summary)| format!("Usage: chat [options] {usage}\n\n{summary}\n\n{GLOBAL}"))
}

/// Takes the global options out of `argv`.
pub fn parse(argv: Vec<String>) -> Result<Parsed, CliError> {
    let mut rest = Vec::new();
    let mut server = std::env::var("CHAT_SERVER").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let (mut json, mut help, mut kind, mut quic, mut trust) =
        (false, false, "ws".to_string(), "127.0.0.1:8443".to_string(), None);
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| CliError::Usage(format!("{name} needs a value")));
        match a.as_str() {
            "--json" => json = true,
            "-h" | "--help" => help = true,
            "--server" => server = value("--server")?,
            "--transport" => kind = value("--transport")?,
            "--quic" => quic = value("--quic")?,
            "--fingerprint" => trust = Some(Trust::Fingerprint(value("--fingerprint")?)),
            "--ca" => trust = Some(Trust::CaFile(value("--ca")?.into())),
            // A command's own flags (`react --remove`, `send --reply-to
            // <id>`), left for the command.
            "--remove" => rest.push(a),
            "--reply-to" => {
                let id = value("--reply-to")?;
                rest.extend([a, id]);
            }
            s if s.starts_with("--") => return Err(CliError::Usage(format!("unknown option {s}"))),
            _ => rest.push(a),
        }
    }
    if rest.first().map(String::as_str) == Some("help") {
        help = true;
        rest.remove(0);
    }
    if help || rest.is_empty() {
        let text = match rest.first() {
            Some(cmd) => command_help(cmd).ok_or_else(|| CliError::Usage(format!("unknown command {cmd:?}")))?,
            None if help => usage(),
            None => return Err(CliError::Usage(format!("missing command\n\n{}", usage()))),
        };
        return Ok(Parsed::Help(text));
    }
    if command_help(&rest[0]).is_none() {
        return Err(CliError::Usage(format!("unknown command {:?}", rest[0])));
    }
    let transport = match kind.as_str() {
        "ws" => Transport::Ws,
        "quic" => Transport::Quic {
            addr: quic,
            trust: trust.ok_or_else(|| {
                CliError::Usage("--transport quic needs --fingerprint <sha256> or --ca <pem file>".into())
            })?,
        },
        other => return Err(CliError::Usage(format!("unknown transport {other:?}: use ws or quic"))),
    };
    let seeds: Vec<String> = server.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let server = seeds.first().cloned().unwrap_or(server);
    Ok(Parsed::Run(Opts { server, seeds, json, transport }, rest))
}

/// Argument `i` of a command, or a usage error naming it.
pub fn arg(args: &[String], i: usize, name: &str) -> Result<String, CliError> {
    args.get(i).cloned().ok_or_else(|| CliError::Usage(format!("missing <{name}>")))
}
