//! Data as users have it: folder layouts (train/valid, train/val, test/, nested class
//! folders, plain class folders, --train/--valid names, --valid-list), their errors, the
//! stray non-image file, class-balanced sampling and the class-imbalance report — on
//! synthetic folders made here.

use clap::Parser;
use image::{Rgb, RgbImage};
use kestrel::cli::data::DataOpts;
use kestrel::data::BatchSource;
use kestrel::data::check::check_data;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Parser)]
struct W {
    #[command(flatten)]
    data: DataOpts,
}

fn opts(args: &[&str]) -> DataOpts {
    let mut argv = vec!["kestrel", "--presize", "16", "--bs", "4", "--workers", "1", "--device", "cpu"];
    argv.extend_from_slice(args);
    W::try_parse_from(argv).unwrap().data
}

/// `n` 12×12 PNGs named `image_<k>.png` in `dir` (the same names in every class folder,
/// as Caltech-101's).
fn photos(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    // Each folder its own colour: the same photo in two class folders is a label conflict.
    let tint = dir.to_string_lossy().bytes().fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    for k in 0..n {
        RgbImage::from_pixel(12, 12, Rgb([k as u8 * 20, 90, tint])).save(dir.join(format!("image_{k:04}.png"))).unwrap();
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap().display().to_string()
}

/// Labels of the training and validation items, as (relative path, label) sorted.
fn sets(o: &DataOpts, root: &Path) -> (Vec<(String, String)>, Vec<(String, String)>, String) {
    let block = o.to_datablock().unwrap();
    let ds = block.datasets().unwrap();
    let pick = |idx: &[usize]| {
        let mut v: Vec<_> = idx.iter().map(|&i| (rel(root, &ds.items.paths[i]), ds.labels[i].clone())).collect();
        v.sort();
        v
    };
    (pick(&ds.train), pick(&ds.valid), block.splitter.describe())
}

fn err(o: &DataOpts) -> String {
    format!("{:#}", o.to_datablock().and_then(|b| b.datasets()).unwrap_err())
}

#[test]
fn train_valid_folders_give_parent_labels_and_grandparent_split() {
    for valid in ["valid", "val"] {
        let d = tempfile::tempdir().unwrap();
        for c in ["cat", "dog"] {
            photos(&d.path().join("train").join(c), 3);
            photos(&d.path().join(valid).join(c), 2);
        }
        let (train, va, split) = sets(&opts(&["--folder", d.path().to_str().unwrap()]), d.path());
        assert!(split.contains("GrandparentSplitter('train', '{valid}')".replace("{valid}", valid).as_str()), "{split}");
        assert_eq!(train.len(), 6);
        assert_eq!(va.len(), 4);
        assert_eq!(train[0], ("train/cat/image_0000.png".into(), "cat".into()));
        assert_eq!(va[3], (format!("{valid}/dog/image_0001.png"), "dog".into()));
    }
}

#[test]
fn test_folder_is_kept_out_and_can_be_interpreted() {
    let d = tempfile::tempdir().unwrap();
    for c in ["cat", "dog"] {
        photos(&d.path().join("train").join(c), 3);
        photos(&d.path().join("valid").join(c), 2);
        photos(&d.path().join("test").join(c), 1);
    }
    let o = opts(&["--folder", d.path().to_str().unwrap()]);
    let (train, va, _) = sets(&o, d.path());
    assert!(train.iter().chain(&va).all(|(p, _)| !p.starts_with("test/")), "test/ photos are neither trained nor validated on");
    let (paths, labels) = o.test_set().unwrap();
    let got: Vec<_> = paths.iter().map(|p| rel(d.path(), p)).zip(labels).collect();
    assert_eq!(got, [("test/cat/image_0000.png".to_string(), "cat".to_string()), ("test/dog/image_0000.png".into(), "dog".into())]);
    // A folder without test/ says so.
    let e = format!("{:#}", opts(&["--folder", d.path().join("train").to_str().unwrap()]).test_set().unwrap_err());
    assert!(e.contains("--on-test needs"), "{e}");
}

#[test]
fn photos_nested_deeper_keep_their_class_folder() {
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("train/cat/2019/holiday"), 2);
    photos(&d.path().join("train/dog"), 2);
    photos(&d.path().join("valid/cat/x"), 1);
    photos(&d.path().join("valid/dog"), 1);
    let (train, va, _) = sets(&opts(&["--folder", d.path().to_str().unwrap()]), d.path());
    assert_eq!(train[0], ("train/cat/2019/holiday/image_0000.png".into(), "cat".into()));
    assert_eq!(va[0], ("valid/cat/x/image_0000.png".into(), "cat".into()));
    // The plain class-folder layout too.
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("cat/a/b"), 5);
    photos(&d.path().join("dog"), 5);
    let (train, va, split) = sets(&opts(&["--folder", d.path().to_str().unwrap(), "--valid-pct", "0.2"]), d.path());
    assert!(split.contains("RandomSplitter(valid_pct=0.2"), "{split}");
    assert_eq!((train.len(), va.len()), (8, 2));
    assert!(train.iter().chain(&va).all(|(p, l)| p.starts_with(&format!("{l}/"))), "{train:?}");
}

