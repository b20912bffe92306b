//! Python reference tools for interop tests: `aws-kinesis-agg` (the reference KPL aggregator)
//! and the AWS CLI, installed from PyPI into `target/test-venv`.
//!
//! `KINESIS_TEST_PYTHON` names a Python that already has `python/requirements.txt` installed;
//! otherwise the first call creates the venv (about 10 s, needs PyPI), and later calls reuse
//! it. A failure is an error, never a silent skip: these tests are the proof of interop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The requirements file the venv is built from.
pub const REQUIREMENTS: &str = include_str!("../python/requirements.txt");

/// The directory holding `kpl_agg.py`, the bridge to the reference aggregator.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

fn venv_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-venv")
}

/// A Python interpreter with the reference tools installed.
pub fn python() -> Result<PathBuf, String> {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("KINESIS_TEST_PYTHON") {
            return Ok(PathBuf::from(p));
        }
        let venv = venv_dir();
        let py = venv.join("bin/python");
        let marker = venv.join("requirements.installed");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(REQUIREMENTS) {
            return Ok(py);
        }
        build_venv(&venv, &marker)?;
        Ok(py)
    })
    .clone()
}

fn build_venv(venv: &Path, marker: &Path) -> Result<(), String> {
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let python3 = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python3).arg("-m").arg("venv").arg(venv))?;
    let req = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/requirements.txt");
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&req))?;
    std::fs::write(marker, REQUIREMENTS).map_err(|e| format!("{}: {e}", marker.display()))
}
