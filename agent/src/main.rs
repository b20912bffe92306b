//! `kinesis-agent --config FILE` (or `-c FILE`) runs the daemon; `kinesis-agent check-config
//! FILE` validates a configuration and prints the effective flows.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!("usage: kinesis-agent (--config | -c) FILE\n       kinesis-agent check-config FILE");
    ExitCode::from(2)
}

fn load(path: &std::path::Path) -> Result<kinesis_agent::config::AgentConfig, ExitCode> {
    match kinesis_agent::config::load(path) {
        Ok(l) => {
            for w in &l.warnings {
                tracing::warn!(message = "Configuration warning.", detail = %w);
            }
            Ok(l.config)
        }
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Tells systemd (`Type=notify`) that the agent is ready, if it runs under systemd.
fn notify_ready() {
    #[cfg(unix)]
    if let Some(sock) = std::env::var_os("NOTIFY_SOCKET")
        && let Ok(s) = std::os::unix::net::UnixDatagram::unbound()
    {
        let _ = s.send_to(b"READY=1", PathBuf::from(sock));
    }
}

/// Waits for SIGTERM/Ctrl-C (returns `None`) or for a SIGHUP whose configuration is valid
/// (returns it).
async fn stop_or_reload(path: &std::path::Path) -> Option<kinesis_agent::config::AgentConfig> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            terminated().await;
            return None;
        };
        loop {
            tokio::select! {
                () = terminated() => return None,
                _ = hup.recv() => match kinesis_agent::config::load(path) {
                    Ok(l) => {
                        for w in &l.warnings {
                            tracing::warn!(message = "Configuration warning.", detail = %w);
                        }
                        return Some(l.config);
                    }
                    Err(e) => tracing::error!(message = "SIGHUP: new configuration is invalid; keeping the current one.", error = %e),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        terminated().await;
        None
    }
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let json = std::env::var("KINESIS_AGENT_LOG_FORMAT").is_ok_and(|v| v == "json");
    let filter = tracing_subscriber::EnvFilter::try_from_env("KINESIS_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, file] if cmd == "check-config" => match load(&PathBuf::from(file)) {
            Ok(cfg) => {
                println!(
                    "configuration is valid: {} flow(s); checkpoints in {}",
                    cfg.flows.len(),
                    cfg.checkpoint_file.display()
                );
                for f in &cfg.flows {
                    println!(
                        "- {} -> {} (key {:?}, start {:?}, buffer {:?}, records over {} bytes: {:?}{})",
                        f.file_pattern,
                        f.stream,
                        f.partition_key,
                        f.initial_position,
                        f.max_buffer_age,
                        f.max_record_bytes,
                        f.oversized,
                        f.multi_line_start_pattern
                            .as_deref()
                            .map(|p| format!(", multi-line start {p:?}"))
                            .unwrap_or_default()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        [flag, file] if flag == "--config" || flag == "-c" => {
            let path = PathBuf::from(file);
            let mut cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async {
                let mut first = true;
                loop {
                    // Resolves on SIGTERM/Ctrl-C (stop), or on SIGHUP with a valid new config
                    // (reload); a SIGHUP with an invalid config is logged and ignored.
                    let next: std::sync::Arc<
                        std::sync::Mutex<Option<kinesis_agent::config::AgentConfig>>,
                    > = Default::default();
                    let slot = std::sync::Arc::clone(&next);
                    let reload_path = path.clone();
                    let ready = first;
                    let shutdown = async move {
                        if ready {
                            notify_ready();
                        }
                        if let Some(new) = stop_or_reload(&reload_path).await
                            && let Ok(mut s) = slot.lock()
                        {
                            *s = Some(new);
                        }
                    };
                    first = false;
                    if let Err(e) =
                        kinesis_agent::run(cfg.clone(), shutdown, Duration::from_secs(10)).await
                    {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                    match next.lock().ok().and_then(|mut s| s.take()) {
                        Some(new) => {
                            tracing::info!(
                                message = "Configuration reloaded.",
                                flows = new.flows.len()
                            );
                            cfg = new;
                        }
                        None => return ExitCode::SUCCESS,
                    }
                }
            })
        }
        _ => usage(),
    }
}
