//! Atomic file writes: nothing half-written is ever left under the final name.

use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: into a temporary file in the same folder, flushed
/// and synced, then renamed over `path`. The file gets the usual mode of a new file (0666
/// minus the umask: 0644 with the common umask 022).
///
/// Errors: the folder cannot be created or written, naming `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> crate::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`], but `fill` writes the content into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> crate::Result<()>,
) -> crate::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    // Mode 0666 minus the umask, as for any new file (tempfile's default 0600 would leave
    // a model that a service running as another user cannot read).
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    fill(tmp.as_file_mut()).with_context(|| format!("cannot write {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    tmp.persist(path).with_context(|| format!("cannot rename the temporary file to {}", path.display()))?;
    Ok(())
}
