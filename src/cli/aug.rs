//! The batch-augmentation options shared by every subcommand that builds training batches
//! (`data summary`, `data show-batch`, `fine-tune`): fastai's `aug_transforms` arguments
//! under their fastai names, so the augmentation previewed is the one trained with.

use crate::transforms::{AugTransforms, aug_transforms};
use clap::Args;

/// fastai `aug_transforms(size, min_scale, do_flip, flip_vert, max_rotate, min_zoom,
/// max_zoom, max_warp, max_lighting, p_affine, p_lighting)` as command-line options.
///
/// Defaults are fastai's (`aug_transforms()` in `vision/augment.py`) except `min_scale`:
/// 0.75, the book's recipe (`aug_transforms(size=224, min_scale=0.75)`, chapter 5) that
/// `fine-tune` has always used; fastai's own default is 1.0 (no random crop), which
/// `--min-scale 1` gives.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct AugOpts {
    /// Side of the square batches after the batch transforms, pixels (fastai
    /// `aug_transforms(size=...)`).
    #[arg(long, default_value_t = 224, value_name = "PX")]
    pub size: i64,
    /// Smallest fraction of the image area the random-resized crop keeps, in (0, 1]
    /// (fastai `min_scale`; the book's 0.75, fastai's default is 1.0 = no crop).
    #[arg(long, default_value_t = 0.75, value_name = "FRAC")]
    pub min_scale: f64,
    /// Random horizontal flip with probability 0.5 (fastai `do_flip=True`); `--do-flip false`
    /// turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub do_flip: bool,
    /// With flips on: a random dihedral transform (also vertical flips and 90° turns)
    /// instead of the horizontal flip (fastai `flip_vert=False`), for photos without an up
    /// (satellite, microscopy).
    #[arg(long)]
    pub flip_vert: bool,
    /// Largest rotation, degrees (uniform in ±max_rotate; fastai 10.0).
    #[arg(long, default_value_t = 10.0, value_name = "DEG")]
    pub max_rotate: f64,
    /// Smallest zoom factor (fastai 1.0; below 1 also zooms out).
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub min_zoom: f64,
    /// Largest zoom factor (zoom uniform in [min_zoom, max_zoom]; fastai 1.1).
    #[arg(long, default_value_t = 1.1, value_name = "F")]
    pub max_zoom: f64,
    /// Largest perspective warp, in half-image units per axis (fastai 0.2).
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub max_warp: f64,
    /// Largest change of brightness and contrast, in [0, 1) (fastai 0.2).
    #[arg(long, default_value_t = 0.2, value_name = "F")]
    pub max_lighting: f64,
    /// Probability of each affine transform (rotate, zoom, warp) per image (fastai 0.75).
    #[arg(long, default_value_t = 0.75, value_name = "P")]
    pub p_affine: f64,
    /// Probability of each lighting change (brightness, contrast) per image (fastai 0.75).
    #[arg(long, default_value_t = 0.75, value_name = "P")]
    pub p_lighting: f64,
}

impl Default for AugOpts {
    /// The command-line defaults: fastai's `aug_transforms(size=224, min_scale=0.75)`.
    fn default() -> Self {
        let a = aug_transforms();
        AugOpts {
            size: 224,
            min_scale: 0.75,
            do_flip: a.do_flip,
            flip_vert: a.flip_vert,
            max_rotate: a.max_rotate,
            min_zoom: a.min_zoom,
            max_zoom: a.max_zoom,
            max_warp: a.max_warp,
            max_lighting: a.max_lighting,
            p_affine: a.p_affine,
            p_lighting: a.p_lighting,
        }
    }
}

impl AugOpts {
    /// Checks that the batch transforms' `--size` fits in the presized items.
    ///
    /// Errors: `--size` larger than `presize`, naming both and the fix.
    pub fn check_presize(&self, presize: u32) -> crate::Result<()> {
        anyhow::ensure!(
            self.size <= i64::from(presize),
            "--size {} is larger than --presize {presize}: the batch transforms take size × size pixels out of the \
             presized items; give --presize {} or more (the book: Resize(460), then aug_transforms(size=224))",
            self.size,
            self.size
        );
        Ok(())
    }

