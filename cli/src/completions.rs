//! `kinesis completions SHELL` and `kinesis man [COMMAND...]`: shell completion scripts and roff
//! man pages, generated from the clap definitions (`clap_complete`, `clap_mangen`), so they
//! never drift from the commands.
//!
//! ```text
//!   Cli::command() ─► clap_complete::generate(shell) ─► stdout   (source it, or save it where
//!                                                                  the shell looks)
//!   Cli::command() ─► the named subcommand ─► clap_mangen::Man ─► stdout (man -l -)
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// A subcommand's page instead of the top-level one, e.g. `streams split`.
    command: Vec<String>,
}

/// Writes the completion script for `args.shell` to stdout.
pub(crate) fn completions(
    args: &CompletionsArgs,
    mut cmd: clap::Command,
) -> anyhow::Result<ExitCode> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, name, &mut script);
    write_stdout(&script)
}

/// Writes the man page of `cmd` (or of the subcommand `args.command` names) to stdout.
pub(crate) fn man(args: &ManArgs, mut cmd: clap::Command) -> anyhow::Result<ExitCode> {
    // Built, so global options show on every subcommand's page.
    cmd.build();
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut page = cmd;
    let mut title = page.get_name().to_string();
    for name in &args.command {
        let sub = page
            .find_subcommand(name)
            .with_context(|| {
                let known: Vec<&str> = page
                    .get_subcommands()
                    .map(clap::Command::get_name)
                    .collect();
                format!(
                    "{title} has no subcommand {name:?} (its subcommands: {})",
                    known.join(", ")
                )
            })?
            .clone();
        title = format!("{title}-{name}");
        page = sub;
    }
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .title(title)
        .source(source)
        .render(&mut roff)
        .context("rendering the man page")?;
    write_stdout(&roff)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
