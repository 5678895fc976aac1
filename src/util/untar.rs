//! fastai's `untar_data`: download a dataset tarball into kestrel's cache once, check it,
//! and extract it next to it (`<home>/archive/<file>.tgz` → `<home>/data/<name>/`).

use super::download::{Checksum, download, kestrel_home};
use anyhow::{Context, bail};
use flate2::read::GzDecoder;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use tar::EntryType;

/// The Oxford-IIIT Pet dataset as fastai hosts it (fastai `URLs.PETS`): `images/` with
/// 7,390 photos named `<breed>_<n>.jpg`, and `annotations/`.
pub const PETS_URL: &str = "https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz";

/// The size and checksum fastai records for one of its tarballs
/// (`fastai/data/download_checks.py`); `None` for URLs it has no record of.
pub fn fastai_check(url: &str) -> Option<Checksum> {
    let (size, md5) = match url {
        PETS_URL => (811_706_944, "e4db5c768afd933bb91f5f594d7417a4"),
        _ => return None,
    };
    Some(Checksum::SizeMd5 {
        size,
        md5_first_mib: md5.to_string(),
    })
}

/// The Oxford-IIIT Pet folder for `kestrel pets` (the fastai book's `path =
/// untar_data(URLs.PETS)`): `data` (`--data DIR`) when given, else `$KESTREL_PETS_DIR`,
/// else the full dataset downloaded and extracted by [`untar_data`] (800 MB, once).
/// Photos are in `<folder>/images/` (or directly in a `--data` folder of photos).
///
/// Errors: `data` or `$KESTREL_PETS_DIR` is not a folder; the download fails — the
/// message then also points at `--data` and `KESTREL_PETS_DIR`.
pub fn pets_dir(data: Option<&Path>, progress: bool) -> crate::Result<PathBuf> {
    let given = data
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KESTREL_PETS_DIR").map(PathBuf::from));
    if let Some(dir) = given {
        if !dir.is_dir() {
            bail!("the pet photos folder {} does not exist", dir.display());
        }
        return Ok(dir);
    }
    untar_data(PETS_URL, progress).map_err(|e| {
        anyhow::anyhow!("{e:#}\nOr use photos you already have: kestrel pets --data DIR (or set KESTREL_PETS_DIR=DIR)")
    })
}

/// fastai `untar_data(url)`: downloads the `.tgz`/`.tar.gz` at `url` into
/// `kestrel_home()/archive/` (checked with [`fastai_check`]; progress bar, resumable) and
/// extracts it into `kestrel_home()/data/`. Returns the extracted folder, e.g.
/// `~/.cache/kestrel/data/oxford-iiit-pet`. When that folder exists nothing is downloaded.
///
/// Errors: as [`download`] and [`extract_tgz`].
pub fn untar_data(url: &str, progress: bool) -> crate::Result<PathBuf> {
    untar_data_in(&kestrel_home()?, url, fastai_check(url).as_ref(), progress)
}

/// [`untar_data`] with an explicit cache folder `home` and checksum.
pub fn untar_data_in(
    home: &Path,
    url: &str,
    check: Option<&Checksum>,
    progress: bool,
) -> crate::Result<PathBuf> {
    let file = url
        .rsplit('/')
        .next()
        .filter(|f| !f.is_empty())
        .with_context(|| format!("{url} names no file"))?;
    let data = home.join("data");
    let target = data.join(archive_stem(file));
    if target.is_dir() {
        return Ok(target);
    }
    let archive = download(url, &home.join("archive").join(file), check, progress)?;
    extract_tgz(&archive, &data)
}

/// The archive's name without `.tgz`, `.tar.gz` or `.tar`.
fn archive_stem(file: &str) -> &str {
    [".tgz", ".tar.gz", ".tar"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file)
}

/// Extracts the gzipped tar `archive` into `dest_dir`, atomically: into a temporary
/// folder inside `dest_dir`, then renamed. An archive with one top-level folder becomes
/// `dest_dir/<that folder>`; otherwise `dest_dir/<archive name without .tgz>`. An existing
/// target is kept as it is. Returns the target.
///
/// Errors: unreadable or damaged archive; an entry whose path or link target leaves the
/// target folder (absolute or with `..`), which is refused; more data than
/// [`max_extracted_bytes`] allows (a decompression bomb); nothing is left behind then.
pub fn extract_tgz(archive: &Path, dest_dir: &Path) -> crate::Result<PathBuf> {
    let size = std::fs::metadata(archive).with_context(|| format!("cannot open {}", archive.display()))?.len();
    extract_tgz_limited(archive, dest_dir, max_extracted_bytes(size))
}

/// The most bytes [`extract_tgz`] writes from an archive of `archive_bytes` bytes: 1 GiB or
/// 32 times the archive, whichever is more. Photos do not compress (Oxford-IIIT Pet:
/// 800 MB either way), while a gzip bomb inflates about 1000 times. Each entry counts its
/// 512-byte header too, so a bomb of millions of empty files is caught as well.
pub fn max_extracted_bytes(archive_bytes: u64) -> u64 {
    (archive_bytes.saturating_mul(32)).max(1 << 30)
}

/// [`extract_tgz`] with an explicit bound `max_bytes` on the extracted size (entry headers
/// of 512 bytes included).
///
/// Errors: as [`extract_tgz`].
pub fn extract_tgz_limited(archive: &Path, dest_dir: &Path, max_bytes: u64) -> crate::Result<PathBuf> {
    std::fs::create_dir_all(dest_dir)
        .with_context(|| format!("cannot create folder {}", dest_dir.display()))?;
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .map(archive_stem)
        .unwrap_or("data")
        .to_string();
    let tmp = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(dest_dir)
        .with_context(|| format!("cannot create a temporary folder in {}", dest_dir.display()))?;
    let out = tmp.path().join(&name);
    std::fs::create_dir(&out)?;
    let f = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(f));
    let damaged = |e: std::io::Error| {
        anyhow::anyhow!(
            "{} is damaged: {e} (delete it and run again)",
            archive.display()
        )
    };
    let mut total: u64 = 0;
    for entry in tar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        total = total.saturating_add(512).saturating_add(entry.header().size().unwrap_or(u64::MAX));
        if total > max_bytes {
            bail!(
                "{}: refusing to extract more than {max_bytes} bytes (a decompression bomb, or a damaged archive)",
                archive.display()
            );
        }
        let path = entry.path().map_err(damaged)?.into_owned();
        let kind = entry.header().entry_type();
        let link = entry.link_name().map_err(damaged)?.map(|l| l.into_owned());
        if !stays_inside(&path) || link.as_deref().is_some_and(|l| !stays_inside(l)) {
            bail!(
                "{}: refusing entry {} (its path or link leaves the target folder)",
                archive.display(),
                path.display()
            );
        }
        if matches!(
            kind,
            EntryType::Regular
                | EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Continuous
        ) {
            entry.unpack_in(&out).map_err(damaged)?;
        }
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let src = match entries.as_slice() {
        [one] if one.is_dir() => one.clone(),
        _ => out.clone(),
    };
    let target = dest_dir.join(src.file_name().expect("a named folder"));
    if !target.exists() {
        std::fs::rename(&src, &target)
            .with_context(|| format!("cannot move the extracted files to {}", target.display()))?;
    }
    Ok(target)
}

/// True for a relative path without `..` (so it cannot leave the folder it is joined to).
fn stays_inside(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}
