//! Pretrained networks with their original ImageNet-1k classifier: the 1000 class names,
//! the reference preprocessing (short side resized to the model's resolution with
//! antialiased bilinear filtering, then a centre crop) and top-k predictions.

use std::path::Path;

use anyhow::Context;
use fast_image_resize::{self as fr, ResizeAlg, ResizeOptions, Resizer, images::Image};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use super::efficientnet::EfficientNetLite;
use super::meta::{Arch, Meta, Normalization};
use super::resnet::ResNet;
use super::weights::load_into;

const CLASSES: &str = include_str!("imagenet_classes.txt");

/// The 1000 ImageNet-1k class names in index order (torchvision's `categories`:
/// 0 = "tench", 151 = "Chihuahua", 281 = "tabby", …).
pub fn class_names() -> Vec<&'static str> {
    CLASSES.lines().collect()
}

/// ImageNet indices 151–268: the dog breeds.
pub const DOG_CLASSES: std::ops::RangeInclusive<i64> = 151..=268;
/// ImageNet indices 281–285: domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian).
pub const CAT_CLASSES: std::ops::RangeInclusive<i64> = 281..=285;

#[derive(Debug)]
enum Net {
    Resnet(ResNet),
    Lite(EfficientNetLite),
}

/// A network of `arch` with its 1000-class ImageNet classifier, parameter names as the
/// pretrained files (torchvision / `.pth`), always run in eval mode.
#[derive(Debug)]
pub struct ImagenetClassifier {
    vs: nn::VarStore,
    net: Net,
    meta: Meta,
}

impl ImagenetClassifier {
    /// A randomly initialised classifier; fill it with [`ImagenetClassifier::load`].
    pub fn new(arch: Arch, device: Device) -> crate::Result<ImagenetClassifier> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let net = match (arch.resnet_depth(), arch.lite_variant()) {
            (Some(d), _) => Net::Resnet(ResNet::new(&root, d, 1000)?),
            (_, Some(v)) => Net::Lite(EfficientNetLite::new(&root, v, 1000)?),
            _ => unreachable!("every Arch is a ResNet or an EfficientNet-Lite"),
        };
        Ok(ImagenetClassifier { vs, net, meta: arch.meta() })
    }

    /// Loads a full pretrained state dict (names as in the file; `num_batches_tracked`
    /// ignored). Errors: any missing, unexpected or mis-shaped tensor (all listed).
    pub fn load(&mut self, tensors: Vec<(String, Tensor)>) -> crate::Result<()> {
        load_into(&mut self.vs, tensors, true)
            .with_context(|| format!("loading ImageNet weights into {}", self.meta.arch))?;
        Ok(())
    }

    /// Architecture, input size and normalisation.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The variables, named as torchvision / the `.pth` files.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Logits (N, 1000) for a normalised `f32` batch (N, 3, H, W), eval mode, no autograd.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = xs.to_device(self.vs.device());
        tch::no_grad(|| match &self.net {
            Net::Resnet(m) => m.forward_t(&xs, false),
            Net::Lite(m) => m.forward_t(&xs, false),
        })
    }
}

/// Reads an image file as the data pipeline does ([`crate::data::decode::decode_rgb`]:
/// EXIF orientation, any colour mode, truncated files refused) and prepares it as
/// [`resize_center_crop`] does.
///
/// Errors: the file cannot be read or decoded (the message names it).
pub fn load_center_crop(path: &Path, size: u32) -> crate::Result<Tensor> {
    let img = crate::data::decode::decode_rgb(path)?;
    resize_center_crop(&img, size).with_context(|| format!("cannot resize image {}", path.display()))
}

/// Resizes an RGB image so its short side is `size` (antialiased bilinear, as
/// PIL/torchvision `Resize(size)`; the long side becomes ⌊size·long/short⌋) and crops the
/// centre `size`×`size` (torchvision `CenterCrop`). Returns `u8` (3, size, size), RGB.
///
/// Errors: the resizer fails (an empty image).
pub fn resize_center_crop(img: &image::RgbImage, size: u32) -> crate::Result<Tensor> {
    let (w, h) = img.dimensions();
    anyhow::ensure!(w > 0 && h > 0 && size > 0, "cannot resize a {w}x{h} image to {size}x{size}");
    let short = w.min(h) as u64;
    let scale = |long: u32| ((size as u64 * long as u64) / short).max(size as u64) as u32;
    let (nw, nh) = if w <= h { (size, scale(h)) } else { (scale(w), size) };
    let mut dst = Image::new(nw, nh, fr::PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(fr::FilterType::Bilinear));
    Resizer::new().resize(img, &mut dst, &opts)?;
    // torchvision CenterCrop: top = int(round((h - size) / 2)), Python's round-half-even.
    let offset = |n: u32| {
        let (d, half) = (n - size, (n - size) / 2);
        if d % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
    };
    let (left, top) = (offset(nw) as i64, offset(nh) as i64);
    let t = Tensor::from_slice(dst.buffer()).reshape([nh as i64, nw as i64, 3]);
    Ok(t.narrow(0, top, size as i64).narrow(1, left, size as i64).permute([2, 0, 1]).contiguous())
}

/// `u8` (N, 3, H, W) pixels → `f32` `(x/255 − mean)/std` per channel.
pub fn normalize(xs: &Tensor, norm: &Normalization) -> Tensor {
    let mean = Tensor::from_slice(&norm.mean).reshape([1, 3, 1, 1]).to_device(xs.device());
    let std = Tensor::from_slice(&norm.std).reshape([1, 3, 1, 1]).to_device(xs.device());
    (xs.to_kind(Kind::Float) / 255.0 - mean) / std
}

/// The `k` most probable classes of each row of `logits` (N, C): softmax probabilities
/// in decreasing order, as (class index, probability).
pub fn top_k(logits: &Tensor, k: i64) -> Vec<Vec<(i64, f64)>> {
    let probs = logits.to_kind(Kind::Float).softmax(-1, Kind::Float).to_device(Device::Cpu);
    let (vals, idx) = probs.topk(k.min(probs.size()[1]), -1, true, true);
    (0..probs.size()[0])
        .map(|r| {
            let v: Vec<f64> = Vec::try_from(vals.get(r).to_kind(Kind::Double)).unwrap_or_default();
            let i: Vec<i64> = Vec::try_from(idx.get(r)).unwrap_or_default();
            i.into_iter().zip(v).collect()
        })
        .collect()
}
