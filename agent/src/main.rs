//! `kinesis-agent --config FILE` (or `-c FILE`) runs the daemon; `kinesis-agent check-config
//! FILE` validates a configuration and prints the effective flows; `kinesis-agent
//! import-checkpoints [--config FILE] [--force] [--dry-run] [SQLITE_DB]` turns the Java Kinesis
//! Agent's checkpoint database into this agent's checkpoint file ([`import`]). Without FILE,
//! the Kinesis Agent's `/etc/aws-kinesis/agent.json`; the flows of `agent.d/` are added (see
//! `config::load`).

mod import;

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: kinesis-agent [(--config | -c) FILE]\n       kinesis-agent check-config [FILE]\n       kinesis-agent import-checkpoints [(--config | -c) FILE] [--force] [--dry-run] [SQLITE_DB]\n(FILE defaults to /etc/aws-kinesis/agent.json; the flows of agent.d/*.json beside it and in /etc/aws-kinesis/agent.d are added;\n SQLITE_DB, the Java Kinesis Agent's checkpoint database, to /var/run/aws-kinesis-agent/checkpoints; --force replaces\n an existing checkpoint file of this agent, --dry-run prints what would be imported and writes nothing)"
    );
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

/// Turns signals into control messages for the agent, from its own task so that none is lost
/// while the agent is busy (a SIGTERM during a reload's drain waits in the channel): SIGTERM
/// and Ctrl-C stop; SIGHUP loads the configuration again and sends it if it is valid (an
/// invalid one is logged and ignored).
fn signals(path: PathBuf) -> tokio::sync::mpsc::Receiver<kinesis_agent::Control> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                terminated().await;
                let _ = tx.send(kinesis_agent::Control::Stop).await;
                return;
            };
            loop {
                tokio::select! {
                    () = terminated() => {
                        let _ = tx.send(kinesis_agent::Control::Stop).await;
                        return;
                    }
                    _ = hup.recv() => match kinesis_agent::config::load(&path) {
                        Ok(l) => {
                            for w in &l.warnings {
                                tracing::warn!(message = "Configuration warning.", detail = %w);
                            }
                            tracing::info!(message = "SIGHUP: reloading.", flows = l.config.flows.len());
                            if tx.send(kinesis_agent::Control::Reload(Box::new(l.config))).await.is_err() {
                                return;
                            }
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
            let _ = tx.send(kinesis_agent::Control::Stop).await;
        }
    });
    rx
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
        // Colour only on a terminal: under systemd or redirected to a file, plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "import-checkpoints") {
        return import_checkpoints(&args[1..]);
    }
    // The Kinesis Agent's default file when none is named (its AgentOptions).
    let default = kinesis_agent::config::DEFAULT_CONFIG_FILE.to_owned();
    match args.as_slice() {
        [] => args = vec!["-c".into(), default],
        [cmd] if cmd == "check-config" => args.push(default),
        _ => {}
    }
    match args.as_slice() {
        [cmd, file] if cmd == "check-config" => match load(&PathBuf::from(file)) {
            Ok(cfg) => {
                println!(
                    "configuration is valid: {} flow(s); checkpoints in {}",
                    cfg.flows.len(),
                    cfg.checkpoint_file.display()
                );
                let cw = &cfg.cloudwatch;
                if cw.emit_metrics {
                    println!(
                        "cloudwatch: metrics on; namespace {}, endpoint {}, buffer {:?}, queue {}, instance dimension {}",
                        cw.namespace,
                        cw.endpoint.as_deref().unwrap_or(
                            "(AWS_ENDPOINT_URL_CLOUDWATCH, AWS_ENDPOINT_URL or the region's)"
                        ),
                        cw.buffer_time,
                        cw.queue_size,
                        if cw.tag_instance { "on" } else { "off" }
                    );
                } else {
                    println!("cloudwatch: metrics off");
                }
                println!(
                    "shutdown: {:?} to deliver what was read",
                    cfg.shutdown_timeout
                );
                let c = &cfg.credentials;
                println!(
                    "credentials: {}{}{}",
                    if c.access_key.is_some() {
                        "awsAccessKeyId and awsSecretAccessKey set (they take precedence over the standard chain)"
                    } else {
                        "the standard chain (environment, profile, SSO, web identity, container, instance role)"
                    },
                    c.assume_role_arn
                        .as_deref()
                        .map(|a| format!("; assumes {a}"))
                        .unwrap_or_default(),
                    match (&c.assume_role_external_id, &c.sts_endpoint) {
                        (Some(_), Some(e)) => format!(" (external id set; STS at {e})"),
                        (Some(_), None) => " (external id set)".to_owned(),
                        (None, Some(e)) => format!(" (STS at {e})"),
                        (None, None) => String::new(),
                    }
                );
                for f in &cfg.flows {
                    println!(
                        "- {} -> {} (key {:?}, start {:?}, buffer {:?}, records over {} bytes: {:?}{})",
                        f.file_pattern,
                        f.destination_label(),
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
            let cfg = match load(&path) {
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
                let control = signals(path.clone());
                // shutdownTimeoutMillis (10 s by default, as the Kinesis Agent).
                let drain = cfg.shutdown_timeout;
                match kinesis_agent::run_controlled(cfg, None, control, drain, notify_ready).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        _ => usage(),
    }
}

/// `import-checkpoints [(--config | -c) FILE] [--force] [--dry-run] [SQLITE_DB]`.
fn import_checkpoints(args: &[String]) -> ExitCode {
    let mut config = PathBuf::from(kinesis_agent::config::DEFAULT_CONFIG_FILE);
    let mut db = None;
    let mut force = false;
    let mut dry_run = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(f) => config = PathBuf::from(f),
                None => return usage(),
            },
            "--force" => force = true,
            "--dry-run" => dry_run = true,
            s if s.starts_with('-') || db.is_some() => return usage(),
            s => db = Some(PathBuf::from(s)),
        }
    }
    let cfg = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let opts = import::Options {
        db: db.unwrap_or_else(|| PathBuf::from(import::DEFAULT_DB)),
        force,
        dry_run,
    };
    match import::run(&opts, &cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("import-checkpoints: {e}");
            ExitCode::FAILURE
        }
    }
}
