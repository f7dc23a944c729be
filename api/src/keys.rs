//! Key files in the data directory: created on first start of the embedded store (and by `dev`), readable by the
//! owner only.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::cipher::generate_key_text;
use crate::config::ServeConfig;

/// Creates `path` with a fresh random key unless it exists. Returns whether it created one.
pub fn ensure_key_file(path: &Path) -> anyhow::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{}", generate_key_text()).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Prepares the data directory and, when `generate` is set, any key file the configuration leaves to it.
pub fn prepare(config: &ServeConfig, generate: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    if !generate {
        return Ok(());
    }
    let mut files = vec![config.secret_key_path()];
    if config.jwks_file.is_none() {
        files.push(config.jwt_secret_path());
    }
    for path in files {
        if ensure_key_file(&path)? {
            tracing::info!(path = %path.display(), "generated a new key file");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/secret.key");
        assert!(ensure_key_file(&path).unwrap());
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(!ensure_key_file(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
