//! One way to bind a model's weights: a scope (a key prefix; `pp` opens a
//! child scope, as candle's `VarBuilder::pp` does) and `declare(key, shape)`,
//! which returns the weight's id. A model declares its weights once, in one
//! function that returns its typed ids; what a declaration does is the sink's
//! business: upload from a checkpoint or an engine file (`upload`,
//! `upload_with`), or record the list (`list`) that `convert`, `info` and
//! `write_random_engine` work from. So loading, listing and converting cannot
//! disagree about a key, a shape or the order.

use std::fmt::Display;

use crate::backend::{Backend, ProductWeight, WeightSet};
use crate::error::{Error, Result};
use crate::graph::WeightId;
use crate::tensor::HostTensor;
use crate::weights::TensorSource;

/// How a declared tensor is stored, relative to how the graph uses it and to
/// how the original PyTorch checkpoint holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// Used as stored, and stored as in the checkpoint.
    Stored,
    /// A PyTorch `nn.Linear` weight `[out, in]`: used as stored, by Linear
    /// ops only (`Scope::linear`), so a backend may keep it in a layout of
    /// its own for products (`Backend::upload_product_weight_from`).
    Linear,
    /// Stored (in the checkpoint and the engine file) with the declared shape,
    /// used with this one: the same values in the same order (CLIP's patch conv
    /// `[W, 3, P, P]` as the linear layer `[W, 3 * P * P]`).
    Reshaped(Vec<usize>),
    /// A stored matrix the graph uses transposed (CLIP's `proj` `[W, out]` as a linear layer `[out, W]`).
    Transposed,
    /// A Conv1d weight used as stored, `[C_out, K * C_in]` tap-major in the engine
    /// layout; the checkpoint holds `[C_out, C_in, K]`, maybe weight-normalised
    /// (`models::vae::original_tensor` converts it).
    Conv1d {
        /// Output channels.
        cout: usize,
        /// Input channels.
        cin: usize,
        /// Kernel width in time steps.
        kernel: usize,
    },
    /// A ConvTranspose1d weight used as stored, `[s, C_out, 2 * C_in]` in the engine
    /// layout; the checkpoint holds `[C_in, C_out, 2s]`, maybe weight-normalised.
    ConvTranspose1d {
        /// Input channels.
        cin: usize,
        /// Output channels.
        cout: usize,
        /// Upsampling factor `s` (the kernel is `2s` wide).
        stride: usize,
    },
}

/// One declared tensor: its full key (scopes joined by dots), its stored shape
/// (in the engine file) and its layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// Key under the root scope's prefix.
    pub key: String,
    /// Shape as stored in an engine file.
    pub shape: Vec<usize>,
    /// How it relates to the graph's use and to the checkpoint.
    pub layout: Layout,
}

impl Declared {
    /// The stored tensor `t` (shape `self.shape`) as the graph uses it.
    fn as_used(&self, t: HostTensor) -> HostTensor {
        match &self.layout {
            Layout::Reshaped(shape) => t.reshaped(shape.clone()),
            Layout::Transposed => t.transposed(),
            Layout::Stored | Layout::Linear | Layout::Conv1d { .. } | Layout::ConvTranspose1d { .. } => t,
        }
    }

    /// How matrix products read this tensor, for the layouts only products read.
    fn product(&self) -> Option<ProductWeight> {
        match self.layout {
            Layout::Linear => Some(ProductWeight { groups: 1, n: self.shape[0], k: self.shape[1] }),
            Layout::Conv1d { cout, cin, kernel } => Some(ProductWeight { groups: 1, n: cout, k: kernel * cin }),
            Layout::ConvTranspose1d { cin, cout, stride } => {
                Some(ProductWeight { groups: stride, n: cout, k: 2 * cin })
            }
            Layout::Stored | Layout::Reshaped(_) | Layout::Transposed => None,
        }
    }
}

type Sink<'s> = dyn FnMut(&Declared) -> Result<WeightId> + 's;

/// A key prefix over a sink of declarations (see the module comment).
pub struct Scope<'a, 's> {
    prefix: String,
    sink: &'a mut Sink<'s>,
}

impl<'s> Scope<'_, 's> {
    /// A child scope: keys under `{prefix}{name}.`.
    pub fn pp(&mut self, name: impl Display) -> Scope<'_, 's> {
        Scope { prefix: format!("{}{name}.", self.prefix), sink: &mut *self.sink }
    }

    /// Declares the tensor `key` of this scope, used as stored with `shape`.
    pub fn declare(&mut self, key: &str, shape: &[usize]) -> Result<WeightId> {
        self.declare_as(key, shape, Layout::Stored)
    }

    /// Declares the tensor `key`, stored with `shape`, with its layout.
    pub fn declare_as(&mut self, key: &str, shape: &[usize], layout: Layout) -> Result<WeightId> {
        (self.sink)(&Declared { key: format!("{}{key}", self.prefix), shape: shape.to_vec(), layout })
    }

    /// A PyTorch `nn.Linear(inp, out)` of this scope: `weight` `[out, inp]` and, with `bias`, `bias` `[out]`.
    pub fn linear(&mut self, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        Ok(Linear {
            weight: self.declare_as("weight", &[out, inp], Layout::Linear)?,
            bias: if bias { Some(self.declare("bias", &[out])?) } else { None },
            out_features: out,
        })
    }

    /// A LayerNorm of width `dim` whose scale and shift are named `names` in this
    /// scope (`["weight", "bias"]` in PyTorch, `["gamma", "beta"]` in stable-audio-tools).
    pub fn layer_norm(&mut self, dim: usize, names: [&str; 2], eps: f32) -> Result<Norm> {
        Ok(Norm { gamma: self.declare(names[0], &[dim])?, beta: self.declare(names[1], &[dim])?, eps })
    }
}

