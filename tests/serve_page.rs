//! kestrel-serve's drag-and-drop page in real headless Chromium (Debian's `chromium`,
//! driven by playwright-core from npm: scripts/deploy/browser/drop_photos.mjs): three
//! photos dropped on the page give three result cards whose labels are the API's. The
//! screenshot is written to $CARGO_TARGET_DIR/serve_page.png. Skips (saying why) when
//! node, playwright-core or Chromium is missing, except with CI=true, where .ci/run
//! installs them and their absence fails the test.

mod common;

use common::{Server, photo, request};
use kestrel_serve::http::HttpOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

fn missing(what: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and {what}");
    eprintln!("skipped: drop_three_photos_on_the_page: {what}");
}

#[test]
fn drop_three_photos_on_the_page() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deploy/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).is_file() {
        return missing(&format!("no Chromium at {chromium} (apt-get install chromium)"));
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return missing("no playwright-core (npm install --prefix scripts/deploy/browser)");
    }
    let Some(server) = Server::start(HttpOptions::default()) else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Three photos, with different labels where the (random) model gives them.
    let label = |body: &[u8]| request(server.port, "POST", "/predict", Some("image/jpeg"), body).json()["predictions"][0]["label"].as_str().unwrap().to_owned();
    let mut chosen: Vec<(Vec<u8>, String)> = Vec::new();
    for seed in 0..60u32 {
        let body = photo(seed * 37);
        let l = label(&body);
        if chosen.len() < 3 && (!chosen.iter().any(|(_, c)| *c == l) || seed >= 50) {
            chosen.push((body, l));
        }
    }
    let photos: Vec<PathBuf> = chosen
        .iter()
        .enumerate()
        .map(|(i, (body, _))| {
            let p = tmp.path().join(format!("photo{i}.jpg"));
            std::fs::write(&p, body).unwrap();
            p
        })
        .collect();
    let api: Vec<String> = chosen.into_iter().map(|(_, l)| l).collect();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| tmp.path().to_owned());
    let shot = target.join("serve_page.png");
    let out = Command::new("node")
        .arg(browser_dir.join("drop_photos.mjs"))
        .arg(format!("http://127.0.0.1:{}/", server.port))
        .arg(&shot)
        .args(&photos)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser run failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let cards = result["cards"].as_array().unwrap();
    assert_eq!(cards.len(), 3, "{result}");
    for (card, (p, label)) in cards.iter().zip(photos.iter().zip(&api)) {
        assert_eq!(card["name"], p.file_name().unwrap().to_str().unwrap(), "{result}");
        assert_eq!(card["label"].as_str(), Some(label.as_str()), "card {card} vs the API's {label}");
    }
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000);
    println!("3 cards with the API's labels {api:?}; screenshot {}", shot.display());
}