    /// The [`AugTransforms`] these options describe (interpolation, padding and the rest at
    /// fastai's defaults).
    ///
    /// Errors: a value out of range, naming the option and the value (e.g. `--min-scale 0`,
    /// `--p-affine 1.5`, `--max-zoom` below `--min-zoom`).
    pub fn to_aug(&self) -> crate::Result<AugTransforms> {
        let a = AugTransforms {
            size: Some(self.size),
            min_scale: self.min_scale,
            do_flip: self.do_flip,
            flip_vert: self.flip_vert,
            max_rotate: self.max_rotate,
            min_zoom: self.min_zoom,
            max_zoom: self.max_zoom,
            max_warp: self.max_warp,
            max_lighting: self.max_lighting,
            p_affine: self.p_affine,
            p_lighting: self.p_lighting,
            ..aug_transforms()
        };
        a.validate().map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("aug_transforms: ", "augmentation option --").replace('_', "-")))?;
        Ok(a)
    }

    /// One line for reports: `size 224, min_scale 0.75, flip, rotate ±10°, …`.
    pub fn describe(&self) -> String {
        let flip = match (self.do_flip, self.flip_vert) {
            (false, _) => "no flip",
            (true, false) => "horizontal flip",
            (true, true) => "dihedral flips",
        };
        format!(
            "size {}, min_scale {}, {flip}, max_rotate {}, zoom {}–{}, max_warp {}, max_lighting {}, p_affine {}, p_lighting {}",
            self.size, self.min_scale, self.max_rotate, self.min_zoom, self.max_zoom, self.max_warp, self.max_lighting,
            self.p_affine, self.p_lighting
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct W {
        #[command(flatten)]
        aug: AugOpts,
    }

    #[test]
    fn defaults_are_fastais_with_the_books_min_scale() {
        let w = W::try_parse_from(["k"]).unwrap();
        assert_eq!(w.aug, AugOpts::default());
        let a = w.aug.to_aug().unwrap();
        assert_eq!(a, aug_transforms().with_size(224).with_min_scale(0.75));
    }

    #[test]
    fn every_option_reaches_aug_transforms() {
        let w = W::try_parse_from([
            "k", "--size", "128", "--min-scale", "0.5", "--do-flip", "false", "--flip-vert", "--max-rotate", "20",
            "--min-zoom", "0.9", "--max-zoom", "1.3", "--max-warp", "0.1", "--max-lighting", "0.4", "--p-affine", "0.5",
            "--p-lighting", "0.25",
        ])
        .unwrap();
        let a = w.aug.to_aug().unwrap();
        let want = aug_transforms().with_size(128).with_min_scale(0.5).with_do_flip(false).with_flip_vert(true)
            .with_max_rotate(20.0).with_min_zoom(0.9).with_max_zoom(1.3).with_max_warp(0.1).with_max_lighting(0.4)
            .with_p_affine(0.5).with_p_lighting(0.25);
        assert_eq!(a, want);
    }

    #[test]
    fn every_subcommand_parses_its_flattened_options() {
        // clap's own consistency checks: no two options of a subcommand share a name, so
        // DataOpts + AugOpts + each subcommand's options fit together.
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
        for argv in [
            &["kestrel", "data", "show-batch", "--folder", "d", "--out", "x.png", "--valid", "val", "--valid-batch", "--size", "64"][..],
            &["kestrel", "data", "summary", "--folder", "d", "--max-rotate", "5", "--no-aug"],
            &["kestrel", "fine-tune", "--folder", "d", "--train", "tr", "--valid", "va", "--min-scale", "1", "--thresh", "auto"],
            &["kestrel", "interpret", "m", "--folder", "d", "--on-test", "--out", "o"],
            &["kestrel", "check-data", "--folder", "d", "--valid-list", "t.txt", "--balance", "--label-delim", " ", "--csv", "c"],
        ] {
            crate::cli::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    #[test]
    fn out_of_range_values_name_the_option() {
        let w = W::try_parse_from(["k", "--p-affine", "1.5"]).unwrap();
        let e = w.aug.to_aug().unwrap_err().to_string();
        assert!(e.contains("--p-affine") && e.contains("1.5"), "{e}");
    }
}
