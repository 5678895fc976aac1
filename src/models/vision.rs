//! The fastai learner model (`create_vision_model`): a pretrained body cut before its
//! pooling and classifier, followed by fastai's head ([`Head`]), with fastai's three
//! parameter groups.
//!
//! VarStore names (what checkpoints of this model contain):
//! - ResNet body under `0.` with fastai's indices: `0.0.weight` (conv1), `0.1.*` (bn1),
//!   `0.4.*`…`0.7.*` (layer1…layer4), e.g. `0.4.1.bn2.weight` — exactly fastai's
//!   `learn.model.state_dict()` names.
//! - EfficientNet-Lite body under `0.` with the `.pth` names: `0._conv_stem.weight`,
//!   `0._blocks.3._depthwise_conv.weight`, `0._conv_head.weight`, `0._bn1.*`.
//! - Head under `1.`: `1.2.*` (BatchNorm1d), `1.4.weight`, `1.6.*`, `1.8.weight`.
//!
//! Pretrained files keep their own names; [`pretrained_to_body_name`] maps them.
//!
//! Parameter groups (fastai splitters, for discriminative learning rates and freezing):
//! - ResNet, `_resnet_split`: group 0 = `body[:6]` (conv1, bn1, layer1, layer2), group 1 =
//!   `body[6:]` (layer3, layer4), group 2 = head.
//! - EfficientNet-Lite (kestrel's cut, the same place as ResNet's, where the feature map
//!   goes from stride 8 to stride 16): group 0 = stem + stages 1–3 (Lite0: `_blocks.0`–`4`),
//!   group 1 = stages 4–7 + `_conv_head` + `_bn1`, group 2 = head.

use std::collections::HashMap;

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::efficientnet::LiteBody;
use super::head::Head;
use super::meta::{Arch, Meta};
use super::resnet::{BodyNames, ResNetBody};
use super::weights::{LoadReport, load_into, map_names};
use super::{Model, ParamInfo};

#[derive(Debug)]
enum Body {
    Resnet(ResNetBody),
    Lite(LiteBody),
}

/// fastai's vision learner model: body + head, `Sequential(body, head)` as
/// `create_vision_model(arch, n_out)` builds it, carrying its [`Meta`].
#[derive(Debug)]
pub struct VisionModel {
    vs: nn::VarStore,
    body: Body,
    head: Head,
    meta: Meta,
    n_out: i64,
    /// Blocks of an EfficientNet-Lite body that belong to group 0.
    lite_cut: usize,
}

/// The VarStore name in [`VisionModel`] of a tensor of a pretrained file of `arch`
/// (torchvision names for ResNets, `.pth` names for EfficientNet-Lite), or `None` for the
/// pretrained classifier (`fc.*`, `_fc.*`), which the new head replaces.
/// `layer3.0.conv1.weight` → `0.6.0.conv1.weight`; `_bn0.bias` → `0._bn0.bias`.
pub fn pretrained_to_body_name(arch: Arch, name: &str) -> Option<String> {
    if arch.lite_variant().is_some() {
        return (!name.starts_with("_fc.")).then(|| format!("0.{name}"));
    }
    let (first, rest) = name.split_once('.')?;
    let idx = match first {
        "conv1" => 0,
        "bn1" => 1,
        "layer1" => 4,
        "layer2" => 5,
        "layer3" => 6,
        "layer4" => 7,
        "fc" => return None,
        _ => return Some(format!("0.{name}")), // reported as unexpected
    };
    Some(format!("0.{idx}.{rest}"))
}

