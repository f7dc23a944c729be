//! Key files in the data directory: created on first start of the embedded store (and by `dev`), readable by the
//! owner only.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::ServeConfig;

/// A fresh random 32-byte key in base64, the format of the JWT secret file.
fn generate_key_text() -> String {
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    STANDARD.encode(key)
}

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
    if config.jwks_file.is_none() {
        let path = config.jwt_secret_path();
        if ensure_key_file(&path)? {
            tracing::info!(path = %path.display(), "generated a new key file");
        }
    }
    let path = config.secrets_key_path();
    if ensure_key_file(&path)? {
        tracing::info!(path = %path.display(), "generated a new key file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/jwt-secret");
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
