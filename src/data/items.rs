//! Finding the items (fastai `get_image_files`) and reading them from a CSV table.

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
/// skipped, as fastai's `get_files` does for folders.
///
/// Errors: `path` is not a readable folder, naming it.
pub fn get_image_files(path: &Path, recurse: bool) -> crate::Result<ImageFiles> {
    if !path.is_dir() {
        bail!("{} is not a folder (get_image_files needs the folder that holds the images)", path.display());
    }
    let mut out = ImageFiles { files: Vec::new(), n_ignored: 0, ignored: Vec::new() };
    walk(path, recurse, &mut out)?;
    out.files.sort();
    out.ignored.sort();
    Ok(out)
}

fn walk(dir: &Path, recurse: bool, out: &mut ImageFiles) -> crate::Result<()> {
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
                walk(&p, recurse, out)?;
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

/// A CSV file read as a table of strings (the source of fastai's `ColReader`).
#[derive(Debug, Clone)]
pub struct CsvTable {
    /// The file it was read from (for error messages).
    pub path: PathBuf,
    /// Column names from the header row.
    pub headers: Vec<String>,
    /// The data rows; every row has `headers.len()` cells.
    pub rows: Vec<Vec<String>>,
}

impl CsvTable {
    /// Reads `path` (comma-separated, first row = header).
    ///
    /// Errors: unreadable file, or a malformed row (naming its line).
    pub fn read(path: &Path) -> crate::Result<Self> {
        let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot open CSV file {}", path.display()))?;
        let headers: Vec<String> = rdr
            .headers()
            .with_context(|| format!("cannot read the header row of {}", path.display()))?
            .iter()
            .map(|s| s.trim().to_owned())
            .collect();
        let mut rows = Vec::new();
        for (i, rec) in rdr.records().enumerate() {
            let rec = rec.with_context(|| format!("{}: malformed row at line {}", path.display(), i + 2))?;
            rows.push(rec.iter().map(str::to_owned).collect());
        }
        Ok(Self { path: path.to_owned(), headers, rows })
    }

    /// The index of column `name`. Errors: no such column, listing the ones there are.
    pub fn col(&self, name: &str) -> crate::Result<usize> {
        self.headers.iter().position(|h| h == name).with_context(|| {
            format!("{} has no column '{name}' (its columns: {})", self.path.display(), self.headers.join(", "))
        })
    }

    /// The cells of column `name`, one per row.
    pub fn column(&self, name: &str) -> crate::Result<Vec<&str>> {
        let c = self.col(name)?;
        Ok(self.rows.iter().map(|r| r[c].as_str()).collect())
    }
}

/// The items a `DataBlock` works on: image paths, plus the CSV row each came from when
/// the items were read from a table.
#[derive(Debug, Clone)]
pub struct Items {
    /// Image paths.
    pub paths: Vec<PathBuf>,
    /// The table the items came from (row `i` belongs to `paths[i]`), if any.
    pub table: Option<CsvTable>,
    /// Files ignored while listing a folder (not images).
    pub n_ignored: usize,
    /// Those files, sorted.
    pub ignored: Vec<PathBuf>,
}

impl Items {
    /// The images of a folder ([`get_image_files`]).
    pub fn from_folder(path: &Path, recurse: bool) -> crate::Result<Self> {
        let f = get_image_files(path, recurse)?;
        Ok(Self { paths: f.files, table: None, n_ignored: f.n_ignored, ignored: f.ignored })
    }

    /// One item per row of `table`: the file named in column `fn_col`, as
    /// `pref/<cell><suffix>` (fastai `ColReader(fn_col, pref=..., suffix=...)`).
    /// A relative `pref` is taken relative to the CSV's folder.
    ///
    /// Errors: a missing column, naming the file and its columns.
    pub fn from_csv(table: CsvTable, fn_col: &str, pref: Option<&Path>, suffix: &str) -> crate::Result<Self> {
        let base = table.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let pref = match pref {
            Some(p) if p.is_absolute() => p.to_path_buf(),
            Some(p) => base.join(p),
            None => base,
        };
        let paths = table.column(fn_col)?.into_iter().map(|c| pref.join(format!("{c}{suffix}"))).collect();
        Ok(Self { paths, table: Some(table), n_ignored: 0, ignored: Vec::new() })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The table, or an error saying that `what` needs items read from a CSV.
    pub fn table(&self, what: &str) -> crate::Result<&CsvTable> {
        self.table.as_ref().with_context(|| format!("{what} needs items read from a CSV file (--csv), not from a folder"))
    }
}
