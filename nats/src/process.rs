//! Process plumbing every binary shares (gateway, worker, test binaries):
//! logging set up from `CHAT_LOG` / `CHAT_LOG_FORMAT`, and the shutdown
//! signal.

/// `CHAT_LOG`: the tracing filter (default `info`).
pub const LOG: &str = "CHAT_LOG";
/// `CHAT_LOG_FORMAT`: `plain` (default) or `json`.
pub const LOG_FORMAT: &str = "CHAT_LOG_FORMAT";

/// Initialises tracing from [`LOG`] and [`LOG_FORMAT`]; a second call does
/// nothing.
pub fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env(LOG).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var(LOG_FORMAT).as_deref() == Ok("json") {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Resolves on Ctrl-C or SIGTERM. A script started in the background by
/// another non-interactive script ignores SIGINT (bash does that), so
/// supervisors stop processes with SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
}
