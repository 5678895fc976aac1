//! The fastai book's chapter 5 (pet breeds) through kestrel's library API, cell by cell.
//!
//! Run: `cargo run --example pets -- [PETS_DIR]` (default: the Oxford-IIIT Pet sample
//! beside the checkout, else the full dataset, downloaded once).

use kestrel::callbacks::ProgressCallback;
use kestrel::data::{DataBlock, ItemTfm, Labeller, Source, Splitter};
use kestrel::learner::{LrFindOptions, vision_batch_tfms, vision_learner};
use kestrel::models::{Arch, zoo::pretrained_weights};
use std::path::PathBuf;
use std::sync::Arc;

fn main() -> kestrel::Result<()> {
    // path = untar_data(URLs.PETS)
    let arg = std::env::args().nth(1).map(PathBuf::from);
    let path = kestrel::util::untar::pets_dir(arg.or_else(kestrel::util::testdata::pets_sample).as_deref(), true)?;

    // pets = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files,
    //                  splitter=RandomSplitter(seed=42),
    //                  get_y=using_attr(RegexLabeller(r'(.+)_\d+.jpg$'), 'name'),
    //                  item_tfms=Resize(460),
    //                  batch_tfms=aug_transforms(size=224, min_scale=0.75))
    let arch = Arch::EfficientNetLite0;
    let pets = DataBlock::new(Source::Folder { path: path.join("images"), recurse: true },
                              Labeller::name_regex(r"^(.+)_\d+\.jpg$")?)
        .splitter(Splitter::Random { valid_pct: 0.2, seed: 42 })
        .item_tfm(Some(ItemTfm::resize(460)))
        .batch_tfms(Some(Arc::new(vision_batch_tfms(arch, 224, 0.75)?)))
        .bs(32);
    // dls = pets.dataloaders(path/"images")
    let dls = pets.dataloaders()?;

    // learn = vision_learner(dls, arch, metrics=error_rate)
    let weights = pretrained_weights(arch.name(), true)?;
    tch::manual_seed(42); // set_seed(42): the new head's initial weights
    let mut learn = vision_learner(dls, arch, Some(&weights))?.with_cb(Box::new(ProgressCallback::new())).with_seed(42);
    learn.to_channels_last();

    // learn.lr_find()
    let lrs = learn.lr_find(LrFindOptions::default())?;
    println!("valley {:.2e}", lrs.valley.lr);

    // learn.fine_tune(4, 2e-3)
    learn.fine_tune(4, 2e-3)?;
    learn.recorder.plot_loss(std::path::Path::new("loss.png"))?;
    Ok(())
}