impl VisionModel {
    /// `create_vision_model(arch, n_out, pretrained=False)` on `device`: the body
    /// initialised as torchvision (ResNet) or PyTorch's defaults (EfficientNet-Lite), the
    /// head as fastai. Load pretrained weights with [`VisionModel::load_pretrained_body`].
    /// Uses torch's global generator (`tch::manual_seed` makes it repeatable).
    ///
    /// Errors: `n_out` < 1.
    pub fn new(arch: Arch, n_out: i64, device: Device) -> crate::Result<VisionModel> {
        anyhow::ensure!(n_out >= 1, "a vision model needs at least 1 output, got n_out = {n_out}");
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (body, lite_cut) = match (arch.resnet_depth(), arch.lite_variant()) {
            (Some(depth), _) => (Body::Resnet(ResNetBody::new(&(&root / "0"), depth, BodyNames::Fastai)?), 0),
            (_, Some(v)) => {
                let body = LiteBody::new(&(&root / "0"), v)?;
                let cut = body.stage_ends()[2];
                (Body::Lite(body), cut)
            }
            _ => unreachable!("every Arch is a ResNet or an EfficientNet-Lite"),
        };
        let head = Head::new(&(&root / "1"), arch.body_features(), n_out);
        Ok(VisionModel { vs, body, head, meta: arch.meta(), n_out, lite_cut })
    }

    /// Loads a pretrained ImageNet network's weights (named as in its file: torchvision
    /// or `.pth` names, see [`pretrained_to_body_name`]; read them with
    /// [`crate::models::weights::load_state_dict`]) into the body; the file's classifier is
    /// skipped and the head keeps its fresh initialisation.
    ///
    /// Errors: a tensor with the wrong shape, a body variable the file lacks, or a name the
    /// body does not have (all listed); the model is unchanged then.
    pub fn load_pretrained_body(&mut self, tensors: Vec<(String, Tensor)>) -> crate::Result<LoadReport> {
        let arch = self.meta.arch;
        let mut tensors = map_names(tensors, |n| pretrained_to_body_name(arch, n));
        // The head keeps its values: load them onto themselves, so that the strict check
        // covers exactly the body.
        tensors.extend(self.vs.variables().into_iter().filter(|(n, _)| n.starts_with("1.")).map(|(n, t)| (n, t.copy())));
        load_into(&mut self.vs, tensors, true).map_err(|e| anyhow::anyhow!("pretrained weights do not fit {arch}: {e:#}"))
    }

    /// Architecture, input size and normalisation.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Number of outputs (classes).
    pub fn n_out(&self) -> i64 {
        self.n_out
    }

    /// The body's feature map (N, nf, ⌈H/32⌉, ⌈W/32⌉) for a normalised batch (N, 3, H, W).
    pub fn body_forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match &self.body {
            Body::Resnet(b) => b.forward_t(xs, train),
            Body::Lite(b) => b.forward_t(xs, train),
        }
    }

    /// The parameter group (0, 1 or 2) of the VarStore variable `name`.
    fn group_of(&self, name: &str) -> usize {
        let Some(rest) = name.strip_prefix("0.") else { return 2 };
        match &self.body {
            Body::Resnet(_) => {
                let idx: usize = rest.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                if idx < 6 { 0 } else { 1 }
            }
            Body::Lite(_) => match rest.strip_prefix("_blocks.") {
                Some(b) => {
                    let idx: usize = b.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    if idx < self.lite_cut { 0 } else { 1 }
                }
                None if rest.starts_with("_conv_stem") || rest.starts_with("_bn0") => 0,
                None => 1,
            },
        }
    }
}

/// The trainable variables of `vs` in creation order (the order PyTorch's `parameters()`
/// yields for the same network), with their names; BatchNorm running statistics excluded.
fn ordered_trainable(vs: &nn::VarStore) -> Vec<String> {
    let by_ptr: HashMap<usize, String> =
        vs.variables().into_iter().map(|(name, t)| (t.data_ptr() as usize, name)).collect();
    vs.trainable_variables().iter().filter_map(|t| by_ptr.get(&(t.data_ptr() as usize)).cloned()).collect()
}

impl Model for VisionModel {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.head.forward_t(&self.body_forward_t(xs, train), train)
    }

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    fn params(&self) -> Vec<ParamInfo> {
        let vars = self.vs.variables();
        ordered_trainable(&self.vs)
            .into_iter()
            .map(|name| {
                let module = name.rsplit_once('.').map_or("", |(m, _)| m);
                ParamInfo {
                    group: self.group_of(&name),
                    is_bn: vars.contains_key(&format!("{module}.running_mean")),
                    is_bias: name.ends_with(".bias"),
                    name,
                }
            })
            .collect()
    }

    fn n_groups(&self) -> usize {
        3
    }

    fn meta(&self) -> Option<Meta> {
        Some(self.meta)
    }
}