#[test]
fn train_and_valid_names_can_be_given() {
    let d = tempfile::tempdir().unwrap();
    for c in ["cat", "dog"] {
        photos(&d.path().join("training").join(c), 3);
        photos(&d.path().join("holdout").join(c), 1);
    }
    let root = d.path().to_str().unwrap();
    let (train, va, _) = sets(&opts(&["--folder", root, "--train", "training", "--valid", "holdout"]), d.path());
    assert_eq!((train.len(), va.len()), (6, 2));
    let e = err(&opts(&["--folder", root, "--train", "training", "--valid", "validation"]));
    assert!(e.contains("--valid validation") && e.contains("no folder"), "{e}");
    let e = err(&opts(&["--folder", root, "--train", "nope"]));
    assert!(e.contains("--train nope"), "{e}");
    // train/ without a validation folder beside it.
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("train/cat"), 2);
    let e = err(&opts(&["--folder", d.path().to_str().unwrap()]));
    assert!(e.contains("no validation folder") && e.contains("--valid NAME"), "{e}");
}

#[test]
fn layout_errors_name_the_folder_and_class() {
    // An empty class folder.
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("train/cat"), 2);
    photos(&d.path().join("valid/cat"), 1);
    std::fs::create_dir_all(d.path().join("train/dog")).unwrap();
    let e = err(&opts(&["--folder", d.path().to_str().unwrap()]));
    assert!(e.contains("train/dog holds no images"), "{e}");
    // A class only in valid/.
    photos(&d.path().join("train/dog"), 2);
    photos(&d.path().join("valid/bird"), 1);
    let e = err(&opts(&["--folder", d.path().to_str().unwrap()]));
    assert!(e.contains("not in the training folder") && e.ends_with(": bird"), "{e}");
    // A class only in test/.
    std::fs::remove_dir_all(d.path().join("valid/bird")).unwrap();
    photos(&d.path().join("test/fish"), 1);
    let e = err(&opts(&["--folder", d.path().to_str().unwrap()]));
    assert!(e.contains("test") && e.ends_with(": fish"), "{e}");
    // An empty class folder of the plain layout.
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("cat"), 2);
    std::fs::create_dir_all(d.path().join("dog")).unwrap();
    let e = err(&opts(&["--folder", d.path().to_str().unwrap()]));
    assert!(e.contains("dog holds no images"), "{e}");
    // An empty label cell of a CSV.
    let d = tempfile::tempdir().unwrap();
    photos(d.path(), 3);
    std::fs::write(d.path().join("l.csv"), "fname,label\nimage_0000.png,a\nimage_0001.png, \nimage_0002.png,b\n").unwrap();
    let e = err(&opts(&["--csv", d.path().join("l.csv").to_str().unwrap()]));
    assert!(e.contains("empty 'label' cell at line 3"), "{e}");
}

#[test]
fn valid_list_tells_same_names_in_different_classes_apart() {
    let d = tempfile::tempdir().unwrap();
    for c in ["accordion", "anchor"] {
        photos(&d.path().join(c), 4);
    }
    let list = d.path().join("test.txt");
    std::fs::write(&list, "accordion/image_0001.jpg\naccordion/image_0001.png\nanchor/image_0003.png\n").unwrap();
    let (train, va, split) = sets(&opts(&["--folder", d.path().to_str().unwrap(), "--valid-list", list.to_str().unwrap()]), d.path());
    assert!(split.contains("FileSplitter"), "{split}");
    let names: Vec<&str> = va.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["accordion/image_0001.png", "anchor/image_0003.png"]);
    assert_eq!(train.len(), 6);
}

#[test]
fn stray_file_is_reported_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("cat"), 5);
    photos(&d.path().join("dog"), 5);
    std::fs::write(d.path().join("dog/tmp"), b"not an image").unwrap();
    let o = opts(&["--folder", d.path().to_str().unwrap()]);
    let ds = o.to_datablock().unwrap().datasets().unwrap();
    assert_eq!(ds.items.len(), 10);
    assert!(ds.warnings[0].contains("1 files") && ds.warnings[0].contains("dog/tmp"), "{:?}", ds.warnings);
    let r = check_data(&o.to_datablock().unwrap(), 8).unwrap();
    assert_eq!(r.n_problems(), 0);
    let text = r.to_string();
    assert!(text.contains("not images, left out (1)") && text.contains("dog/tmp"), "{text}");
}

