//! Folder layouts as users have them: `DIR/train/<class>/…` beside `DIR/valid/<class>/…`
//! (or `val/`, optionally `test/`) as torchvision's `ImageFolder`, Keras'
//! `image_dataset_from_directory`, Ultralytics and fastai's
//! `ImageDataLoaders.from_folder(train='train', valid='valid')` read them; the plain
//! `DIR/<class>/…` of `ImageFolder` (fastai `from_folder(valid_pct=…)`); or images directly
//! in `DIR` (labels from the file names, the book's pets).

use anyhow::{Context, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::items::{get_image_files, is_image_file};

/// How the images of a folder are organised ([`detect_layout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderLayout {
    /// `root/<train>/<class>/…` and `root/<valid>/<class>/…`; `root/<test>/…` when present is
    /// kept out of training (fastai `GrandparentSplitter(train, valid)` + `parent_label`).
    Split {
        /// The dataset folder.
        root: PathBuf,
        /// Name of the training folder (default `train`).
        train: String,
        /// Name of the validation folder (`valid`, else `val`).
        valid: String,
        /// Name of the test folder when there is one (`test` by default).
        test: Option<String>,
        /// The classes: the folder names under `train/`, sorted.
        classes: Vec<String>,
    },
    /// `root/<class>/…` (ImageFolder): the first folder below `root` is the label; the split
    /// is random (fastai `from_folder(valid_pct=…)`).
    Classes {
        /// The dataset folder.
        root: PathBuf,
        /// The class folder names, sorted.
        classes: Vec<String>,
    },
    /// Images directly in `root` (and maybe in subfolders too): no folder structure to read
    /// labels from; labels come from the file names (`--label-re`).
    Flat {
        /// The dataset folder.
        root: PathBuf,
    },
}

/// Folder names tried, in order, for the validation set when none is given (`valid`
/// as fastai, `val` as torchvision/Ultralytics).
pub const VALID_NAMES: [&str; 2] = ["valid", "val"];

