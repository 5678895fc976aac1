//! Vision models (ResNet, EfficientNet-Lite), the fastai head, weight files and the
//! model zoo.

pub mod efficientnet;
pub mod head;
pub mod imagenet;
mod layers;
mod lean;
pub mod meta;
pub mod resnet;
mod simple_cnn;
pub mod vision;
pub mod weights;
pub mod zoo;

pub use simple_cnn::SimpleCnn;

use tch::{Tensor, nn};

pub use meta::{Arch, Meta, Normalization};
pub use vision::VisionModel;

/// One trainable tensor of a model, as the optimizer and the freezing logic see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Its name in the model's `VarStore` (PyTorch state-dict name, e.g. `0.4.1.bn2.weight`).
    pub name: String,
    /// Its parameter group (fastai splitter): 0 = first body group … last = head.
    pub group: usize,
    /// True for BatchNorm weights and biases (trainable when frozen, no weight decay).
    pub is_bn: bool,
    /// True for biases (no weight decay, fastai `bn_bias_params`).
    pub is_bias: bool,
}

/// A network the Learner can train: forward pass, its variables and their groups.
pub trait Model: Send {
    /// Logits (N, n_out) `f32` for a batch `xs` (N, 3, H, W) `f32`, normalised as the
    /// model expects. `train` selects training mode (BatchNorm batch statistics, dropout).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor;
    /// The variables (parameters and BatchNorm buffers), named as in PyTorch.
    fn var_store(&self) -> &nn::VarStore;
    /// Mutable access, e.g. to move the model to a device.
    fn var_store_mut(&mut self) -> &mut nn::VarStore;
    /// Every trainable parameter with its group; buffers (running mean/var) excluded.
    fn params(&self) -> Vec<ParamInfo>;
    /// Number of parameter groups (fastai: 3 for a vision learner — two body groups, the head).
    fn n_groups(&self) -> usize;
    /// Architecture, input resolution and input normalisation, when the model knows them
    /// (every [`VisionModel`] does).
    fn meta(&self) -> Option<Meta> {
        None
    }
}
