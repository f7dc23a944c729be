//! Files the agent writes: whole or not at all (written to a temporary name, synced, renamed into place), and,
//! when private, readable by their owner only from the moment they exist.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes `contents` to `path` atomically; with `private`, the file is mode 0600.
pub fn write_atomically(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    let temporary = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    #[cfg(unix)]
    if private {
        // a temporary left by an earlier run keeps its mode: set it before anything is written
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
