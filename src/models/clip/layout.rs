//! The two public layouts of a CLIP checkpoint (lova-model.md section 3) and
//! `ClipCheckpoint`, which presents a file in either one under the OpenAI keys
//! (`visual.*`), the only names the rest of the engine uses.
//!
//! The Hugging Face layout differs in names and in two tensors: q/k/v are
//! separate (OpenAI stacks them into `in_proj_weight` [3W, W]) and the projection
//! is stored for `x @ W^T` (`visual_projection.weight` [out, W]) where OpenAI
//! stores `proj` [W, out] for `x @ proj`. Both are rebuilt when fetched, so a
//! converter or a model reads one layout and never learns there were two.

use std::borrow::Cow;
use std::collections::BTreeSet;

use super::ClipVisionConfig;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use crate::weights::{SafetensorsFile, TensorSource};

/// The key whose presence identifies each layout: the patch-embedding conv.
const OPENAI_PROBE: &str = "visual.conv1.weight";
const HUGGING_FACE_PROBE: &str = "vision_model.embeddings.patch_embedding.weight";

/// Block keys start with these, followed by the block index.
const OPENAI_BLOCKS: &str = "visual.transformer.resblocks.";
const HUGGING_FACE_BLOCKS: &str = "vision_model.encoder.layers.";

/// Key layout of a CLIP checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// OpenAI's `clip` package (and open_clip): `visual.conv1.weight`, ...
    OpenAi,
    /// Hugging Face `transformers` (`CLIPModel`): `vision_model.embeddings...`, ...
    HuggingFace,
}

impl ClipLayout {
    /// Which layout `file` is in, from the patch-embedding key.
    pub fn detect(file: &SafetensorsFile) -> Result<Self> {
        match (file.contains(OPENAI_PROBE), file.contains(HUGGING_FACE_PROBE)) {
            (true, false) => Ok(ClipLayout::OpenAi),
            (false, true) => Ok(ClipLayout::HuggingFace),
            (found_openai, _) => Err(Error::InvalidInput(format!(
                "{} is not a CLIP checkpoint in a known layout: it has {} of `{OPENAI_PROBE}` (OpenAI layout) \
                 and `{HUGGING_FACE_PROBE}` (Hugging Face layout); exactly one is expected",
                file.path().display(),
                if found_openai { "both" } else { "neither" },
            ))),
        }
    }

    /// Human-readable name of the layout, for messages.
    pub fn name(self) -> &'static str {
        match self {
            ClipLayout::OpenAi => "OpenAI",
            ClipLayout::HuggingFace => "Hugging Face",
        }
    }

    fn block_prefix(self) -> &'static str {
        match self {
            ClipLayout::OpenAi => OPENAI_BLOCKS,
            ClipLayout::HuggingFace => HUGGING_FACE_BLOCKS,
        }
    }
}

/// Where the tensor behind an OpenAI key lives in a Hugging Face file.
#[derive(Debug, PartialEq, Eq)]
enum HfSource {
    /// The same tensor under another name.
    Renamed(String),
    /// q, k and v stacked along dim 0 (the OpenAI `in_proj_*`).
    Stacked([String; 3]),
    /// The transpose of a 2-D tensor (`proj` from `visual_projection.weight`).
    Transposed(String),
}

/// The Hugging Face source of an OpenAI vision key, `None` for a key that is
/// not part of the image tower.
fn hugging_face_source(key: &str) -> Option<HfSource> {
    let key = key.strip_prefix("visual.")?;
    let renamed = |k: String| Some(HfSource::Renamed(k));
    let is_param = |p: &str| p == "weight" || p == "bias";
    match key {
        "conv1.weight" => return renamed(HUGGING_FACE_PROBE.into()),
        "class_embedding" => return renamed("vision_model.embeddings.class_embedding".into()),
        "positional_embedding" => return renamed("vision_model.embeddings.position_embedding.weight".into()),
        "proj" => return Some(HfSource::Transposed("visual_projection.weight".into())),
        _ => {}
    }
    if let Some(param) = key.strip_prefix("ln_pre.") {
        // "layrnorm" is Hugging Face's spelling.
        return if is_param(param) { renamed(format!("vision_model.pre_layrnorm.{param}")) } else { None };
    }
    if let Some(param) = key.strip_prefix("ln_post.") {
        return if is_param(param) { renamed(format!("vision_model.post_layernorm.{param}")) } else { None };
    }
    let (layer, part) = key.strip_prefix("transformer.resblocks.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let p = format!("{HUGGING_FACE_BLOCKS}{layer}");
    let stacked =
        |param: &str| Some(HfSource::Stacked(["q", "k", "v"].map(|x| format!("{p}.self_attn.{x}_proj.{param}"))));
    match part {
        "attn.in_proj_weight" => return stacked("weight"),
        "attn.in_proj_bias" => return stacked("bias"),
        _ => {}
    }
    let (module, param) = part.rsplit_once('.')?;
    let module = match module {
        "attn.out_proj" => "self_attn.out_proj",
        "ln_1" => "layer_norm1",
        "ln_2" => "layer_norm2",
        "mlp.c_fc" => "mlp.fc1",
        "mlp.c_proj" => "mlp.fc2",
        _ => return None,
    };
    if is_param(param) { renamed(format!("{p}.{module}.{param}")) } else { None }
}

/// A CLIP checkpoint seen through the OpenAI key layout, whatever its own
/// layout. Tensors outside the image tower (`text_model.*`, `transformer.*`,
/// `token_embedding.*`, ...) are never read.
pub struct ClipCheckpoint<'a> {
    file: &'a SafetensorsFile,
    layout: ClipLayout,
}

