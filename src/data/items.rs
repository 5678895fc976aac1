//! Finding the items (fastai `get_image_files`, shared with kestrel-serve in
//! [`kestrel_image::files`]) and reading them from a CSV table.

use anyhow::Context;
use std::path::{Path, PathBuf};

pub use kestrel_image::files::{IMAGE_EXTENSIONS, ImageFiles, get_image_files, is_image_file};

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
