//! `lova-fast info`: what a weight file holds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use lova_fast::config::LovaConfig;
use lova_fast::engine;
use lova_fast::models::vae;
use lova_fast::weights::SafetensorsFile;

#[derive(Args)]
pub struct InfoArgs {
    /// An engine file (from `convert`) or any safetensors checkpoint.
    pub file: PathBuf,
}

pub fn run(args: InfoArgs) -> Result<()> {
    let file = SafetensorsFile::open(&args.file)?;
    let is_engine = file.user_metadata("format") == Some(engine::FORMAT);
    println!("{}", args.file.display());
    if is_engine {
        println!("  lova-fast engine file, format version {}", file.user_metadata("format_version").unwrap_or("?"));
    } else {
        println!("  not a lova-fast engine file (an original checkpoint? convert it with `lova-fast convert`)");
    }
    // Components: the first dotted part of the key (two for original checkpoints, e.g. `model.model`).
    let mut components: BTreeMap<String, (usize, usize, BTreeMap<String, usize>)> = BTreeMap::new();
    for key in file.keys() {
        let parts: Vec<&str> = key.split('.').collect();
        let depth = if is_engine || parts.len() < 3 { 1 } else { 2 };
        let component = parts[..depth.min(parts.len())].join(".");
        let shape = file.shape(&key).unwrap_or_default();
        let entry = components.entry(component).or_default();
        entry.0 += 1;
        entry.1 += shape.iter().product::<usize>();
        *entry.2.entry(file.dtype_name(&key).unwrap_or_default()).or_insert(0) += 1;
    }
    println!("  {:<16} {:>8} {:>16}  dtypes (tensors)", "component", "tensors", "parameters");
    for (name, (tensors, params, dtypes)) in &components {
        let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
        println!("  {name:<16} {tensors:>8} {:>14.3} M  {}", *params as f64 / 1e6, dtypes.join(", "));
    }
    if let Some(text) = file.user_metadata("config") {
        match LovaConfig::from_json_str(text) {
            Ok(c) => println!(
                "  config: DiT width {} depth {} heads {} (kv heads {}), video tokens {}-d at {} fps, \
                 {} position rows, {} Hz audio, {} samples per latent frame, global cond {:?}",
                c.dit.embed_dim,
                c.dit.depth,
                c.dit.num_heads,
                c.dit.kv_heads(),
                c.dit.cond_token_dim,
                c.fps,
                c.dit.max_positions,
                c.sample_rate,
                c.downsampling_ratio,
                c.dit.global_cond_type
            ),
            Err(e) => println!("  config: unreadable ({e})"),
        }
        if let Ok(c) = LovaConfig::from_json_str(text) {
            print_vae_memory(&c);
        }
    }
    if let Some(clip) = file.user_metadata("clip_config") {
        println!("  clip image tower: {clip}");
    }
    Ok(())
}

/// The device memory a VAE decode plans (activations, from the graph planner)
/// plus its weights (fp16 matrices, f32 vectors, as on CUDA), for a few lengths.
fn print_vae_memory(c: &LovaConfig) {
    let weights = vae::weight_bytes_fp16(&c.vae_decoder);
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    for seconds in [10.0, 30.0, 139.0] {
        let t = c.latent_len_for_seconds(seconds);
        match vae::planned_arena_bytes(&c.vae_decoder, &[t]) {
            Ok(arena) => println!(
                "  VAE decode of {seconds:.0} s (T' {t}): {:.2} GiB = arena {:.2} GiB + weights {:.2} GiB",
                gib(arena + weights),
                gib(arena),
                gib(weights)
            ),
            Err(e) => println!("  VAE decode memory: unknown ({e})"),
        }
    }
}
