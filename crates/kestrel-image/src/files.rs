//! Finding image files in folders (fastai `get_image_files`).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// File extensions counted as images (compared case-insensitively), as fastai's
/// `image_extensions` restricted to the formats kestrel decodes.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff"];

/// The image files found under a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFiles {
    /// Paths of the images, sorted (byte order of the path), so every run sees the same order.
    pub files: Vec<PathBuf>,
    /// Number of other files that were ignored (e.g. the `.mat` files of the Oxford folder).
    pub n_ignored: usize,
    /// The ignored files, sorted (reported by `check-data` and the data warnings).
    pub ignored: Vec<PathBuf>,
}

/// True when `path` has one of [`IMAGE_EXTENSIONS`] (any letter case).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The image files in `path` (and its subfolders when `recurse`), sorted (fastai
/// `get_image_files(path, recurse=True)`). Hidden entries (names starting with `.`) are
/// skipped, as fastai's `get_files` does for folders. Symbolic links to folders are
/// followed, each folder read once: a link back to a folder above (a loop) or to one
/// already read adds nothing (fastai's `os.walk(followlinks=True)` loops until the
/// OS refuses, multiplying the photos).
///
/// Errors: `path` is not a readable folder, naming it.
pub fn get_image_files(path: &Path, recurse: bool) -> crate::Result<ImageFiles> {
    if !path.is_dir() {
        bail!("{} is not a folder (get_image_files needs the folder that holds the images)", path.display());
    }
    let mut out = ImageFiles { files: Vec::new(), n_ignored: 0, ignored: Vec::new() };
    walk(path, recurse, &mut out, &mut std::collections::HashSet::new())?;
    out.files.sort();
    out.ignored.sort();
    Ok(out)
}

fn walk(dir: &Path, recurse: bool, out: &mut ImageFiles, seen: &mut std::collections::HashSet<PathBuf>) -> crate::Result<()> {
    let real = std::fs::canonicalize(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    if !seen.insert(real) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read folder {}", dir.display()))?;
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let ft = entry.file_type().with_context(|| format!("cannot stat {}", p.display()))?;
        let is_dir = ft.is_dir() || (ft.is_symlink() && p.is_dir());
        if is_dir {
            if recurse {
                walk(&p, recurse, out, seen)?;
            }
        } else if is_image_file(&p) {
            out.files.push(p);
        } else {
            out.n_ignored += 1;
            out.ignored.push(p);
        }
    }
    Ok(())
}

/// Expands files and folders into image files, as `kestrel predict` and `kestrel-serve
/// predict` take them: folders are searched recursively (fastai `get_image_files`),
/// sorted; files given explicitly are kept whatever their extension.
///
/// Errors: a path that does not exist, naming it; an unreadable folder.
pub fn expand_image_paths(inputs: &[PathBuf]) -> crate::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            out.extend(get_image_files(p, true)?.files);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_loops_add_nothing() {
        let d = tempfile::tempdir().unwrap();
        let pug = d.path().join("pug");
        std::fs::create_dir(&pug).unwrap();
        std::fs::write(pug.join("a.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink("..", pug.join("up")).unwrap();
        std::os::unix::fs::symlink(".", pug.join("self")).unwrap();
        let f = get_image_files(d.path(), true).unwrap();
        assert_eq!(f.files, [pug.join("a.jpg")]);
    }
}