#[test]
fn a_single_class_is_an_error_naming_the_labeller() {
    // Class folders labelled by file name: the regex labels everything `image` — one
    // class, which must not train.
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("cat"), 5);
    photos(&d.path().join("dog"), 5);
    let e = err(&opts(&["--folder", d.path().to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$"]));
    assert!(e.contains("only 1 class ('image')") && e.contains("at least 2") && e.contains("RegexLabeller"), "{e}");
    assert!(e.contains("labelled by folder without --label-re"), "{e}");
    // check-data reports what fine-tune will refuse.
    let o = opts(&["--folder", d.path().to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$"]);
    let r = check_data(&o.to_datablock().unwrap(), 8).unwrap();
    assert_eq!(r.n_problems(), 1);
    assert!(r.to_string().contains("only 1 class ('image') in the training set"), "{r}");
}

#[test]
fn a_stray_photo_beside_class_folders_is_refused_naming_it() {
    // Guessing either way labels photos wrongly without a word: by folder, the stray photo
    // has no class; by file name, the class folders are ignored.
    let d = tempfile::tempdir().unwrap();
    photos(&d.path().join("cat"), 5);
    photos(&d.path().join("dog"), 5);
    RgbImage::from_pixel(12, 12, Rgb([1, 2, 3])).save(d.path().join("pug_0099.png")).unwrap();
    let e = err(&opts(&["--folder", d.path().to_str().unwrap()]));
    assert!(e.contains("1 photo(s) directly (e.g. pug_0099.png)") && e.contains("2 folder(s) of photos (cat/, dog/)"), "{e}");
    assert!(e.contains("--label-re"), "{e}");
    // Once moved into a class folder, the folders are the classes.
    std::fs::rename(d.path().join("pug_0099.png"), d.path().join("dog/pug_0099.png")).unwrap();
    let ds = opts(&["--folder", d.path().to_str().unwrap()]).to_datablock().unwrap().datasets().unwrap();
    assert_eq!(ds.vocab.items(), ["cat", "dog"]);
}

/// A 20:1 folder: 400 `big` photos, 20 `small` ones.
fn imbalanced(dir: &Path) {
    photos(&dir.join("big"), 400);
    photos(&dir.join("small"), 20);
}

#[test]
fn check_data_reports_the_class_ratio_and_warns_above_10x() {
    let d = tempfile::tempdir().unwrap();
    imbalanced(d.path());
    let r = check_data(&opts(&["--folder", d.path().to_str().unwrap()]).to_datablock().unwrap(), 8).unwrap();
    let ((big, nb), (small, ns), ratio) = r.imbalance().unwrap();
    assert_eq!((big.as_str(), nb, small.as_str(), ns), ("big", 400, "small", 20));
    assert_eq!(ratio, 20.0);
    let text = r.to_string();
    assert!(text.contains("ratio 20.0×") && text.contains("imbalanced") && text.contains("--balance"), "{text}");
}

#[test]
fn balance_makes_per_epoch_class_counts_about_equal() {
    let d = tempfile::tempdir().unwrap();
    imbalanced(d.path());
    let root = d.path().to_str().unwrap();
    let count = |balance: bool| -> Vec<BTreeMap<i64, usize>> {
        let mut args = vec!["--folder", root, "--valid-pct", "0.1", "--seed", "3"];
        if balance { args.push("--balance"); }
        let dls = opts(&args).to_datablock().unwrap().image_dataloaders().unwrap();
        assert_ne!(dls.train.order(0), dls.train.order(1), "every epoch draws anew");
        // The TTA loader over the validation set (fine-tune's default after training)
        // takes the training transforms but not the training items' weights: every
        // validation photo once, in order.
        let aug = dls.valid.augmented_like(&dls.train).unwrap();
        assert_eq!(aug.n_items(), dls.valid.n_items());
        let ys: Vec<i64> = aug.batches(0).flat_map(|b| Vec::<i64>::try_from(b.unwrap().y).unwrap()).collect();
        assert_eq!(ys, dls.valid.targets());
        (0..3u64).map(|epoch| {
            let mut c = BTreeMap::new();
            for b in dls.train.batches(epoch) {
                for y in Vec::<i64>::try_from(b.unwrap().y).unwrap() { *c.entry(y).or_default() += 1; }
            }
            c
        }).collect()
    };
    let plain = count(false);
    let balanced = count(true);
    for (e, (p, b)) in plain.iter().zip(&balanced).enumerate() {
        println!("epoch {e}: class counts of the training batches (0 = big, 1 = small): plain {p:?}, --balance {b:?}");
        let n: usize = b.values().sum();
        for &k in &[0i64, 1] {
            let got = b.get(&k).copied().unwrap_or(0) as f64;
            let equal = n as f64 / 2.0;
            assert!((got - equal).abs() <= 0.2 * equal, "epoch {e}: class {k} drawn {got} times of {n}: not within 20 % of {equal}");
        }
        assert!(p[&1] * 10 < p[&0], "without --balance the small class stays small: {p:?}");
    }
}