/// The ids of a linear layer (`layers::linear` adds it to a graph).
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    /// `[out_features, in_features]`.
    pub weight: WeightId,
    /// `[out_features]`, if any.
    pub bias: Option<WeightId>,
    /// Output width.
    pub out_features: usize,
}

/// The ids of a LayerNorm (`layers::layer_norm` adds it to a graph).
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    /// Scale `[D]`.
    pub gamma: WeightId,
    /// Shift `[D]`.
    pub beta: WeightId,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// Runs `declare` in a root scope of `prefix` over `sink`.
fn run<T>(prefix: &str, sink: &mut Sink<'_>, declare: impl FnOnce(&mut Scope) -> Result<T>) -> Result<T> {
    declare(&mut Scope { prefix: prefix.to_string(), sink })
}

/// The tensors `declare` declares, in order (keys without a prefix), and what
/// it returns: ids that index that list.
pub fn list<T>(declare: impl FnOnce(&mut Scope) -> Result<T>) -> Result<(Vec<Declared>, T)> {
    let mut list = Vec::new();
    let ids = run(
        "",
        &mut |d: &Declared| {
            list.push(d.clone());
            Ok(WeightId(list.len() - 1))
        },
        declare,
    )?;
    Ok((list, ids))
}

/// Uploads every tensor `declare` declares from `source`, keys `{prefix}{key}`,
/// with its stored shape checked (the error names the key and both shapes).
/// A tensor used as stored may take the backend's direct path
/// (`Backend::upload_weight_from`); one that is rearranged is read in f32 first.
pub fn upload<B: Backend, T>(
    backend: &B,
    source: &dyn TensorSource,
    prefix: &str,
    declare: impl FnOnce(&mut Scope) -> Result<T>,
) -> Result<(WeightSet<B>, T)> {
    let mut set = WeightSet::default();
    let ids = run(
        prefix,
        &mut |d: &Declared| match d.layout {
            Layout::Reshaped(_) | Layout::Transposed => {
                set.push(backend, &d.key, &d.as_used(source.tensor(&d.key, &d.shape)?))
            }
            Layout::Linear | Layout::Conv1d { .. } | Layout::ConvTranspose1d { .. } => match d.product() {
                Some(product) => set.push_product_from(backend, source, &d.key, &d.shape, product),
                None => set.push_from(backend, source, &d.key, &d.shape),
            },
            Layout::Stored => set.push_from(backend, source, &d.key, &d.shape),
        },
        declare,
    )?;
    Ok((set, ids))
}

/// Uploads every tensor `declare` declares as `fetch` returns it in the stored
/// layout (for a source that converts on the fly: the original checkpoint's VAE).
/// A tensor of another shape is an error naming the key, `what` and both shapes.
pub fn upload_with<B: Backend, T>(
    backend: &B,
    what: &str,
    fetch: &mut dyn FnMut(&Declared) -> Result<HostTensor>,
    declare: impl FnOnce(&mut Scope) -> Result<T>,
) -> Result<(WeightSet<B>, T)> {
    let mut set = WeightSet::default();
    let ids = run(
        "",
        &mut |d: &Declared| {
            let t = fetch(d)?;
            if t.shape != d.shape {
                return Err(Error::ShapeMismatch {
                    key: d.key.clone(),
                    file: what.to_string(),
                    expected: d.shape.clone(),
                    found: t.shape,
                });
            }
            set.push(backend, &d.key, &d.as_used(t))
        },
        declare,
    )?;
    Ok((set, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(d: &mut Scope) -> Result<(Linear, WeightId)> {
        let l = d.pp("blocks").pp(3).pp("ff").linear(4, 2, true)?;
        let t = d.declare_as("proj", &[2, 5], Layout::Transposed)?;
        Ok((l, t))
    }

    #[test]
    fn scopes_join_keys_and_ids_follow_the_order() {
        let (list, (l, t)) = list(example).unwrap();
        let keys: Vec<(&str, &[usize])> = list.iter().map(|d| (d.key.as_str(), d.shape.as_slice())).collect();
        assert_eq!(keys, [("blocks.3.ff.weight", &[4, 2][..]), ("blocks.3.ff.bias", &[4]), ("proj", &[2, 5])]);
        assert_eq!((l.weight, l.bias, l.out_features, t), (WeightId(0), Some(WeightId(1)), 4, WeightId(2)));
    }

    #[test]
    fn upload_reads_under_the_prefix_and_names_a_wrong_shape() {
        use crate::backend::CpuBackend;
        let random = crate::weights::RandomWeights { seed: 2 };
        let (set, _) = upload(&CpuBackend, &random, "m.", example).unwrap();
        assert_eq!(set.len(), 3);
        // A transposed weight is uploaded transposed.
        let stored = random.tensor("m.proj", &[2, 5]).unwrap();
        assert_eq!(set.as_slice()[2].f32_tensor().unwrap().data, stored.transposed().data);
        let mut wrong = |d: &Declared| Ok(HostTensor::new(vec![d.shape.iter().product::<usize>()], vec![0.0; 8]));
        let e = upload_with(&CpuBackend, "the test weights", &mut wrong, example).err().unwrap().to_string();
        assert!(e.contains("blocks.3.ff.weight") && e.contains("[4, 2]") && e.contains("[8]"), "{e}");
    }
}
