//! `chat`: the command-line client (`chat --help`; the code is
//! `chat_client::cli`).

fn main() -> std::process::ExitCode {
    chat_client::cli::main()
}