impl<'a> ClipCheckpoint<'a> {
    /// Wraps `file`, detecting its layout.
    pub fn new(file: &'a SafetensorsFile) -> Result<Self> {
        Ok(ClipCheckpoint { file, layout: ClipLayout::detect(file)? })
    }

    /// The layout the wrapped file was detected to be in.
    pub fn layout(&self) -> ClipLayout {
        self.layout
    }

    /// The shape the tensor `key` (OpenAI layout) will have when fetched; `None` when absent.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        match self.layout {
            ClipLayout::OpenAi => self.file.shape(key),
            ClipLayout::HuggingFace => match hugging_face_source(key)? {
                HfSource::Renamed(k) => self.file.shape(&k),
                HfSource::Transposed(k) => match self.file.shape(&k)?.as_slice() {
                    &[rows, cols] => Some(vec![cols, rows]),
                    _ => None,
                },
                HfSource::Stacked(parts) => {
                    let shapes: Vec<Vec<usize>> = parts.iter().map(|k| self.file.shape(k)).collect::<Option<_>>()?;
                    let first = shapes[0].clone();
                    if first.is_empty() || shapes.iter().any(|s| *s != first) {
                        return None;
                    }
                    Some([vec![3 * first[0]], first[1..].to_vec()].concat())
                }
            },
        }
    }

    /// The number of transformer blocks of the image tower: the block indices
    /// found in the file, which must be 0..n without gaps.
    pub fn layer_count(&self) -> Result<usize> {
        let prefix = self.layout.block_prefix();
        let indices: BTreeSet<usize> =
            self.file.keys().iter().filter_map(|k| k.strip_prefix(prefix)?.split_once('.')?.0.parse().ok()).collect();
        let n = indices.len();
        if indices.last().is_some_and(|&last| last + 1 != n) {
            return Err(Error::InvalidInput(format!(
                "{}: the image tower's block indices ({prefix}N) are {indices:?}, expected 0..{}",
                self.describe(),
                n.saturating_sub(1),
            )));
        }
        Ok(n)
    }

    /// The image tower's config, from the shapes of the patch conv, the
    /// position table and the projection, and the number of blocks.
    pub fn config(&self) -> Result<ClipVisionConfig> {
        let shape =
            |key: &str| self.shape(key).ok_or_else(|| Error::MissingTensor { key: key.into(), file: self.describe() });
        let (conv1, positional, proj) =
            (shape("visual.conv1.weight")?, shape("visual.positional_embedding")?, shape("visual.proj")?);
        ClipVisionConfig::from_shapes(&conv1, &positional, &proj, self.layer_count()?)
            .map_err(|reason| Error::InvalidInput(format!("{}: {reason}", self.describe())))
    }
}

impl TensorSource for ClipCheckpoint<'_> {
    fn describe(&self) -> String {
        format!("{} ({} CLIP layout)", self.file.path().display(), self.layout.name())
    }

    fn tensor(&self, key: &str, shape: &[usize]) -> Result<HostTensor> {
        let source = match self.layout {
            ClipLayout::OpenAi => return self.file.tensor(key, shape),
            ClipLayout::HuggingFace => hugging_face_source(key),
        };
        match source {
            None => Err(Error::MissingTensor { key: key.into(), file: self.describe() }),
            Some(source) => self.hugging_face_tensor(source, key, shape),
        }
    }

    /// The OpenAI layout is the file's own: its fp16 tensors can be read as
    /// stored. Hugging Face tensors are renamed, transposed or concatenated: never.
    fn tensor_f16(&self, key: &str, shape: &[usize]) -> Result<Option<Cow<'_, [u16]>>> {
        match self.layout {
            ClipLayout::OpenAi => self.file.tensor_f16(key, shape),
            ClipLayout::HuggingFace => Ok(None),
        }
    }
}

