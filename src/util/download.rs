//! Downloads into kestrel's cache: resumable, with a progress bar, verified before use.
//!
//! Follows `torch.hub.download_url_to_file` (write to a partial file, check the SHA-256
//! prefix in torchvision's file names, then move into place) and fastai's
//! `fastdownload` (size + MD5 of the first MiB for its dataset tarballs).

use anyhow::{Context, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// kestrel's cache folder: `$KESTREL_HOME`, else `$XDG_CACHE_HOME/kestrel`, else
/// `~/.cache/kestrel` (where `scripts/setup.sh` puts its virtual environment too).
///
/// Errors: none of the three variables is set.
pub fn kestrel_home() -> crate::Result<PathBuf> {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("KESTREL_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("kestrel")))
        .or_else(|| var("HOME").map(|p| p.join(".cache/kestrel")))
        .context("cannot find kestrel's cache folder: set KESTREL_HOME (or XDG_CACHE_HOME or HOME)")
}

/// What a downloaded file must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-256 of the whole file as lowercase hex: all 64 digits, or a prefix of at least
    /// 8 (torchvision puts the first 8 in its file names, e.g. `resnet18-f37072fd.pth`).
    Sha256(String),
    /// fastai's record for its dataset tarballs: the file size in bytes and the MD5 (hex)
    /// of its first MiB (`fastdownload`'s `_check_present`).
    SizeMd5 { size: u64, md5_first_mib: String },
}

impl Checksum {
    /// The SHA-256 prefix in a torchvision-style file name (`NAME-<hex>.EXT`, torch.hub's
    /// `HASH_REGEX`), e.g. `f37072fd` for `.../resnet18-f37072fd.pth`; `None` without one.
    pub fn from_file_name(url: &str) -> Option<Checksum> {
        let name = url.rsplit('/').next()?;
        let stem = name.split('.').next()?;
        let hex = stem.rsplit_once('-')?.1;
        (hex.len() >= 8
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Checksum::Sha256(hex.to_string()))
    }

    /// Checks `path`; the error says what was expected and what was found.
    pub fn verify(&self, path: &Path) -> crate::Result<()> {
        let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        match self {
            Checksum::Sha256(want) => {
                if want.len() < 8 || want.len() > 64 {
                    bail!("SHA-256 {want:?} must have 8 to 64 hex digits");
                }
                let mut h = Sha256::new();
                std::io::copy(&mut f, &mut h)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let got = hex::encode(h.finalize());
                if !got.starts_with(&want.to_ascii_lowercase()) {
                    bail!("{} has SHA-256 {got}, expected {want}…", path.display());
                }
            }
            Checksum::SizeMd5 {
                size,
                md5_first_mib,
            } => {
                let len = f.metadata()?.len();
                let mut head = Vec::new();
                (&mut f).take(1 << 20).read_to_end(&mut head)?;
                let got = hex::encode(Md5::digest(&head));
                if len != *size || got != *md5_first_mib {
                    bail!(
                        "{} has {len} bytes and MD5 {got} (first MiB), expected {size} bytes and {md5_first_mib}",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checksum::Sha256(h) if h.len() < 64 => write!(f, "SHA-256 {h}…"),
            Checksum::Sha256(h) => write!(f, "SHA-256 {h}"),
            Checksum::SizeMd5 {
                size,
                md5_first_mib,
            } => write!(f, "size {size} bytes, MD5 of the first MiB {md5_first_mib}"),
        }
    }
}

/// Downloads `url` to `dest` unless `dest` exists, and returns `dest`.
///
/// Writes to `dest.part` first; an existing partial file is resumed with an HTTP `Range`
/// request (a server that ignores it gets a clean restart); an interrupted transfer is
/// retried up to 3 times. The file is checked against `check` before it is renamed to
/// `dest`; a file that fails the check is deleted. An existing `dest` is checked too (it
/// may have been put there by hand) and left alone when it fails. `progress` shows a
/// progress bar on stderr.
///
/// Errors: the server cannot be reached (the message names the URL and the path where
/// to put the file by hand), an HTTP error status, a failed check (says what to do),
/// repeated interruptions (the partial file is kept for the next call), file-system errors.
pub fn download(
    url: &str,
    dest: &Path,
    check: Option<&Checksum>,
    progress: bool,
) -> crate::Result<PathBuf> {
    if dest.is_file() {
        if let Some(c) = check {
            c.verify(dest).map_err(|e| {
                anyhow!(
                    "{e:#}; delete {} (or put a good copy of {url} there) and run again",
                    dest.display()
                )
            })?;
        }
        return Ok(dest.to_path_buf());
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut last_err = None;
    for _attempt in 0..4 {
        match fetch(&agent, url, &part, progress) {
            Ok(()) => {
                last_err = None;
                break;
            }
            Err(Fetch::Fatal(e)) => return Err(e.context(format!("cannot download {url}"))),
            Err(Fetch::Unreachable(e)) => bail!(
                "cannot download {url}: {e} (offline?). Download it by other means and put it at {}{}",
                dest.display(),
                check
                    .map(|c| format!(" (it must match {c})"))
                    .unwrap_or_default()
            ),
            Err(Fetch::Interrupted(e)) => {
                log::warn!("download of {url} interrupted ({e:#}); resuming");
                last_err = Some(e);
            }
        }
    }
    if let Some(e) = last_err {
        bail!(
            "the download of {url} was interrupted 4 times ({e:#}); what arrived is kept in {}: run again to resume",
            part.display()
        );
    }
    if let Some(c) = check
        && let Err(e) = c.verify(&part)
    {
        std::fs::remove_file(&part).ok();
        bail!(
            "the download of {url} is damaged: {e:#}. The file was deleted; run again to retry. If it fails again, \
             the file on the server changed: download it by hand, check it, and put it at {}",
            dest.display()
        );
    }
    std::fs::rename(&part, dest)
        .with_context(|| format!("cannot rename {} to {}", part.display(), dest.display()))?;
    Ok(dest.to_path_buf())
}

/// Why one transfer attempt failed.
enum Fetch {
    /// The server could not be reached at all.
    Unreachable(ureq::Error),
    /// The connection broke; what arrived is in the partial file.
    Interrupted(anyhow::Error),
    /// Retrying will not help (HTTP error status, local file-system error).
    Fatal(anyhow::Error),
}

/// One attempt: GET `url` (from the end of `part` when it exists) and append to `part`.
fn fetch(agent: &ureq::Agent, url: &str, part: &Path, progress: bool) -> Result<(), Fetch> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url).header("Accept-Encoding", "identity");
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::StatusCode(416)) if have > 0 => {
            // The partial file is not a prefix of the server's file: start again.
            std::fs::remove_file(part).map_err(|e| Fetch::Fatal(e.into()))?;
            return Err(Fetch::Interrupted(anyhow!(
                "the server refused to resume; restarting"
            )));
        }
        Err(ureq::Error::StatusCode(c)) => {
            return Err(Fetch::Fatal(anyhow!("the server answered HTTP {c}")));
        }
        Err(
            e @ (ureq::Error::Io(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::Timeout(_)),
        ) => {
            return Err(if have > 0 {
                Fetch::Interrupted(e.into())
            } else {
                Fetch::Unreachable(e)
            });
        }
        Err(e) => return Err(Fetch::Fatal(e.into())),
    };
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let resumed = resp.status() == 206
        && header("content-range").is_some_and(|r| {
            r.strip_prefix("bytes ")
                .is_some_and(|r| r.starts_with(&format!("{have}-")))
        });
    let start = if resumed { have } else { 0 };
    let total = header("content-length")
        .and_then(|l| l.parse::<u64>().ok())
        .map(|l| l + start);
    let mut file = OpenOptions::new()
        .create(true)
        .append(resumed)
        .write(true)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| Fetch::Fatal(anyhow!("cannot write {}: {e}", part.display())))?;
    let bar = progress_bar(progress, total, start, url);
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = start;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(Fetch::Interrupted(anyhow!("after {got} bytes: {e}"))),
        };
        file.write_all(&buf[..n])
            .map_err(|e| Fetch::Fatal(anyhow!("cannot write {}: {e}", part.display())))?;
        got += n as u64;
        bar.set_position(got);
    }
    file.sync_all()
        .map_err(|e| Fetch::Fatal(anyhow!("cannot write {}: {e}", part.display())))?;
    bar.finish_and_clear();
    match total {
        Some(t) if got < t => Err(Fetch::Interrupted(anyhow!(
            "the connection closed after {got} of {t} bytes"
        ))),
        _ => Ok(()),
    }
}

fn progress_bar(show: bool, total: Option<u64>, start: u64, url: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let bar = match total {
        Some(t) => ProgressBar::new(t).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner(),
    };
    bar.set_message(name);
    bar.set_position(start);
    bar
}