/// Sorted names of the visible (not `.`-prefixed) subfolders of `dir`.
fn subfolders(dir: &Path) -> crate::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))? {
        let e = e.with_context(|| format!("cannot read folder {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && e.path().is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The image files directly in `dir` (not in subfolders; hidden files left out), sorted.
fn direct_images(dir: &Path) -> crate::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))? {
        let p = e.with_context(|| format!("cannot read folder {}", dir.display()))?.path();
        if p.is_file() && is_image_file(&p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The class folders of `dir` (its subfolders), each checked to hold at least one image
/// somewhere below it.
///
/// Errors: an empty class folder, naming it; no class folders at all.
fn class_folders(dir: &Path) -> crate::Result<Vec<String>> {
    let classes = subfolders(dir)?;
    if classes.is_empty() {
        bail!("{} has no class folders: expected one folder per class (e.g. {}/cat/, {}/dog/)", dir.display(), dir.display(), dir.display());
    }
    for c in &classes {
        let p = dir.join(c);
        if get_image_files(&p, true)?.files.is_empty() {
            bail!("class folder {} holds no images: add photos of '{c}' or remove the folder", p.display());
        }
    }
    Ok(classes)
}

/// Reads how `root` is organised.
///
/// - `root/<train>` exists (`train` defaults to `train`): the split layout; the
///   validation folder is `valid` (named, or `valid` then `val`); `test` (default `test`) is
///   noted when present. Every class folder of each set must hold images, and every class of
///   the validation and test folders must also be in the training folder (a test folder of
///   photos without class folders is allowed: it can be predicted, not interpreted).
/// - otherwise, `root` holds subfolders with images and no images itself: one class per
///   subfolder (each must hold images).
/// - otherwise, when `root` holds photos and no subfolder holds any: [`FolderLayout::Flat`].
///
/// Errors (each naming the folder): `root` not a folder; `--train`/`--valid` naming a
/// folder that is missing; a training folder without a validation folder beside it; an
/// empty class folder; a class only in the validation or test folder; photos directly in
/// `root` beside subfolders of photos (stray photos beside class folders: neither
/// labelling is safe to guess; `--label-re` or `--label-from` says which).
pub fn detect_layout(root: &Path, train: Option<&str>, valid: Option<&str>, test: Option<&str>) -> crate::Result<FolderLayout> {
    if !root.is_dir() {
        bail!("{} is not a folder", root.display());
    }
    let train_name = train.unwrap_or("train");
    if !root.join(train_name).is_dir() {
        if let Some(t) = train {
            bail!("--train {t}: there is no folder {}", root.join(t).display());
        }
        if let Some(v) = valid {
            bail!("--valid {v} needs a training folder beside it: there is no {}", root.join(train_name).display());
        }
        let subs = subfolders(root)?;
        let loose = direct_images(root)?;
        if !subs.is_empty() && loose.is_empty() {
            let classes = class_folders(root)?;
            return Ok(FolderLayout::Classes { root: root.to_path_buf(), classes });
        }
        let with_images: Vec<&String> =
            subs.iter().filter(|c| get_image_files(&root.join(c), true).is_ok_and(|f| !f.files.is_empty())).collect();
        if !with_images.is_empty() {
            // Photos beside folders of photos: class folders with strays, or a flat folder
            // with photos below it. Either guess labels some photos wrongly, without a word.
            let names: Vec<String> = with_images.iter().take(3).map(|c| format!("{c}/")).collect();
            bail!(
                "{} holds {} photo(s) directly (e.g. {}) beside {} folder(s) of photos ({}{}): move the photos into \
                 their class folders to label by folder, or give --label-re REGEX (or --label-from name-re/parent) \
                 to say how every photo is labelled",
                root.display(),
                loose.len(),
                loose[0].file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                with_images.len(),
                names.join(", "),
                if with_images.len() > 3 { ", …" } else { "" }
            );
        }
        return Ok(FolderLayout::Flat { root: root.to_path_buf() });
    }
    let valid_name = match valid {
        Some(v) if root.join(v).is_dir() => v.to_string(),
        Some(v) => bail!("--valid {v}: there is no folder {}", root.join(v).display()),
        None => match VALID_NAMES.iter().find(|n| root.join(n).is_dir()) {
            Some(n) => n.to_string(),
            None => bail!(
                "{} has a training folder '{train_name}' but no validation folder beside it (looked for {}): \
                 name it with --valid NAME",
                root.display(),
                VALID_NAMES.join(", ")
            ),
        },
    };
    let test_name = test.unwrap_or("test");
    let test = (root.join(test_name).is_dir() && test_name != valid_name && test_name != train_name).then(|| test_name.to_string());
    let classes = class_folders(&root.join(train_name))?;
    let known: BTreeSet<&str> = classes.iter().map(String::as_str).collect();
    for set in std::iter::once(&valid_name).chain(test.as_ref()) {
        let dir = root.join(set);
        if Some(set) == test.as_ref() && subfolders(&dir)?.is_empty() {
            continue; // an unlabelled test folder (photos only): for predict, not interpret
        }
        let set_classes = class_folders(&dir)?;
        let unknown: Vec<&str> = set_classes.iter().map(String::as_str).filter(|c| !known.contains(c)).collect();
        if !unknown.is_empty() {
            bail!(
                "{} class folder(s) of {} are not in the training folder {}, so the model can never learn them: {}",
                unknown.len(),
                dir.display(),
                root.join(train_name).display(),
                unknown.join(", ")
            );
        }
    }
    Ok(FolderLayout::Split { root: root.to_path_buf(), train: train_name.to_string(), valid: valid_name, test, classes })
}

impl FolderLayout {
    /// A one-line description for messages and reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Split { train, valid, test, classes, .. } => format!(
                "{train}/ and {valid}/ folders{} with {} classes",
                test.as_ref().map_or(String::new(), |t| format!(" ({t}/ kept out of training)")),
                classes.len()
            ),
            Self::Classes { classes, .. } => format!("one folder per class ({} classes), random split", classes.len()),
            Self::Flat { .. } => "images in one folder, labels from the file names".into(),
        }
    }
}