impl ClipCheckpoint<'_> {
    fn hugging_face_tensor(&self, source: HfSource, key: &str, shape: &[usize]) -> Result<HostTensor> {
        // Errors name the Hugging Face key, the name a user finds in the file,
        // and the OpenAI key it stands in for.
        let annotate = |e: Error| match e {
            Error::MissingTensor { key: k, .. } => Error::MissingTensor { key: k, file: self.context(key) },
            Error::ShapeMismatch { key: k, expected, found, .. } => {
                Error::ShapeMismatch { key: k, file: self.context(key), expected, found }
            }
            Error::UnsupportedDtype { key: k, dtype, .. } => {
                Error::UnsupportedDtype { key: k, file: self.context(key), dtype }
            }
            other => other,
        };
        let fetch = |k: &str, shape: &[usize]| self.file.tensor(k, shape).map_err(annotate);
        match source {
            HfSource::Renamed(k) => fetch(&k, shape),
            HfSource::Transposed(k) => match *shape {
                [rows, cols] => Ok(fetch(&k, &[cols, rows])?.transposed()),
                _ => Err(shape_mismatch(self, key, shape)),
            },
            HfSource::Stacked(parts) => {
                if shape.is_empty() || !shape[0].is_multiple_of(3) {
                    return Err(shape_mismatch(self, key, shape));
                }
                let part_shape = [vec![shape[0] / 3], shape[1..].to_vec()].concat();
                let mut data = Vec::with_capacity(shape.iter().product());
                for k in &parts {
                    data.extend(fetch(k, &part_shape)?.data);
                }
                Ok(HostTensor::new(shape.to_vec(), data))
            }
        }
    }

    /// Where a Hugging Face tensor was looked for, and why.
    fn context(&self, openai_key: &str) -> String {
        format!("{} (Hugging Face CLIP layout; needed for `{openai_key}`)", self.file.path().display())
    }
}

/// A request for a stacked or transposed tensor with a shape it cannot have.
fn shape_mismatch(ckpt: &ClipCheckpoint, key: &str, expected: &[usize]) -> Error {
    Error::ShapeMismatch {
        key: key.into(),
        file: ckpt.describe(),
        expected: expected.to_vec(),
        found: ckpt.shape(key).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_openai_vision_key_has_a_hugging_face_source() {
        use HfSource::*;
        let s = |k: &str| hugging_face_source(k);
        let r = |k: &str| Some(Renamed(k.to_string()));
        assert_eq!(s("visual.conv1.weight"), r("vision_model.embeddings.patch_embedding.weight"));
        assert_eq!(s("visual.class_embedding"), r("vision_model.embeddings.class_embedding"));
        assert_eq!(s("visual.positional_embedding"), r("vision_model.embeddings.position_embedding.weight"));
        assert_eq!(s("visual.ln_pre.bias"), r("vision_model.pre_layrnorm.bias"));
        assert_eq!(s("visual.ln_post.weight"), r("vision_model.post_layernorm.weight"));
        assert_eq!(s("visual.proj"), Some(Transposed("visual_projection.weight".into())));
        let l = "vision_model.encoder.layers.11";
        assert_eq!(
            s("visual.transformer.resblocks.11.attn.in_proj_weight"),
            Some(Stacked([0, 1, 2].map(|i| format!("{l}.self_attn.{}_proj.weight", ["q", "k", "v"][i]))))
        );
        assert_eq!(
            s("visual.transformer.resblocks.11.attn.in_proj_bias"),
            Some(Stacked([0, 1, 2].map(|i| format!("{l}.self_attn.{}_proj.bias", ["q", "k", "v"][i]))))
        );
        for (openai, hf) in [
            ("attn.out_proj.weight", "self_attn.out_proj.weight"),
            ("ln_1.bias", "layer_norm1.bias"),
            ("ln_2.weight", "layer_norm2.weight"),
            ("mlp.c_fc.bias", "mlp.fc1.bias"),
            ("mlp.c_proj.weight", "mlp.fc2.weight"),
        ] {
            assert_eq!(s(&format!("visual.transformer.resblocks.11.{openai}")), r(&format!("{l}.{hf}")));
        }
        // Text-tower and malformed keys have no source.
        for k in [
            "transformer.resblocks.0.ln_1.weight",
            "token_embedding.weight",
            "positional_embedding",
            "visual.ln_pre.gamma",
            "visual.transformer.resblocks.x.ln_1.weight",
            "visual.transformer.resblocks.0.attn.q_proj.weight",
        ] {
            assert_eq!(s(k), None, "{k}");
        }
    }
}
