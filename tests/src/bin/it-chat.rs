//! The `chat` CLI as a binary of this crate, so the suite can run it as a
//! process (the same code as `chat`: `chat_client::cli`).

fn main() -> std::process::ExitCode {
    chat_client::cli::main()
}
